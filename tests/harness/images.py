"""Tiny OCI images built without docker, pushed to test registries with skopeo.

Builds are deterministic (fixed mtimes, sorted JSON): the same `content` always gives the same
digest, so one image can be pushed to several registries and compared by digest; different
`content` gives different images.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import platform as _platform
import shutil
import subprocess
import tarfile
import threading
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .processes import HarnessError
from .registry import Registry

OCI_LAYOUT_VERSION = "1.0.0"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
REF_NAME = "org.opencontainers.image.ref.name"
LAYOUT_TAG = "latest"

# Python's machine names -> GOARCH (+ variant), as registries and containerd name platforms.
_MACHINE_TO_GOARCH: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", None),
    "arm64": ("arm64", None),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "loongarch64": ("loong64", None),
}


@dataclass(frozen=True)
class Platform:
    os: str
    architecture: str
    variant: str | None = None

    def as_json(self) -> dict[str, str]:
        out = {"architecture": self.architecture, "os": self.os}
        if self.variant:
            out["variant"] = self.variant
        return out

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)


def node_platform() -> Platform:
    """This node's platform in GOARCH naming (what containerd matches an index against)."""
    machine = _platform.machine().lower()
    if machine not in _MACHINE_TO_GOARCH:
        raise HarnessError(f"unknown machine architecture {machine!r}: add it to _MACHINE_TO_GOARCH")
    arch, variant = _MACHINE_TO_GOARCH[machine]
    return Platform("linux", arch, variant)


def foreign_platform() -> Platform:
    """A platform this node is not: for "the index lacks the node's platform" cases."""
    return (
        Platform("linux", "amd64") if node_platform().architecture == "s390x" else Platform("linux", "s390x")
    )


def _json_bytes(value: object) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


@dataclass(frozen=True)
class OciLayout:
    """An OCI image layout directory holding one image (or index) under the tag `latest`."""

    path: Path
    digest: str
    media_type: str

    @property
    def is_index(self) -> bool:
        return self.media_type == OCI_INDEX

    @property
    def transport_ref(self) -> str:
        return f"oci:{self.path}:{LAYOUT_TAG}"


class LayoutWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        (path / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)

    def blob(self, data: bytes, media_type: str, **extra: Any) -> dict[str, Any]:
        """Store a blob; return its descriptor."""
        hexdigest = hashlib.sha256(data).hexdigest()
        (self.path / "blobs" / "sha256" / hexdigest).write_bytes(data)
        return {"mediaType": media_type, "digest": f"sha256:{hexdigest}", "size": len(data), **extra}

    def manifest(self, content: str, platform: Platform) -> dict[str, Any]:
        """One gzip tar layer with one small file (the unique `content`), a config, a manifest."""
        data = content.encode()
        tar_buffer = io.BytesIO()
        with tarfile.open(fileobj=tar_buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
            info = tarfile.TarInfo("image-cri-shim-test.txt")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            tar.addfile(info, io.BytesIO(data))
        return self.image(tar_buffer.getvalue(), platform, {"Cmd": ["/image-cri-shim-test.txt"]})

    def image(self, tar_bytes: bytes, platform: Platform, settings: dict[str, Any]) -> dict[str, Any]:
        """The manifest of a one-layer image from its uncompressed tar, with `settings` (Cmd, Env...)."""
        layer = self.blob(gzip.compress(tar_bytes, mtime=0), OCI_LAYER)
        config = {
            **platform.as_json(),
            "config": settings,
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(tar_bytes).hexdigest()}"]},
        }
        manifest = {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": self.blob(_json_bytes(config), OCI_CONFIG),
            "layers": [layer],
        }
        return self.blob(_json_bytes(manifest), OCI_MANIFEST)

    def finish(self, top: dict[str, Any]) -> OciLayout:
        (self.path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        tagged = {**top, "annotations": {REF_NAME: LAYOUT_TAG}}
        (self.path / "index.json").write_bytes(_json_bytes({"schemaVersion": 2, "manifests": [tagged]}))
        return OciLayout(self.path, top["digest"], top["mediaType"])


def build_image(path: Path, content: str, platform: Platform | None = None) -> OciLayout:
    """A single-platform image (default: this node's platform)."""
    writer = LayoutWriter(path)
    return writer.finish(writer.manifest(content, platform or node_platform()))


def build_index(path: Path, content: str, platforms: Sequence[Platform]) -> OciLayout:
    """An OCI index with one image per platform (each image different, named by its platform)."""
    if not platforms:
        raise ValueError("an index needs at least one platform")
    writer = LayoutWriter(path)
    manifests = [{**writer.manifest(f"{content}\n{p}", p), "platform": p.as_json()} for p in platforms]
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}
    return writer.finish(writer.blob(_json_bytes(index), OCI_INDEX))


@dataclass(frozen=True)
class PushedImage:
    """An image as it now exists in a registry."""

    host: str
    repo: str
    tag: str
    digest: str  # of the manifest or index the registry serves for the tag
    media_type: str

    @property
    def reference(self) -> str:
        """`127.0.0.1:PORT/repo:tag`"""
        return f"{self.host}/{self.repo}:{self.tag}"

    @property
    def digest_reference(self) -> str:
        """`127.0.0.1:PORT/repo@sha256:...` (as in CRI `repo_digests`)."""
        return f"{self.host}/{self.repo}@{self.digest}"

    def __str__(self) -> str:
        return self.reference


def push(
    layout: OciLayout,
    registry: Registry,
    repo: str,
    tag: str = LAYOUT_TAG,
    *,
    docker_format: bool = False,
    tmpdir: Path | None = None,
    timeout: float = 60.0,
) -> PushedImage:
    """`skopeo copy` the layout to registry/repo:tag with the registry's credentials and CA.

    `docker_format` converts to Docker schema 2 media types (the digest then differs from the
    layout's). Returns the digest skopeo reports for what it pushed.
    """
    skopeo = shutil.which("skopeo")
    if skopeo is None:
        raise HarnessError("skopeo is not on PATH (Debian: apt-get install skopeo)")
    work = tmpdir or layout.path.parent
    digest_file = work / f"digest-{uuid.uuid4().hex}"
    argv = [skopeo, "--insecure-policy", f"--command-timeout={int(timeout)}s", "copy", "--quiet"]
    argv.append(f"--digestfile={digest_file}")
    if registry.cert_dir is not None:
        argv += ["--dest-tls-verify=true", f"--dest-cert-dir={registry.cert_dir}"]
    else:
        argv.append("--dest-tls-verify=false")
    argv.append(f"--dest-creds={registry.auth}" if registry.auth is not None else "--dest-no-creds")
    if layout.is_index:
        argv.append("--all")
    argv.append("--format=v2s2" if docker_format else "--preserve-digests")
    destination = f"docker://{registry.host}/{repo}:{tag}"
    argv += [layout.transport_ref, destination]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout + 5, check=False)
    except subprocess.TimeoutExpired as exc:
        raise HarnessError(f"skopeo copy to {destination} timed out") from exc
    if done.returncode != 0:
        raise HarnessError(
            f"skopeo copy to {destination} failed (exit {done.returncode}):\n{done.stderr}"
            f"\n{registry.describe()}"
        )
    try:
        digest = digest_file.read_text().strip()
    finally:
        digest_file.unlink(missing_ok=True)
    media_type = layout.media_type
    if docker_format:
        media_type = (
            "application/vnd.docker.distribution.manifest.list.v2+json"
            if layout.is_index
            else "application/vnd.docker.distribution.manifest.v2+json"
        )
    return PushedImage(registry.host, repo, tag, digest, media_type)


class ImageBuilder:
    """Builds layouts once per session (keyed by content and platforms) and pushes them."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._layouts: dict[tuple[str, tuple[Platform, ...] | None], OciLayout] = {}
        self._lock = threading.Lock()

    def layout(self, content: str, platforms: Sequence[Platform] | None = None) -> OciLayout:
        """`platforms=None`: a plain image for this node; a sequence: an index of those platforms."""
        key = (content, tuple(platforms) if platforms is not None else None)
        with self._lock:
            if key not in self._layouts:
                name = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
                path = self.workdir / name
                shutil.rmtree(path, ignore_errors=True)
                self._layouts[key] = (
                    build_image(path, content) if platforms is None else build_index(path, content, platforms)
                )
            return self._layouts[key]

    def push(
        self,
        registry: Registry,
        repo: str = "test/app",
        tag: str = "v1",
        *,
        content: str | None = None,
        platforms: Sequence[Platform] | None = None,
        docker_format: bool = False,
    ) -> PushedImage:
        """Build (or reuse) and push. Without `content` the image is new and unique."""
        layout = self.layout(content if content is not None else uuid.uuid4().hex, platforms)
        return push(layout, registry, repo, tag, docker_format=docker_format, tmpdir=self.workdir)

    __call__ = push
