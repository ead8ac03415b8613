"""CRI-O, run privately: the real binary a person supplies (`IMAGE_CRI_SHIM_CRIO`), with its own
root, run directory, socket and config; nothing of the machine's /etc/crio or /var/lib/containers.

Findings on CRI-O 1.35.6 (with Debian 12's conmon 2.1.6 and runc 1.1.5), checked by
tests/integration/test_crio.py:
- A registry on 127.0.0.1:PORT is pulled over plain http only when registries.conf marks it
  `insecure = true`; one `[[registry]] location = "127.0.0.1"` entry covers every port (the
  prefix matches up to the `:`). It tries https first and falls back to http.
- Storage: the `vfs` driver (no overlay on this machine's file systems); pulled blobs wait in
  `big_files_temporary_dir`, put under the root here so a small root fills as a pull writes.
- `drop_infra_ctr`: a pod that shares no PID namespace has no infra container, so no negative
  oom_score_adj (this machine refuses those); pinns pins its namespaces. CRI-O still pulls its
  `pause_image` for every pod sandbox: RunPodSandbox fails when it cannot (`unable to pull image:
  initializing source docker://registry.k8s.io/pause:3.10.1: pinging container registry …`).
- Its image service has no API to rename its records: the shim translates names in answers.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from concurrent import futures
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from cri_api.v1 import api_pb2 as v1
from cri_api.v1 import api_pb2_grpc as v1_grpc

from .containerd import SMALL_DISK, Containerd
from .criowords import crio_words
from .images import node_platform
from .processes import HarnessError, ManagedProcess, check_socket_path, cri_version, wait_for
from .runc import oom_safe_runc
from .runtimeproxy import OPTIONS, TRANSPORT_KEYS

ENV_REAL = "IMAGE_CRI_SHIM_CRIO"

#: CRI-O 1.35's sandbox image when `pause_image` is not set (tests/sandbox-status.json).
DEFAULT_PAUSE_IMAGE = "registry.k8s.io/pause:3.10.1"

#: Every loopback registry is plain http to CRI-O only by this (no port: the prefix covers all).
REGISTRIES_CONF = """\
unqualified-search-registries = []

[[registry]]
location = "127.0.0.1"
insecure = true

[[registry]]
location = "localhost"
insecure = true
"""

POLICY = '{"default": [{"type": "insecureAcceptAnything"}]}\n'


def _toml(value: str | Path) -> str:
    text = str(value).replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


def _tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise HarnessError(f"{name} is not on PATH (Debian: apt-get install {package})")
    return path


def crio_binary() -> str | None:
    """The CRI-O binary `IMAGE_CRI_SHIM_CRIO` names, or None when it names none."""
    binary = os.environ.get(ENV_REAL, "")
    if not binary:
        return None
    if not os.access(binary, os.X_OK):
        raise HarnessError(f"{ENV_REAL}={binary}: not an executable file")
    return binary


def pinns_path(binary: str) -> str:
    """pinns (CRI-O's namespace pinner) beside the binary, else on PATH."""
    beside = Path(binary).resolve().parent / "pinns"
    if beside.is_file():
        return str(beside)
    found = shutil.which("pinns")
    if found is None:
        raise HarnessError(f"CRI-O needs pinns: none beside {binary} and none on PATH")
    return found


class Crio:
    """One CRI-O daemon under `workdir`, reachable at `self.socket`."""

    kind = "real"

    def __init__(self, binary: str, workdir: Path, *, disk: str | None = None, pause_image: str = "") -> None:
        """`disk` ("4m"): the storage root is a tmpfs of that size (a "disk full" pull), mounted
        in the daemon's own mount namespace, so it vanishes with the daemon. `pause_image`: what
        a pod sandbox is made of (CRI-O pulls it itself, past the shim)."""
        self.binary = binary
        self.pause_image = pause_image
        self.workdir = workdir
        self.disk = disk
        self.socket = check_socket_path(workdir / "crio.sock")
        self.config_path = workdir / "crio.conf"
        self.log_path = workdir / "crio.log"
        self.process: ManagedProcess | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def write_config(self) -> None:
        w = self.workdir
        for sub in ("root", "run", "log", "cni", "registries.conf.d"):
            (w / sub).mkdir(parents=True, exist_ok=True)
        (w / "registries.conf").write_text(REGISTRIES_CONF)
        (w / "policy.json").write_text(POLICY)
        runc = oom_safe_runc(w / "runc-oom")
        conmon = _tool("conmon", "conmon")
        lines = [
            "[crio]",
            f"root = {_toml(w / 'root')}",
            f"runroot = {_toml(w / 'run')}",
            'storage_driver = "vfs"',
            f"log_dir = {_toml(w / 'log')}",
            f"version_file = {_toml(w / 'run/version')}",
            f"version_file_persist = {_toml(w / 'root/version')}",
            f"clean_shutdown_file = {_toml(w / 'root/clean.shutdown')}",
            "[crio.api]",
            f"listen = {_toml(self.socket)}",
            'stream_address = "127.0.0.1"',
            'stream_port = "0"',
            "[crio.runtime]",
            'default_runtime = "runc"',
            'cgroup_manager = "cgroupfs"',
            f"conmon = {_toml(conmon)}",
            'conmon_cgroup = "pod"',
            f"container_exits_dir = {_toml(w / 'run/exits')}",
            f"container_attach_socket_dir = {_toml(w / 'run')}",
            f"namespaces_dir = {_toml(w / 'run/ns')}",
            f"pinns_path = {_toml(pinns_path(self.binary))}",
            "drop_infra_ctr = true",
            "[crio.runtime.runtimes.runc]",
            f"runtime_path = {_toml(runc)}",
            f"runtime_root = {_toml(w / 'run/runc')}",
            'runtime_type = "oci"',
            f"monitor_path = {_toml(conmon)}",
            "[crio.image]",
            f"signature_policy = {_toml(w / 'policy.json')}",
            f"big_files_temporary_dir = {_toml(w / 'root')}",
            # the pause image runs its own command (CRI-O runs /pause by default)
            *([f"pause_image = {_toml(self.pause_image)}", 'pause_command = ""'] if self.pause_image else []),
            'short_name_mode = "disabled"',
            "[crio.network]",
            f"network_dir = {_toml(w / 'cni')}",
            'plugin_dirs = ["/usr/lib/cni"]',
            "[crio.nri]",
            "enable_nri = false",
        ]
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        w = self.workdir
        command = [
            self.binary,
            f"--config={self.config_path}",
            "--config-dir=",
            f"--registries-conf={w / 'registries.conf'}",
            f"--registries-conf-dir={w / 'registries.conf.d'}",
        ]
        if self.disk is None:
            return command
        script = f'mount --make-rprivate / && mount -t tmpfs -o size={self.disk} tmpfs "$0" && exec "$@"'
        return ["unshare", "--mount", "sh", "-c", script, str(w / "root"), *command]

    def start(self, timeout: float = 60.0) -> Crio:
        """Start CRI-O and wait until CRI `Version` answers on its socket."""
        if self.process is not None and self.process.alive():
            return self
        self.write_config()
        self.socket.unlink(missing_ok=True)
        # CRI-O writes its seccomp notifier state into its working directory.
        self.process = ManagedProcess(self.command(), self.log_path, name="crio", cwd=self.workdir)
        process = self.process

        def answers() -> bool:
            if not process.alive():
                raise HarnessError(f"crio exited during start-up\n{process.describe()}")
            self.version(timeout=1.0)
            return True

        try:
            wait_for(
                answers, timeout, f"crio CRI Version on {self.socket}", interval=0.2, detail=process.describe
            )
        except BaseException:
            process.stop()
            raise
        return self

    def version(self, timeout: float = 5.0) -> v1.VersionResponse:
        response: v1.VersionResponse = cri_version(self.socket, timeout)
        return response

    def stop(self, timeout: float = 20.0) -> None:
        if self.process is not None:
            self.process.stop(timeout)

    def describe(self) -> str:
        return self.process.describe() if self.process is not None else "crio not started"


@contextmanager
def crio_pair(binary: str, work: Path, disk: str = SMALL_DISK) -> Iterator[tuple[Crio, Crio]]:
    """CRI-O from `binary`, started twice: as it is, and over a storage of `disk` (disk full)."""
    crio, small = Crio(binary, work / "crio"), Crio(binary, work / "crio-small", disk=disk)
    crio.start()
    try:
        small.start()
        yield crio, small
    finally:
        small.stop()
        crio.stop()


# what the caller's own deadline or cancellation, or containerd out of reach, answers as it is
_PASSED = frozenset(
    {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED, grpc.StatusCode.UNAVAILABLE}
)


def bare(image_id: str) -> str:
    """An image ID as CRI-O spells it: the config digest's hex, no `sha256:`."""
    return image_id.removeprefix("sha256:")


class _StandInHandler(grpc.GenericRpcHandler):
    """Forwards every CRI call to containerd, turning what CRI-O says differently into its words."""

    def __init__(self, proxy: StandInCrio) -> None:
        self._proxy = proxy

    def service(self, details: grpc.HandlerCallDetails) -> Any:
        method: str = details.method
        if method.startswith("/runtime.v1alpha2."):
            return None  # CRI-O 1.3x serves CRI v1 only: grpc answers UNIMPLEMENTED
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: self._proxy.forward(method, request, context)
        )


class StandInCrio:
    """Stands in for CRI-O in `make test` (no registry here packages it): a thin CRI proxy on
    `socket` in front of a real containerd without its images API (so, as on CRI-O, the shim has
    no records to rename and translates names), answering as the recorded CRI-O 1.35 does:
    Version is CRI-O's; PullImage's image_ref and every image's `id` are the config digest as
    bare hex; a failed pull is worded as CRI-O words it (tests/harness/criowords.py); a verbose
    Status names its sandbox image as CRI-O does; v1alpha2 is not served.
    Streaming calls are not served (the scenarios need none)."""

    kind = "stand-in"
    VERSION = ("cri-o", "1.35.6")

    def __init__(self, workdir: Path, *, pause_image: str = "") -> None:
        self.workdir = workdir
        self.socket = check_socket_path(workdir / "crio.sock")
        self.containerd = Containerd(
            workdir / "containerd",
            sandbox_image=pause_image or DEFAULT_PAUSE_IMAGE,
            disabled_plugins=("io.containerd.grpc.v1.images",),
        )
        self.pause_image = pause_image
        self._status = {
            "sandboxImage": pause_image or DEFAULT_PAUSE_IMAGE,
            "crio": {"DefaultRuntime": "runc"},
        }
        self._server: grpc.Server | None = None
        self._channel: grpc.Channel | None = None

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def start(self) -> StandInCrio:
        self.containerd.start()
        if self.pause_image:
            with grpc.insecure_channel(self.containerd.address) as channel:
                images = v1_grpc.ImageServiceStub(channel)  # type: ignore[no-untyped-call]
                images.PullImage(v1.PullImageRequest(image=v1.ImageSpec(image=self.pause_image)), timeout=60)
        self._channel = grpc.insecure_channel(self.containerd.address, options=OPTIONS)
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), options=OPTIONS)
        self._server.add_generic_rpc_handlers((_StandInHandler(self),))
        self._server.add_insecure_port(self.address)
        self._server.start()
        return self

    def forward(self, method: str, request: bytes, context: grpc.ServicerContext) -> bytes:
        assert self._channel is not None
        name = method.rsplit("/", 1)[-1]
        if name == "Version":
            response = v1.VersionResponse(
                version="0.1.0",
                runtime_name=self.VERSION[0],
                runtime_version=self.VERSION[1],
                runtime_api_version="v1",
            )
            return response.SerializeToString()
        metadata = tuple((k, v) for k, v in context.invocation_metadata() if k not in TRANSPORT_KEYS)
        if name == "ListImages" and v1.ListImagesRequest.FromString(request).filter.image.image:
            # CRI-O answers a filtered list with the one image the name finds (containerd
            # ignores the filter)
            wanted = v1.ListImagesRequest.FromString(request).filter.image
            method, request = (
                method.replace("ListImages", "ImageStatus"),
                v1.ImageStatusRequest(image=wanted).SerializeToString(),
            )
            name = "ListImages-filtered"
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = self._channel.unary_unary(method)
        try:
            answer: bytes = call(request, timeout=context.time_remaining(), metadata=metadata)
        except grpc.RpcError as err:
            code, details = err.code(), err.details() or ""
            if name == "PullImage" and code not in _PASSED:
                # CRI-O answers every failed pull UNKNOWN, in its own words
                code = grpc.StatusCode.UNKNOWN
                image = v1.PullImageRequest.FromString(request).image.image
                details = crio_words(image, details, node_platform().architecture)
            context.abort(code, details)
        if name == "Status" and v1.StatusRequest.FromString(request).verbose:
            # CRI-O's verbose info: its config, with its pause_image as `sandboxImage`
            status = v1.StatusResponse.FromString(answer)
            status.info.clear()
            status.info["config"] = json.dumps(self._status)
            return status.SerializeToString()
        return _reworded(name, answer)

    def stop(self) -> None:
        if self._server is not None:
            self._server.stop(grace=None).wait(5)
            self._server = None
        if self._channel is not None:
            self._channel.close()
            self._channel = None
        self.socket.unlink(missing_ok=True)
        self.containerd.stop()

    def describe(self) -> str:
        return f"CRI-O stand-in over {self.containerd.describe()}"


def _reworded(name: str, answer: bytes) -> bytes:
    """containerd's answer with image IDs as CRI-O spells them."""
    if name == "PullImage":
        pulled = v1.PullImageResponse.FromString(answer)
        pulled.image_ref = bare(pulled.image_ref)
        return pulled.SerializeToString()
    if name == "ImageStatus":
        status = v1.ImageStatusResponse.FromString(answer)
        if status.HasField("image"):
            status.image.id = bare(status.image.id)
        return status.SerializeToString()
    if name == "ListImages-filtered":
        found = v1.ImageStatusResponse.FromString(answer)
        images = [found.image] if found.HasField("image") else []
        answer = v1.ListImagesResponse(images=images).SerializeToString()
    if name.startswith("ListImages"):
        listed = v1.ListImagesResponse.FromString(answer)
        for image in listed.images:
            image.id = bare(image.id)
        return listed.SerializeToString()
    return answer


CriO = Crio | StandInCrio


def crio(workdir: Path, pause_image: str = "") -> CriO:
    """Real CRI-O, started, when IMAGE_CRI_SHIM_CRIO names its binary; the stand-in otherwise."""
    binary = crio_binary()
    if binary is not None:
        return Crio(binary, workdir, pause_image=pause_image).start()
    return StandInCrio(workdir, pause_image=pause_image).start()
