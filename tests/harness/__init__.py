"""Real-parts test harness: a private containerd, docker-registry instances, tiny OCI images,
a CRI client and child-process helpers. No mocks; every wait is bounded."""

from .containerd import CertsDir, Containerd, hosts_toml
from .cri import VERSIONS, CriClient, CriClientFactory, CriVersion
from .images import ImageBuilder, OciLayout, Platform, PushedImage, foreign_platform, node_platform
from .processes import HarnessError, ManagedProcess, ShimFactory, ShimProcess, start_shim, wait_for
from .registry import Blackhole, CertAuthority, Registry, RegistryFactory, free_port

__all__ = [
    "VERSIONS",
    "Blackhole",
    "CertAuthority",
    "CertsDir",
    "Containerd",
    "CriClient",
    "CriClientFactory",
    "CriVersion",
    "HarnessError",
    "ImageBuilder",
    "ManagedProcess",
    "OciLayout",
    "Platform",
    "PushedImage",
    "Registry",
    "RegistryFactory",
    "ShimFactory",
    "ShimProcess",
    "foreign_platform",
    "free_port",
    "hosts_toml",
    "node_platform",
    "start_shim",
    "wait_for",
]
