"""What a real container runtime answers when a pull fails, for every fault the classifier knows.

`python -m tools.pullmessages` starts this machine's containerd (1.6 on Debian 12) and those of
Debian trixie (1.7) and sid (2.x), chrooted, each with its own root, provokes each fault of
`FAULTS` by pulling straight from it, and writes what it answered into tests/pull-messages.json
under its version. The runtimes no Debian release packages are recorded from binaries or sockets
a person supplies:

    python -m tools.pullmessages --crio /path/to/crio
        starts that CRI-O here twice (the second with a storage of a few MiB, for "disk full")
    python -m tools.pullmessages --socket S --small-disk-socket T [--label "cri-dockerd 0.4.3"]
        records a runtime the person started (S) and the same runtime over a storage of a few
        MiB (T), e.g. cri-dockerd over two Docker Engines; the label says what it is (default:
        the CRI Version's runtime name and version)

tests/unit/test_failures.py reads that file, so the words of every runtime and version checked
stay checked on any machine; tests/integration/test_failures_provoked.py runs the same faults
against the runtimes of the test session.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
import tempfile
from pathlib import Path

from image_cri_shim.workers.pull.failures import Cause
from tests.harness import CertAuthority, CertsDir, Containerd, CriClient, ImageBuilder, RegistryFactory
from tests.harness.containerd import ROOT_PACKAGES, SMALL_DISK
from tests.harness.crio import crio_pair
from tests.harness.pullfaults import PullFaults
from tests.harness.pullrecord import FAULTS, FILE, load
from tests.harness.rootfs import debian_root


def collect(faults: PullFaults, expected: dict[str, Cause] = FAULTS) -> list[dict[str, str]]:
    rows = []
    for fault, cause in expected.items():
        code, message = faults.provoke(fault)
        rows.append({"fault": fault, "code": code, "message": message, "cause": cause.name})
        print(f"  {fault}: {code} {message}", flush=True)
    return rows


def save(version: str, rows: list[dict[str, str]]) -> None:
    table = load()
    table[version] = rows
    FILE.write_text(json.dumps(table, indent=1, sort_keys=True) + "\n")


def record(
    socket: Path, small_disk: Path, work: Path, label: str = "", certs_d: CertsDir | None = None
) -> tuple[str, list[dict[str, str]]]:
    """Provoke every fault against the runtime serving CRI on `socket` (and `small_disk`, the same
    runtime with a small storage); its label (by default "<runtime name> <version>") and the rows."""
    registries = RegistryFactory(work / "registries", CertAuthority.create(work / "ca"), certs_d)
    client, tiny = CriClient(socket), CriClient(small_disk)
    try:
        answer = client.version()
        version = label or f"{answer.runtime_name} {answer.runtime_version}"
        print(version, flush=True)
        faults = PullFaults(client, registries, ImageBuilder(work / "images"), work, small_disk=tiny)
        return version, collect(faults)
    finally:
        client.close()
        tiny.close()
        registries.close()


def run(containerd: Containerd, small: Containerd, work: Path) -> tuple[str, list[dict[str, str]]]:
    """Provoke every fault against a started `containerd` (and `small`, the same one with a
    small disk); its version and the rows."""
    label = f"containerd {containerd.version().runtime_version}"
    return record(containerd.socket, small.socket, work, label, certs_d=containerd.certs_d)


def daemons(work: Path, suite: str) -> tuple[Containerd, Containerd]:
    """The containerd of a Debian `suite` ("host": this machine's), and one with a small disk."""
    root = None if suite == "host" else debian_root(suite, ROOT_PACKAGES)
    certs = CertsDir(work / "certs.d")
    return (
        Containerd(work / f"{suite}", certs, root=root),
        Containerd(work / f"{suite}-small", certs, root=root, disk=SMALL_DISK),
    )


def containerd_suite(suite: str) -> tuple[str, list[dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="pullmessages-") as tmp:
        work = Path(tmp)
        containerd, small = daemons(work, suite)
        containerd.start()
        try:
            small.start()
            return run(containerd, small, work)
        finally:
            small.stop()
            containerd.stop()


def crio(binary: str) -> tuple[str, list[dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="pullmessages-") as tmp:
        work = Path(tmp)
        with crio_pair(binary, work) as (daemon, small):
            return record(daemon.socket, small.socket, work)


def supplied(socket: Path, small_disk: Path, label: str) -> tuple[str, list[dict[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="pullmessages-") as tmp:
        return record(socket, small_disk, Path(tmp), label)


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tools.pullmessages", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("suites", nargs="*", metavar="SUITE", help="containerd of: host, trixie, sid")
    parser.add_argument("--crio", metavar="BINARY", help="record this CRI-O binary, started here")
    parser.add_argument("--socket", type=Path, help="record the runtime serving CRI on this socket")
    parser.add_argument("--small-disk-socket", type=Path, help="the same runtime over a storage of a few MiB")
    parser.add_argument("--label", default="", help="the key it is recorded under (with --socket)")
    args = parser.parse_args(argv)
    for suite in args.suites:
        if suite not in ("host", "trixie", "sid"):
            parser.error(f"unknown suite {suite!r}: host, trixie or sid")
    if (args.socket is None) != (args.small_disk_socket is None):
        parser.error("--socket and --small-disk-socket go together (the disk-full fault needs the second)")
    if args.label and args.socket is None:
        parser.error("--label names what --socket serves")
    return args


def main(argv: list[str]) -> int:
    """`python -m tools.pullmessages [host] [trixie] [sid]` (default: all three, unless a runtime
    is supplied with --crio or --socket)."""
    args = parse(argv)
    suites = args.suites or ([] if args.crio or args.socket else ["host", "trixie", "sid"])
    recordings = [functools.partial(containerd_suite, suite) for suite in suites]
    if args.crio:
        recordings.append(functools.partial(crio, args.crio))
    if args.socket:
        recordings.append(functools.partial(supplied, args.socket, args.small_disk_socket, args.label))
    for recording in recordings:
        version, rows = recording()
        save(version, rows)
        print(f"wrote {len(rows)} messages of {version} to {FILE}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
