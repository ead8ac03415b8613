"""The config as the rest of the program sees it: frozen values, and the defaults they start from.

Which YAML key fills which field, how it is checked and what it means is in `schema.py`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = [
    "CRI_SOCKETS",
    "DEFAULT_PATH",
    "CacheConfig",
    "Config",
    "ConfigMapRef",
    "Registry",
]

DEFAULT_PATH = "/etc/image-cri-shim/config.yaml"
CRI_SOCKETS = ("/run/containerd/containerd.sock", "/var/run/crio/crio.sock", "/var/run/cri-dockerd.sock")
DEFAULT_SHIM = "/var/run/image-cri-shim.sock"
DEFAULT_STATE_DIR = "/var/lib/image-cri-shim"
DEFAULT_DOCKER_SOCKET = "/var/run/docker.sock"
DEFAULT_TIMEOUT = 900.0  # 15m
DEFAULT_RELOAD_INTERVAL = 15.0
DEFAULT_PRIORITY = 500
# A node file that leaves the registries to the ConfigMap: the shim serves, rewriting nothing.
PASSTHROUGH = "no registry configured: images pass through unchanged until the ConfigMap sets registries"
DEFAULT_OFFLINE_PRIORITY = 1000
PRIORITY_MIN, PRIORITY_MAX = 0, 10000


@dataclass(frozen=True)
class Registry:
    """A registry the resolver may pull from, with the credentials to send it."""

    domain: str
    scheme: str
    username: str
    password: str = field(repr=False)
    priority: int
    offline: bool
    insecure_skip_verify: bool
    ca: str | None
    key: str
    # Routing rules (docs/routing.md): (source prefix, path prefix in this registry), longest prefix
    # first so the first match is the one that wins. Empty: a candidate for every image, at the
    # image's own repository path.
    mirrors: tuple[tuple[str, str], ...] = ()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.domain}"

    @property
    def has_credentials(self) -> bool:
        return self.username != ""


@dataclass(frozen=True)
class CacheConfig:
    image_cache_size: int = 1024
    image_cache_ttl: float = 1800.0
    negative_cache_ttl: float = 30.0
    stats_log_interval: float = 60.0
    disable_stats: bool = False


@dataclass(frozen=True)
class ConfigMapRef:
    enabled: bool = True
    namespace: str = "kube-system"
    name: str = "image-cri-shim"
    key: str = "registries.yaml"


@dataclass(frozen=True)
class Config:
    path: str
    shim: str
    cri: str | None
    registries: tuple[Registry, ...]
    force: bool
    debug: bool
    timeout: float
    reload_interval: float
    cache: CacheConfig
    metrics_address: str | None
    config_map: ConfigMapRef
    state_dir: str
    docker_socket: str  # Docker Engine's API, for cri-dockerd nodes
    upstream: bool  # false: an image no configured registry holds is refused, never pulled as asked
    warnings: tuple[str, ...]
    # The runtime's sandbox (pause) image, normalized; None: the one the runtime reports.
    sandbox_image: str | None = None
    # The file's bytes this was parsed from (`parse_bytes`), so the master compares later reads with
    # exactly what it applied; empty for a config parsed from text. Holds passwords: never shown.
    source: bytes = field(default=b"", repr=False, compare=False)
