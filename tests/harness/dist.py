"""The offline bundle `make dist` builds, as the dist tests take it: built once per run (or reused
when newer than everything it is built from), and unpacked where an operator would have it."""

from __future__ import annotations

import os
import subprocess
import tarfile
import time
from pathlib import Path

import pytest

from image_cri_shim import __version__

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
NAME = f"image-cri-shim-{__version__}-linux-{GOARCH[os.uname().machine]}"
MAPPED = ("supervisor", "workers", "syncer", "protos")  # linked into image_cri_shim/
# What `make dist` builds from: a bundle older than any of these is built again.
BUILT_FROM = (
    "pyproject.toml",
    "Makefile",
    "packaging",
    "systemd",
    "docs/examples",
    "image_cri_shim",
    *MAPPED,
)


def newest_input() -> float:
    paths = [ROOT / name for name in BUILT_FROM]
    files = [p for path in paths for p in [path, *path.rglob("*")] if p.is_file()]
    return max(p.stat().st_mtime for p in files if "__pycache__" not in p.parts)


@pytest.fixture(scope="session")
def bundle() -> Path:
    """dist/<NAME>/, the bundle unpacked, as `make dist` made it from the current tree."""
    tarball = DIST / f"{NAME}.tar.gz"
    if not tarball.exists() or tarball.stat().st_mtime < newest_input():
        started = time.monotonic()
        done = subprocess.run(
            ["make", "--no-print-directory", "dist"], cwd=ROOT, capture_output=True, text=True, timeout=3300
        )
        assert done.returncode == 0, f"make dist failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        print(f"make dist: {time.monotonic() - started:.0f} s")
    return DIST / NAME


@pytest.fixture(scope="session")
def extracted(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle as an operator has it: the tarball unpacked somewhere else."""
    target = tmp_path_factory.mktemp("node")
    with tarfile.open(DIST / f"{NAME}.tar.gz") as tar:
        tar.extractall(target, filter="tar")
    return target / NAME
