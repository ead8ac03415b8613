"""Docker Engine (Debian's docker.io, run privately) and cri-dockerd in front of it.

`DockerEngine` is a real dockerd with its own data root, exec root and socket, no bridge and no
iptables; registries on 127.0.0.0/8 are plain http to it without configuration. Containers get
their runtime through a wrapper of runc that raises a negative `oom_score_adj` (this VM refuses
them; cri-dockerd asks -998 for sandboxes, and Docker has no setting to restrict it).

`CriDockerd` is cri-dockerd: the real binary when `IMAGE_CRI_SHIM_CRI_DOCKERD` names one, else a
stand-in (`StandInCriDockerd`) that answers the image service and Version as cri-dockerd 0.4 does
over the same Docker Engine: PullImage is Docker's pull with the request's credentials and answers
the image's first repo digest (its ID when it has none); ImageStatus finds an image by a tag or a
digest it holds, else by its ID; ListImages is Docker's list (a filter is Docker's `reference`
filter); RemoveImage looks the image up by ID only (by a name: OK, nothing removed) and removes
every name of it; errors are UNKNOWN with Docker's words; v1alpha2 is not served. Of the runtime
service it serves Version, Status (with `verbose`, its sandbox image in `info["config"]`, as
cri-dockerd 0.4 names it) and host-network pods: a sandbox container of the sandbox image (pulled
by Docker first when absent, ready while it runs), containers in its network, and ContainerStatus
with the image as created and `image_ref` `docker-pullable://<first repo digest>` (`docker://<ID>`
without one), the image named by its first tag (as created when it has none).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import socket
import subprocess
from concurrent import futures
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import grpc
from cri_api.v1 import api_pb2 as v1
from cri_api.v1 import api_pb2_grpc as v1_grpc

from .processes import HarnessError, ManagedProcess, check_socket_path, cri_socket_answers, wait_for
from .runc import oom_safe_runc

ENV_REAL = "IMAGE_CRI_SHIM_CRI_DOCKERD"

#: cri-dockerd 0.4's sandbox image without --pod-infra-container-image (tests/sandbox-status.json).
DEFAULT_SANDBOX_IMAGE = "registry.k8s.io/pause:3.10"


class _Unix(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self._path)


class DockerApi:
    """Docker Engine's HTTP API on a unix socket: one request, its status and its body."""

    def __init__(self, socket_path: Path) -> None:
        self.socket = socket_path

    def request(
        self,
        method: str,
        path: str,
        headers: dict[str, str] | None = None,
        timeout: float = 60.0,
        body: dict[str, Any] | None = None,
    ) -> tuple[int, bytes]:
        connection = _Unix(str(self.socket), timeout)
        data = None if body is None else json.dumps(body).encode()
        kinds = {} if body is None else {"Content-Type": "application/json"}
        try:
            connection.request(method, path, data, headers={"Host": "docker", **kinds, **(headers or {})})
            response = connection.getresponse()
            return response.status, response.read()
        finally:
            connection.close()

    def json(self, path: str) -> Any:
        status, body = self.request("GET", path)
        if status != 200:
            raise HarnessError(f"docker GET {path}: {status} {body[:200]!r}")
        return json.loads(body)

    def inspect(self, name: str) -> dict[str, Any] | None:
        status, body = self.request("GET", f"/images/{quote(name, safe='/:@')}/json")
        if status == 404:
            return None
        if status != 200:
            raise HarnessError(f"docker inspect {name}: {status} {body[:200]!r}")
        result: dict[str, Any] = json.loads(body)
        return result

    def names(self) -> list[str]:
        """Every name Docker holds (what `docker images --digests` lists), as Docker spells them."""
        images = self.json("/images/json")
        return sorted(
            n for image in images for n in (*(image.get("RepoTags") or ()), *(image.get("RepoDigests") or ()))
        )

    def version(self) -> str:
        return str(self.json("/version")["Version"])

    def pull(self, name: str) -> None:
        """Docker's own pull (past every CRI), for what the node holds beforehand."""
        repo, tag = _split(name)
        status, body = self.request("POST", "/images/create?" + urlencode({"fromImage": repo, "tag": tag}))
        if status != 200 or b'"error"' in body:
            raise HarnessError(f"docker pull {name}: {status} {body[-300:]!r}")

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        """A container call; its JSON answer (None for an empty one)."""
        status, answer = self.request(method, path, body=body)
        if status >= 400:
            raise HarnessError(f"docker {method} {path}: {status} {answer[:300]!r}")
        return json.loads(answer) if answer.strip() else None


class DockerEngine:
    """A private dockerd: `start`, `stop`, `restart` keep its data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.socket = check_socket_path(root / "docker.sock")
        self.api = DockerApi(self.socket)
        self.process: ManagedProcess | None = None

    def start(self, timeout: float = 60.0) -> DockerEngine:
        self.root.mkdir(parents=True, exist_ok=True)
        wrapper = oom_safe_runc(self.root / "runc-oom")
        argv = [
            "dockerd",
            f"--data-root={self.root / 'data'}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'pid'}",
            f"--host=unix://{self.socket}",
            "--bridge=none",
            "--iptables=false",
            "--ip-masq=false",
            f"--add-runtime=oomsafe={wrapper}",
            "--default-runtime=oomsafe",
        ]
        self.process = ManagedProcess(argv, self.root / "dockerd.log", name="dockerd")
        process = self.process

        def answers() -> bool:
            if not process.alive():
                raise HarnessError(process.describe())
            return self.api.request("GET", "/_ping", timeout=1.0)[0] == 200

        wait_for(answers, timeout, "dockerd to answer", interval=0.2, detail=process.describe)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=20.0)
            self.process = None
        for mount in self.mounts():  # dockerd leaves its default network namespace mounted
            subprocess.run(["umount", mount], capture_output=True, timeout=10, check=False)
        left = self.mounts()
        if left:
            raise HarnessError(f"still mounted after dockerd stopped: {', '.join(left)}")

    def mounts(self) -> list[str]:
        """Mount points under this engine's root, deepest first."""
        with open("/proc/mounts") as table:
            points = [line.split()[1] for line in table]
        root = str(self.root.resolve())
        return sorted((p for p in points if p.startswith(root + "/")), key=len, reverse=True)

    def restart(self) -> None:
        self.stop()
        self.start()


def _split(name: str) -> tuple[str, str]:
    """`repo:tag` / `repo@digest` / `repo` -> (repo, tag or digest), as Docker's pull takes them."""
    if "@" in name:
        repo, digest = name.split("@", 1)
        return repo, digest
    slash, colon = name.rfind("/"), name.rfind(":")
    return (name[:colon], name[colon + 1 :]) if colon > slash else (name, "latest")


def _familiar(name: str) -> str:
    if name.startswith("docker.io/library/") and "/" not in name[18:]:
        return name[18:]
    return name.removeprefix("docker.io/")


def _matches_ref(image: dict[str, Any], name: str) -> bool:
    """cri-dockerd's check that what Docker found by `name` is the image `name` names."""
    if "@" in name:
        digest = name.split("@", 1)[1]
        return image["Id"] == digest or any(d.endswith("@" + digest) for d in image.get("RepoDigests") or ())
    repo, tag = _split(name)
    wanted = _familiar(f"{repo}:{tag}")
    return any(
        name.endswith(t) or t.endswith(name) or _familiar(t) == wanted for t in image.get("RepoTags") or ()
    )


def _matches_id(image: dict[str, Any], name: str) -> bool:
    return bool(image["Id"] == name or image["Id"] == "sha256:" + name)


def _image(image: dict[str, Any]) -> v1.Image:
    answer = v1.Image(
        id=image["Id"],
        repo_tags=image.get("RepoTags") or [],
        repo_digests=image.get("RepoDigests") or [],
        size=int(image.get("Size") or 0),
    )
    user = ((image.get("Config") or {}).get("User") or "").split(":")[0]
    if user.isdigit():
        answer.uid.value = int(user)
    elif user:
        answer.username = user
    return answer


class _Images(v1_grpc.ImageServiceServicer):
    def __init__(self, api: DockerApi) -> None:
        self.api = api

    def _fail(self, context: grpc.ServicerContext, message: str) -> None:
        context.abort(grpc.StatusCode.UNKNOWN, message)

    def PullImage(self, request: v1.PullImageRequest, context: grpc.ServicerContext) -> v1.PullImageResponse:
        name = request.image.image
        headers = {}
        if request.auth.username or request.auth.password or request.auth.identity_token:
            auth = {
                "username": request.auth.username,
                "password": request.auth.password,
                "serveraddress": request.auth.server_address,
                "identitytoken": request.auth.identity_token,
            }
            headers["X-Registry-Auth"] = base64.urlsafe_b64encode(json.dumps(auth).encode()).decode()
        failed = _pull_failure(self.api, name, headers)
        if failed is not None:
            self._fail(context, failed)
        image = self.api.inspect(name)
        if image is None or not _matches_ref(image, name):
            self._fail(context, f"unable to inspect image {name}")
        assert image is not None
        digests = image.get("RepoDigests") or []
        return v1.PullImageResponse(image_ref=digests[0] if digests else image["Id"])

    def ImageStatus(
        self, request: v1.ImageStatusRequest, context: grpc.ServicerContext
    ) -> v1.ImageStatusResponse:
        name = request.image.image
        image = self.api.inspect(name)
        if image is None or not (_matches_ref(image, name) or _matches_id(image, name)):
            return v1.ImageStatusResponse()
        return v1.ImageStatusResponse(image=_image(image))

    def ListImages(
        self, request: v1.ListImagesRequest, context: grpc.ServicerContext
    ) -> v1.ListImagesResponse:
        path = "/images/json"
        if request.filter.image.image:
            path += "?" + urlencode({"filters": json.dumps({"reference": [request.filter.image.image]})})
        return v1.ListImagesResponse(images=[_image(i) for i in self.api.json(path)])

    def RemoveImage(
        self, request: v1.RemoveImageRequest, context: grpc.ServicerContext
    ) -> v1.RemoveImageResponse:
        name = request.image.image
        image = self.api.inspect(name)
        if image is None or not _matches_id(image, name):
            return v1.RemoveImageResponse()  # by a name: OK, and nothing removed
        for held in (*(image.get("RepoTags") or ()), *(image.get("RepoDigests") or ()), name):
            status, body = self.api.request("DELETE", f"/images/{quote(held, safe='/:@')}")
            if status not in (200, 404):
                self._fail(context, f"Error response from daemon: {json.loads(body).get('message', '')}")
        return v1.RemoveImageResponse()

    def ImageFsInfo(
        self, request: v1.ImageFsInfoRequest, context: grpc.ServicerContext
    ) -> v1.ImageFsInfoResponse:
        return v1.ImageFsInfoResponse()


SANDBOX_LABEL = "io.kubernetes.sandbox.id"
TYPE_LABEL = "io.kubernetes.docker.type"


def _pull_failure(api: DockerApi, name: str, headers: dict[str, str]) -> str | None:
    """Docker's pull of `name`; what went wrong in cri-dockerd's words, None when it was pulled."""
    repo, tag = _split(name)
    query = urlencode({"fromImage": repo, "tag": tag})
    status, body = api.request("POST", f"/images/create?{query}", headers, timeout=600.0)
    if status != 200:
        try:
            message = json.loads(body).get("message", "")
        except ValueError:
            message = body.decode(errors="replace")
        return f"Error response from daemon: {message}"
    for line in body.splitlines():
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if event.get("error"):
            code = (event.get("errorDetail") or {}).get("code")
            prefix = "RegistryUnavailable: " if code in (502, 503, 504) else ""  # as cri-dockerd marks them
            return prefix + str(event["error"])
    return None


class _Runtime(v1_grpc.RuntimeServiceServicer):
    """Host-network pods: a sandbox is a container of the sandbox image; a container joins its
    network; ContainerStatus names the image as cri-dockerd does."""

    def __init__(self, api: DockerApi, sandbox_image: str) -> None:
        self.api = api
        self.sandbox_image = sandbox_image

    def _run(self, name: str, image: str, command: list[str], labels: dict[str, str], network: str) -> str:
        body = {"Image": image, "Labels": labels, "HostConfig": {"NetworkMode": network}}
        if command:
            body["Cmd"] = command
        created = self.api.call("POST", f"/containers/create?{urlencode({'name': name})}", body)
        return str(created["Id"])

    def RunPodSandbox(
        self, request: v1.RunPodSandboxRequest, context: grpc.ServicerContext
    ) -> v1.RunPodSandboxResponse:
        meta = request.config.metadata
        name = f"k8s_POD_{meta.name}_{meta.namespace}_{meta.uid}_{meta.attempt}"
        image = self.sandbox_image
        failed = _pull_failure(self.api, image, {}) if self.api.inspect(image) is None else None
        if failed is not None:  # cri-dockerd pulls an absent sandbox image itself, past the shim
            context.abort(grpc.StatusCode.UNKNOWN, f'failed pulling image "{image}": {failed}')
        sandbox = self._run(name, self.sandbox_image, [], {TYPE_LABEL: "podsandbox"}, "host")
        self.api.call("POST", f"/containers/{sandbox}/start")
        return v1.RunPodSandboxResponse(pod_sandbox_id=sandbox)

    def PodSandboxStatus(
        self, request: v1.PodSandboxStatusRequest, context: grpc.ServicerContext
    ) -> v1.PodSandboxStatusResponse:
        found = self.api.call("GET", f"/containers/{request.pod_sandbox_id}/json")
        ready = found["State"]["Running"]
        state = v1.PodSandboxState.SANDBOX_READY if ready else v1.PodSandboxState.SANDBOX_NOTREADY
        return v1.PodSandboxStatusResponse(status=v1.PodSandboxStatus(id=found["Id"], state=state))

    def _members(self, sandbox: str) -> list[str]:
        query = urlencode({"all": "1", "filters": json.dumps({"label": [f"{SANDBOX_LABEL}={sandbox}"]})})
        return [str(c["Id"]) for c in self.api.call("GET", f"/containers/json?{query}")]

    def StopPodSandbox(
        self, request: v1.StopPodSandboxRequest, context: grpc.ServicerContext
    ) -> v1.StopPodSandboxResponse:
        for container in (*self._members(request.pod_sandbox_id), request.pod_sandbox_id):
            self.api.call("POST", f"/containers/{container}/stop?t=0")
        return v1.StopPodSandboxResponse()

    def RemovePodSandbox(
        self, request: v1.RemovePodSandboxRequest, context: grpc.ServicerContext
    ) -> v1.RemovePodSandboxResponse:
        for container in (*self._members(request.pod_sandbox_id), request.pod_sandbox_id):
            self.api.call("DELETE", f"/containers/{container}?force=1&v=1")
        return v1.RemovePodSandboxResponse()

    def ListPodSandbox(
        self, request: v1.ListPodSandboxRequest, context: grpc.ServicerContext
    ) -> v1.ListPodSandboxResponse:
        query = urlencode({"all": "1", "filters": json.dumps({"label": [f"{TYPE_LABEL}=podsandbox"]})})
        found = self.api.call("GET", f"/containers/json?{query}")
        return v1.ListPodSandboxResponse(items=[v1.PodSandbox(id=c["Id"]) for c in found])

    def CreateContainer(
        self, request: v1.CreateContainerRequest, context: grpc.ServicerContext
    ) -> v1.CreateContainerResponse:
        meta, sandbox = request.config.metadata, request.pod_sandbox_id
        name = f"k8s_{meta.name}_{sandbox[:12]}_{meta.attempt}"
        labels = {SANDBOX_LABEL: sandbox, TYPE_LABEL: "container"}
        try:
            container = self._run(
                name, request.config.image.image, list(request.config.command), labels, f"container:{sandbox}"
            )
        except HarnessError as err:
            context.abort(grpc.StatusCode.UNKNOWN, str(err))
        return v1.CreateContainerResponse(container_id=container)

    def StartContainer(
        self, request: v1.StartContainerRequest, context: grpc.ServicerContext
    ) -> v1.StartContainerResponse:
        self.api.call("POST", f"/containers/{request.container_id}/start")
        return v1.StartContainerResponse()

    def ContainerStatus(
        self, request: v1.ContainerStatusRequest, context: grpc.ServicerContext
    ) -> v1.ContainerStatusResponse:
        found = self.api.call("GET", f"/containers/{request.container_id}/json")
        image_id = found["Image"]
        image = self.api.inspect(image_id)
        digests = (image or {}).get("RepoDigests") or []
        ref = f"docker-pullable://{digests[0]}" if digests else f"docker://{image_id}"
        running = found["State"]["Running"]
        state = v1.ContainerState.CONTAINER_RUNNING if running else v1.ContainerState.CONTAINER_EXITED
        tags = (image or {}).get("RepoTags") or []
        shown = tags[0] if tags else found["Config"]["Image"]  # the image's first tag, else as created
        status = v1.ContainerStatus(
            id=found["Id"], state=state, image=v1.ImageSpec(image=shown), image_ref=ref
        )
        return v1.ContainerStatusResponse(status=status)

    def Status(self, request: v1.StatusRequest, context: grpc.ServicerContext) -> v1.StatusResponse:
        """Ready, and with `verbose` its sandbox image as cri-dockerd 0.4 names it."""
        ready = [v1.RuntimeCondition(type=kind, status=True) for kind in ("RuntimeReady", "NetworkReady")]
        info = {"config": json.dumps({"sandboxImage": self.sandbox_image})} if request.verbose else {}
        return v1.StatusResponse(status=v1.RuntimeStatus(conditions=ready), info=info)

    def Version(self, request: v1.VersionRequest, context: grpc.ServicerContext) -> v1.VersionResponse:
        return v1.VersionResponse(
            version="0.1.0",
            runtime_name="docker",
            runtime_version=self.api.version(),
            runtime_api_version="v1",
        )


class StandInCriDockerd:
    """cri-dockerd's image service and Version over `engine`, served on `socket`."""

    kind = "stand-in"

    def __init__(self, engine: DockerEngine, socket_path: Path, sandbox_image: str | None) -> None:
        sandbox_image = sandbox_image or DEFAULT_SANDBOX_IMAGE
        self.socket = check_socket_path(socket_path)
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        v1_grpc.add_ImageServiceServicer_to_server(_Images(engine.api), self.server)  # type: ignore[no-untyped-call]
        v1_grpc.add_RuntimeServiceServicer_to_server(_Runtime(engine.api, sandbox_image), self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(f"unix://{self.socket}")

    def start(self) -> StandInCriDockerd:
        self.server.start()
        return self

    def stop(self) -> None:
        self.server.stop(grace=None).wait()
        self.socket.unlink(missing_ok=True)


class RealCriDockerd:
    """The cri-dockerd binary at `binary`, over `engine`, serving on `socket`."""

    kind = "real"

    def __init__(
        self, binary: str, engine: DockerEngine, socket_path: Path, sandbox_image: str | None
    ) -> None:
        self.binary = binary
        self.sandbox_image = sandbox_image
        self.engine = engine
        self.socket = check_socket_path(socket_path)
        self.process: ManagedProcess | None = None

    def start(self) -> RealCriDockerd:
        root = self.socket.parent / "cri-dockerd"
        argv = [
            self.binary,
            f"--container-runtime-endpoint=unix://{self.socket}",
            f"--docker-endpoint=unix://{self.engine.socket}",
            f"--cri-dockerd-root-directory={root}",
            "--network-plugin=",
            *([f"--pod-infra-container-image={self.sandbox_image}"] if self.sandbox_image else []),
        ]
        self.process = ManagedProcess(argv, self.socket.parent / "cri-dockerd.log", name="cri-dockerd")
        process = self.process

        def answers() -> bool:
            if not process.alive():
                raise HarnessError(process.describe())
            return cri_socket_answers(self.socket)

        wait_for(answers, 30.0, "cri-dockerd to answer", interval=0.2, detail=process.describe)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop(timeout=10.0)
            self.process = None


CriDockerd = StandInCriDockerd | RealCriDockerd


def cri_dockerd(engine: DockerEngine, socket_path: Path, sandbox_image: str | None = None) -> CriDockerd:
    """The real cri-dockerd when IMAGE_CRI_SHIM_CRI_DOCKERD names its binary, the stand-in otherwise;
    either runs pods from `sandbox_image` (on the node already: Docker pulls it past the shim), or
    from its built-in default without one."""
    binary = os.environ.get(ENV_REAL, "")
    if binary:
        if not os.access(binary, os.X_OK):
            raise HarnessError(f"{ENV_REAL}={binary}: not an executable file")
        return RealCriDockerd(binary, engine, socket_path, sandbox_image).start()
    return StandInCriDockerd(engine, socket_path, sandbox_image).start()


__all__ = ["CriDockerd", "DockerApi", "DockerEngine", "cri_dockerd"]
