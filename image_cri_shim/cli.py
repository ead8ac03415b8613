"""Command line: the service, --version, --dry-run, --resolve, --reload, the internal subcommands
with which the master starts its children (docs/architecture.md, "Why three processes"), and
install.sh's selfcheck.

Imports of grpc and kubernetes stay inside the branches that need them: the master process
must load neither.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from image_cri_shim import __version__
from image_cri_shim.config import DEFAULT_PATH, Config
from image_cri_shim.lifecycle import become_child


class _Formatter(argparse.HelpFormatter):
    """argparse's own, told the terminal's width: left to find it, argparse imports `shutil`
    (and with it bz2, lzma and zlib) into every process, the master included, as soon as an
    argument is declared."""

    def __init__(self, prog: str) -> None:
        try:
            columns = int(os.environ.get("COLUMNS", "")) or os.get_terminal_size().columns
        except (ValueError, OSError):
            columns = 80
        super().__init__(prog, width=columns - 2)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image-cri-shim",
        formatter_class=_Formatter,
        description="CRI image-service proxy: pulls each image from the configured registry that holds it.",
    )
    parser.add_argument("-f", "--file", default=DEFAULT_PATH, help=f"config file (default {DEFAULT_PATH})")
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--dry-run", action="store_true", help="validate the config, check the CRI and registries"
    )
    mode.add_argument("--resolve", metavar="IMAGE", help="print where IMAGE would be pulled from now")
    mode.add_argument(
        "--reload",
        action="store_true",
        help="validate the config, then reload the running service and wait until its new worker serves",
    )
    sub = parser.add_subparsers(dest="command", title="commands", metavar="COMMAND")
    sub.add_parser(
        "selfcheck",
        formatter_class=_Formatter,
        help="load every library the service loads, then exit (install.sh runs it)",
    )
    return parser


def build_internal_parser() -> argparse.ArgumentParser:
    """How the master starts its children (docs/architecture.md): `worker …` and `syncer …`.
    Apart from the operator's commands, so neither `--help` nor an error lists them."""
    parser = argparse.ArgumentParser(prog="image-cri-shim", formatter_class=_Formatter)
    sub = parser.add_subparsers(dest="command", required=True)
    worker = sub.add_parser("worker", formatter_class=_Formatter)
    worker.add_argument("-f", "--file", default=DEFAULT_PATH)
    worker.add_argument("--generation", type=int, default=1)
    worker.add_argument("--ready-fd", type=int, default=None)
    worker.add_argument("--master-pid", type=int, default=None)
    worker.add_argument("--heartbeat-fd", type=int, default=None)
    worker.add_argument("--heartbeat-every", type=float, default=None)
    syncer = sub.add_parser("syncer", formatter_class=_Formatter)
    syncer.add_argument("-f", "--file", default=DEFAULT_PATH)
    syncer.add_argument("--master-pid", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    try:
        if argv[:1] in (["worker"], ["syncer"]):
            return child(build_internal_parser().parse_args(argv))
        return command(build_parser().parse_args(argv))
    except KeyboardInterrupt:
        return 130


def child(args: argparse.Namespace) -> int:
    """A worker or the syncer, started by the master."""
    if args.command == "worker":
        # SIGINT: a worker whose master is gone drains at once (no successor to hand over to)
        become_child(f"worker gen={args.generation}", args.master_pid, signal.SIGINT)
        from image_cri_shim.workers.process import run

        return run(args.file, args.generation, args.ready_fd, args.heartbeat_fd, args.heartbeat_every)
    become_child("syncer", args.master_pid)
    from image_cri_shim.syncer.process import run as run_syncer

    return run_syncer(args.file)


def command(args: argparse.Namespace) -> int:
    """The operator's commands, and the service itself."""
    if args.version:
        print(f"image-cri-shim {__version__}")
        return 0
    if args.command == "selfcheck":
        from image_cri_shim.selfcheck import main as selfcheck

        return selfcheck()
    if args.dry_run:
        from image_cri_shim.syncer.check import configmap_lines
        from image_cri_shim.workers.diagnose import dry_run

        def configmap(config: Config) -> list[str]:
            return configmap_lines(config, config.source.decode("utf-8-sig"))  # the bytes checked

        return dry_run(args.file, {"configmap": configmap})
    if args.reload:
        from image_cri_shim.supervisor.control import reload

        return reload(args.file)
    if args.resolve is not None:
        from image_cri_shim.workers.diagnose import resolve

        return resolve(args.file, args.resolve)
    from image_cri_shim.supervisor.main import run as run_master

    return run_master(args.file)


if __name__ == "__main__":
    sys.exit(main())
