"""The offline bundle `make dist` builds, as the dist tests take it: built once per run (or reused
when newer than everything it is built from), and unpacked where an operator would have it.
`built("arm64")` is the bundle of another architecture, which `make dist ARCH=arm64` cross-builds."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import re
import subprocess
import tarfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from image_cri_shim import __version__

from .rootfs import chrooted

ROOT = Path(__file__).resolve().parents[2]
DIST = ROOT / "dist"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}
MACHINE_ARCH = GOARCH[os.uname().machine]
NAME = f"image-cri-shim-{__version__}-linux-{MACHINE_ARCH}"
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


def name(arch: str) -> str:
    """The bundle's name for `arch` (Go's name: amd64, arm64)."""
    return f"image-cri-shim-{__version__}-linux-{arch}"


def built(arch: str = MACHINE_ARCH) -> Path:
    """dist/<name>/: the bundle for `arch`, as `make dist ARCH=arch` makes it from the current tree."""
    tarball = DIST / f"{name(arch)}.tar.gz"
    if not tarball.exists() or tarball.stat().st_mtime < newest_input():
        started = time.monotonic()
        argv = ["make", "--no-print-directory", "dist", f"ARCH={arch}"]
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=3300)
        assert done.returncode == 0, f"{' '.join(argv)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        print(f"make dist ARCH={arch}: {time.monotonic() - started:.0f} s")
    return DIST / name(arch)


def unpacked(arch: str, target: Path) -> Path:
    """The bundle for `arch` as an operator has it: the tarball unpacked in `target`."""
    with tarfile.open(DIST / f"{name(arch)}.tar.gz") as tar:
        tar.extractall(target, filter="tar")
    return target / name(arch)


@pytest.fixture(scope="session")
def bundle() -> Path:
    """dist/<NAME>/, the bundle of this machine's architecture, unpacked."""
    return built()


@pytest.fixture(scope="session")
def extracted(bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundle as an operator has it: the tarball unpacked somewhere else."""
    return unpacked(MACHINE_ARCH, tmp_path_factory.mktemp("node"))


# manylinux2014: what CentOS 7 has, and so every node a bundle is for.
FLOOR = {"GLIBC": (2, 17), "GLIBCXX": (3, 4, 19), "CXXABI": (1, 3, 7)}
# e_machine of an ELF header, by Python's machine name.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}


def elf_files(directory: Path) -> list[Path]:
    files = (p for p in sorted(directory.rglob("*")) if p.is_file() and not p.is_symlink())
    return [p for p in files if p.read_bytes()[:4] == b"\x7fELF"]


def elf_machine(path: Path) -> int:
    """e_machine of the (little-endian) ELF file at `path`."""
    return int.from_bytes(path.read_bytes()[18:20], "little")


def dynamic_symbols(path: Path) -> list[tuple[str, str, str, str]]:
    """(name, version or "", binding, section) of each dynamic symbol, read with readelf."""
    dump = subprocess.run(["readelf", "--dyn-syms", "--wide", str(path)], capture_output=True, text=True)
    found = []
    for line in dump.stdout.splitlines():
        fields = line.split()
        if len(fields) >= 8 and fields[0].endswith(":") and fields[0][:-1].isdigit():
            name, _, version = fields[7].partition("@")
            found.append((name, version.lstrip("@"), fields[4], fields[6]))
    return found


def assert_manylinux2014(extracted: Path) -> None:
    """Every ELF file of the bundle needs at most the manylinux2014 floor, and a symbol without
    a version only where another file of the bundle defines it or the program binds to it."""
    files = elf_files(extracted / "image-cri-shim")
    assert len(files) > 30, files
    copied = [p.name for p in files if p.name.startswith(("libstdc++.so", "libgcc_s.so"))]
    assert not copied, f"the build machine's C++ runtime is bundled (the node provides it): {copied}"
    symbols = {path: dynamic_symbols(path) for path in files}
    defined = {name for found in symbols.values() for name, _, _, section in found if section != "UND"}
    # The program and libpython are loaded first and globally: a function they bind to at a
    # version of the floor (dlsym from libdl, say) is there for every later file, and an
    # unversioned reference binds to it (uvloop's libuv references dlsym so).
    first = [path for path in files if path.name == "image-cri-shim" or path.name.startswith("libpython")]
    assert len(first) == 2, first
    bound = {
        name for path in first for name, version, _, section in symbols[path] if section == "UND" and version
    }
    too_new, unresolved = [], []
    for path, found in symbols.items():
        where = path.relative_to(extracted)
        undefined = [(name, version, bind) for name, version, bind, section in found if section == "UND"]
        for name, version, bind in undefined:
            prefix, _, number = version.partition("_")
            if prefix in FLOOR and tuple(map(int, number.split("."))) > FLOOR[prefix]:
                too_new.append(f"{where}: {name}@{version}")
            elif not version and bind != "WEAK" and name not in defined | bound:
                unresolved.append(f"{where}: {name}")
    assert not too_new, "above the manylinux2014 floor:\n" + "\n".join(too_new)
    assert not unresolved, "needed without a version and defined nowhere in the bundle:\n" + "\n".join(
        unresolved
    )


def glibc_floor(extracted: Path) -> str:
    """The newest GLIBC_x.y version any ELF file of the bundle names, read with readelf."""
    needed: set[tuple[int, ...]] = set()
    for path in elf_files(extracted / "image-cri-shim"):
        versions = subprocess.run(["readelf", "-V", "--wide", str(path)], capture_output=True, text=True)
        needed.update(tuple(map(int, v)) for v in re.findall(r"Name: GLIBC_(\d+)\.(\d+)", versions.stdout))
    return "{}.{}".format(*max(needed))


def sums(path: Path) -> dict[str, str]:
    """file name -> digest, from a SHA256SUMS file."""
    return {name: digest for digest, name in (line.split("  ", 1) for line in path.read_text().splitlines())}


def assert_sums_cover(extracted: Path) -> None:
    """The bundle's SHA256SUMS lists every other file of it, each with its digest."""
    inside = sums(extracted / "SHA256SUMS")
    files = {
        str(p.relative_to(extracted)) for p in extracted.rglob("*") if p.is_file() and not p.is_symlink()
    }
    assert set(inside) == files - {"SHA256SUMS"}
    for name, digest in inside.items():
        assert hashlib.sha256((extracted / name).read_bytes()).hexdigest() == digest, name


def emulation_problem(arch: str) -> str:
    """What keeps this machine from running `arch` programs, or "" when it runs them (it
    registers qemu-user with binfmt_misc if needed, as `make dist ARCH=arch` does:
    packaging/emulation.py)."""
    spec = importlib.util.spec_from_file_location("emulation", ROOT / "packaging" / "emulation.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.enable(arch))


def maps(pid: int) -> set[str]:
    """The file names of the shared objects mapped into process `pid` (under qemu-user: the
    guest's too, which qemu maps)."""
    with open(f"/proc/{pid}/maps") as lines:
        return {os.path.basename(line.split()[-1]) for line in lines if ".so" in line}


@dataclass
class NodeRoot:
    """Commands run inside an old Debian root, as on a node: without this machine's CA variables,
    so the program picks the node's bundle; `binds` seen inside, writes kept in `layer`."""

    root: Path
    binds: Sequence[Path]
    layer: Path

    def argv(self, *argv: str | Path) -> list[str]:
        unset = ["env", "-u", "SSL_CERT_FILE", "-u", "SSL_CERT_DIR"]
        return chrooted(self.root, [*unset, *argv], self.binds, writable=self.layer)

    def run(self, *argv: str | Path, timeout: float) -> str:
        """Its stdout; a failure is the test's, with what the command said."""
        done = subprocess.run(self.argv(*argv), capture_output=True, text=True, timeout=timeout)
        assert done.returncode == 0, f"{argv}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        return done.stdout
