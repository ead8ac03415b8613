"""A private containerd for image-only CRI tests: own root, state, socket and certs.d; no CNI needed.

Findings on containerd 1.6.20 with `registry.config_path` set (checked by tests/integration/test_harness.py):
- A loopback registry host (`127.0.0.1:PORT`, `localhost:PORT`) without a hosts.toml is pulled
  over plain http: containerd defaults loopback hosts to http. Plain registries need no file.
- A TLS registry on a loopback host needs `certs.d/<host:port>/hosts.toml` with
  `server = "https://<host:port>"` and a `[host."https://<host:port>"]` table carrying `ca = ...`
  (or `skip_verify = true`). Without it containerd speaks http to it and gets "400 Bad Request";
  with `server` alone it tries https, rejects the unknown CA, then falls back to http (again 400).
  Docker's `certs.d/<host:port>/ca.crt` pattern alone does not switch a loopback host to https.

`Containerd(..., root=debian_root("trixie", ROOT_PACKAGES))` runs the containerd of another Debian
userland instead (trixie: 1.7.24, sid: 2.1.9), chrooted, with the work directory mounted in.
Findings on those (checked by tests/integration/test_harness.py):
- 2.x reads config `version = 3`: the image side (snapshotter, registry) lives under
  `[plugins."io.containerd.cri.v1.images"]`, CNI under `[plugins."io.containerd.cri.v1.runtime"]`;
  the server settings stay under `[plugins."io.containerd.grpc.v1.cri"]`.
- 2.x unpacks through the transfer service, which needs the native snapshotter named in
  `[[plugins."io.containerd.transfer.v1.local".unpack_config]]` (with `platform = "linux"`).
  Without it (checked by hand on 2.1.9, overlayfs disabled as here) the transfer plugin fails to
  load ('snapshotter "overlayfs" not found'), the CRI plugins with it, and every CRI call is
  UNIMPLEMENTED; reportedly, with overlayfs present, pulls fail with "no unpack platforms defined".
- 2.x serves CRI v1 only; a v1alpha2 call is UNIMPLEMENTED.
- 1.7 and 2.1 pull from a loopback `127.0.0.1:PORT` registry without a hosts.toml too: they try
  https first and fall back to plain http.
"""

from __future__ import annotations

import functools
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cri_api.v1 import api_pb2 as v1

from .processes import HarnessError, ManagedProcess, check_socket_path, cri_version, wait_for
from .rootfs import chrooted

#: What a Debian root needs to run pods with its own containerd.
ROOT_PACKAGES = ("containerd", "runc")
#: Debian suites whose containerd the tests also run against, with the release each ships.
SUITES = {"trixie": "1.7.", "sid": "2."}
#: containerd's root in `small_disk_of`: its metadata fits, an image with an 8 MiB layer does not.
SMALL_DISK = "4m"

# Snapshotters that cannot work or are not wanted here; "native" needs no kernel support.
_DISABLED_PLUGINS = (
    "io.containerd.snapshotter.v1.aufs",
    "io.containerd.snapshotter.v1.btrfs",
    "io.containerd.snapshotter.v1.devmapper",
    "io.containerd.snapshotter.v1.zfs",
    "io.containerd.snapshotter.v1.overlayfs",
)


def _toml_str(value: str | Path) -> str:
    """A TOML basic string (paths here have no control characters)."""
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def hosts_toml(host: str, *, scheme: str = "https", ca: Path | None = None, skip_verify: bool = False) -> str:
    """The hosts.toml that makes containerd reach `host` ("127.0.0.1:PORT") over `scheme`."""
    url = f"{scheme}://{host}"
    lines = [
        f"server = {_toml_str(url)}",
        "",
        f"[host.{_toml_str(url)}]",
        '  capabilities = ["pull", "resolve"]',
    ]
    if ca is not None:
        lines.append(f"  ca = {_toml_str(ca)}")
    if skip_verify:
        lines.append("  skip_verify = true")
    return "\n".join(lines) + "\n"


class CertsDir:
    """containerd's registry `config_path`; files in it are read per pull, no restart needed."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def host_dir(self, host: str) -> Path:
        return self.path / host

    def add_host(
        self, host: str, *, scheme: str = "https", ca: Path | None = None, skip_verify: bool = False
    ) -> Path:
        """Write certs.d/<host>/hosts.toml; returns its path."""
        directory = self.host_dir(host)
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "hosts.toml"
        path.write_text(hosts_toml(host, scheme=scheme, ca=ca, skip_verify=skip_verify))
        return path

    def remove_host(self, host: str) -> None:
        shutil.rmtree(self.host_dir(host), ignore_errors=True)


class Containerd:
    """One containerd daemon under `workdir`, reachable at `self.socket`."""

    def __init__(
        self,
        workdir: Path,
        certs_d: CertsDir | None = None,
        extra_config: str = "",
        *,
        root: Path | None = None,
        binds: Sequence[Path] = (),
        disk: str | None = None,
        sandbox_image: str = "",
        disabled_plugins: Sequence[str] = (),
    ) -> None:
        """`extra_config` is TOML appended to the generated config. With `root`, the containerd
        of that userland runs chrooted into it; `workdir`, the certs.d directory and `binds`
        are mounted in at their own paths. `disk` ("4m"): containerd's root directory (content
        store, snapshots) is a tmpfs of that size, for "disk full" tests; mounted in the
        daemon's own mount namespace, it vanishes with the daemon. `sandbox_image`: the pause
        image pods start from. `disabled_plugins`: more plugins to leave out (e.g. the gRPC
        images API, to stand in for a runtime without one)."""
        self.workdir = workdir
        self.sandbox_image = sandbox_image
        self.disabled_plugins = (*_DISABLED_PLUGINS, *disabled_plugins)
        self.root = root
        self.binds = tuple(binds)
        self.disk = disk
        #: `containerd --version`'s version, e.g. "1.7.24~ds1"; its major number picks the config
        self.release = installed_version(root)
        self.major = int(self.release.split(".", 1)[0])
        self.extra_config = extra_config
        self.socket = check_socket_path(workdir / "containerd.sock")
        self.certs_d = certs_d or CertsDir(workdir / "certs.d")
        self.config_path = workdir / "config.toml"
        self.log_path = workdir / "containerd.log"
        self.process: ManagedProcess | None = None
        self.start_seconds = 0.0
        #: time.monotonic() when CRI `Version` last answered at the end of `start`
        self.answered_at = 0.0

    @property
    def address(self) -> str:
        """The gRPC target for this containerd."""
        return f"unix://{self.socket}"

    def write_config(self) -> None:
        w = self.workdir
        for sub in ("root", "state", "tmp", "opt", "cni/bin", "cni/net.d"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        render = config_v3 if self.major >= 2 else config_v2
        paths = Paths(w, self.socket, self.certs_d.path)
        config = render(paths, self.sandbox_image, self.disabled_plugins)
        self.config_path.write_text(config + self.extra_config)

    def start(self, timeout: float = 30.0) -> None:
        """Start containerd and wait until CRI `Version` answers on the socket."""
        if self.process is not None and self.process.alive():
            return
        self.write_config()
        self.socket.unlink(missing_ok=True)
        started = time.monotonic()
        self.process = ManagedProcess(self.command(), self.log_path, name="containerd")
        process = self.process

        def version_answers() -> bool:
            if not process.alive():
                raise HarnessError(f"containerd exited during start-up\n{process.describe()}")
            self.version(timeout=1.0)
            return True

        try:
            wait_for(
                version_answers, timeout, f"containerd CRI Version on {self.socket}", detail=process.describe
            )
        except BaseException:
            process.stop()
            raise
        self.answered_at = time.monotonic()
        self.start_seconds = self.answered_at - started

    def command(self) -> list[str]:
        """containerd's argv: the host's binary, or the root's run chrooted (same pid either way)."""
        argv = ["--config", str(self.config_path)]
        small = self.workdir / "root"
        if self.root is None:
            command = [containerd_binary(), *argv]
        else:
            # a pod's /etc/hosts and resolv.conf are copied from containerd's own; a minbase root has none
            node_files = {p for p in (Path("/etc/hosts"), Path("/etc/resolv.conf")) if p.exists()}
            mounts = {
                self.workdir,
                self.certs_d.path,
                *self.binds,
                *node_files,
                *([small] if self.disk else []),
            }
            command = chrooted(self.root, ["containerd", *argv], sorted(mounts))
        if self.disk is None:
            return command
        script = f'mount --make-rprivate / && mount -t tmpfs -o size={self.disk} tmpfs "$0" && exec "$@"'
        return ["unshare", "--mount", "sh", "-c", script, str(small), *command]

    def version(self, timeout: float = 5.0) -> v1.VersionResponse:
        """CRI v1 `Version`, on a connection of its own (`cri_version`)."""
        response: v1.VersionResponse = cri_version(self.socket, timeout)
        return response

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM: containerd shuts down and removes its socket; `start` brings it back."""
        if self.process is not None:
            self.process.stop(timeout)

    def kill(self) -> None:
        """SIGKILL, as a crash or the OOM killer would: the socket file stays, refusing connections."""
        if self.process is not None:
            self.process.kill()

    def freeze(self) -> None:
        """SIGSTOP: a runtime that hangs; connections stay open and nothing answers."""
        if self.process is not None:
            self.process.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        if self.process is not None:
            self.process.signal(signal.SIGCONT)

    def restart(self, timeout: float = 30.0) -> None:
        """Stop (if running) and start again on the same root, state and socket."""
        self.stop()
        self.start(timeout)

    def log_tail(self, lines: int = 40) -> str:
        return self.process.log_tail(lines) if self.process is not None else ""

    def describe(self) -> str:
        return self.process.describe() if self.process is not None else "containerd not started"


def containerd_binary() -> str:
    binary = shutil.which("containerd")
    if binary is None:
        raise HarnessError("containerd is not on PATH (Debian: apt-get install containerd)")
    return binary


@functools.cache
def installed_version(root: Path | None) -> str:
    """The version `containerd --version` prints: the host's, or that of the one in `root`."""
    argv = [containerd_binary(), "--version"] if root is None else chrooted(root, ["containerd", "--version"])
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    found = re.search(r" v?(\d+\.\d+\.\d+\S*)", done.stdout)
    if done.returncode != 0 or found is None:
        raise HarnessError(f"containerd --version ({root or 'host'}) said: {done.stdout}{done.stderr}")
    return found.group(1)


def default_sandbox_image(root: Path | None) -> str:
    """The sandbox image of a config left alone, as `containerd config default` of the host's
    containerd (or the one in `root`) names it."""
    argv = (
        [containerd_binary(), "config", "default"]
        if root is None
        else chrooted(root, ["containerd", "config", "default"])
    )
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    found = re.search(r"""^\s*(?:sandbox_image|sandbox)\s*=\s*["']([^"']+)["']""", done.stdout, re.MULTILINE)
    if done.returncode != 0 or found is None:
        raise HarnessError(
            f"no sandbox image in containerd's default config ({root or 'host'}):\n{done.stdout}{done.stderr}"
        )
    return found.group(1)


def _common(workdir: Path, socket: Path, version: int, disabled_plugins: Sequence[str]) -> str:
    """The top of either config: own root, state and sockets, nothing but the native snapshotter."""
    disabled = ", ".join(_toml_str(p) for p in disabled_plugins)
    return f"""\
version = {version}
root = {_toml_str(workdir / "root")}
state = {_toml_str(workdir / "state")}
temp = {_toml_str(workdir / "tmp")}
disabled_plugins = [{disabled}]

[grpc]
  address = {_toml_str(socket)}
  max_recv_message_size = 16777216
  max_send_message_size = 16777216

[ttrpc]
  address = {_toml_str(str(socket) + ".ttrpc")}

[debug]
  level = "info"

[plugins]
  [plugins."io.containerd.internal.v1.opt"]
    path = {_toml_str(workdir / "opt")}
"""


@dataclass(frozen=True)
class Paths:
    """Where one containerd keeps its state, listens, and finds its registry hosts."""

    workdir: Path
    socket: Path
    certs_d: Path


def config_v2(
    paths: Paths, sandbox_image: str = "", disabled_plugins: Sequence[str] = _DISABLED_PLUGINS
) -> str:
    """containerd 1.x: every CRI setting under the one `io.containerd.grpc.v1.cri` plugin."""
    cri = 'plugins."io.containerd.grpc.v1.cri"'
    sandbox = f"\n    sandbox_image = {_toml_str(sandbox_image)}" if sandbox_image else ""
    return (
        _common(paths.workdir, paths.socket, 2, disabled_plugins)
        + f"""\
  [{cri}]{sandbox}
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
    # runc may not lower its oom_score_adj below containerd's own here
    restrict_oom_score_adj = true
    [{cri}.cni]
      # Private dirs: the node's CNI setup must not matter; pod tests fill them.
      bin_dir = {_toml_str(paths.workdir / "cni/bin")}
      conf_dir = {_toml_str(paths.workdir / "cni/net.d")}
    [{cri}.containerd]
      snapshotter = "native"
    [{cri}.registry]
      config_path = {_toml_str(paths.certs_d)}
"""
    )


def config_v3(
    paths: Paths, sandbox_image: str = "", disabled_plugins: Sequence[str] = _DISABLED_PLUGINS
) -> str:
    """containerd 2.x: the CRI settings split into images, runtime and server plugins."""
    images = 'plugins."io.containerd.cri.v1.images"'
    runtime = 'plugins."io.containerd.cri.v1.runtime"'
    sandbox = (
        f"\n    [{images}.pinned_images]\n      sandbox = {_toml_str(sandbox_image)}" if sandbox_image else ""
    )
    return (
        _common(paths.workdir, paths.socket, 3, disabled_plugins)
        + f"""\
  [plugins."io.containerd.grpc.v1.cri"]
    disable_tcp_service = true
    stream_server_address = "127.0.0.1"
    stream_server_port = "0"
  [{images}]
    snapshotter = "native"
    [{images}.registry]
      config_path = {_toml_str(paths.certs_d)}{sandbox}
  [{runtime}]
    restrict_oom_score_adj = true
    [{runtime}.cni]
      bin_dirs = [{_toml_str(paths.workdir / "cni/bin")}]
      conf_dir = {_toml_str(paths.workdir / "cni/net.d")}
  [[plugins."io.containerd.transfer.v1.local".unpack_config]]
    platform = "linux"
    snapshotter = "native"
"""
    )
