"""Freeze image-cri-shim and pack the offline bundle; `make dist` runs this after the wheel is built.

It runs in the freeze environment (build/freeze: the wheel from dist/ and the build tools, nothing
else), so the program bundles exactly the wheel's dependency closure and bundled.txt is read
from what PyInstaller really took in. It writes to dist/:

    image-cri-shim-<version>-linux-<arch>/         the bundle, unpacked
    image-cri-shim-<version>-linux-<arch>.tar.gz   the bundle: the one file to copy to a node
    SHA256SUMS                                     of the wheel, the sdist and the bundle
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
import zipfile
from importlib import metadata
from importlib.metadata import Distribution
from pathlib import Path
from typing import Any

import image_cri_shim

ROOT = Path(__file__).resolve().parent.parent
DIST = ROOT / "dist"
BUILD = ROOT / "build"
APP = "image-cri-shim"  # the program's folder in the bundle, and the program in it
MAPPED = ("supervisor", "workers", "syncer", "protos")  # linked into image_cri_shim/ (architecture.md)
GOARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
# docs/examples/ -> the bundle: install.sh installs config.example.yaml when a node has no config,
# and manifests/ is what `kubectl apply -f manifests/` applies once per cluster.
EXAMPLES = {
    "docs/examples/config.yaml": "config.example.yaml",
    "docs/examples/kubelet-config.yaml": "kubelet-config.yaml",
    "docs/examples/manifests": "manifests",
}

BOOTLOADER_LICENCE = "GPL-2.0-or-later WITH Bootloader-exception"
# The symbol versions that make a node's floor: glibc's, and libstdc++'s for C++ code.
FLOOR_PREFIXES = ("GLIBC", "GLIBCXX", "CXXABI")
# e_machine in the ELF header: every file of a bundle must be for the bundle's architecture.
ELF_MACHINES = {"x86_64": 62, "aarch64": 183}


def main() -> None:
    version = image_cri_shim.__version__
    machine = platform.machine()
    if machine not in GOARCH:
        sys.exit(f"build: no Go name for architecture {machine!r}: add it to GOARCH")
    name = f"image-cri-shim-{version}-linux-{GOARCH[machine]}"
    check_wheel(version)
    toolchain = toolchain_manifest()

    spec = ROOT / "packaging" / "image-cri-shim.spec"
    pyinstaller = [sys.executable, "-m", "PyInstaller", "--noconfirm", "--log-level=WARN"]
    paths = [f"--distpath={BUILD / 'app'}", f"--workpath={BUILD / 'pyinstaller'}"]
    # Not from the source tree: `python -m` puts the working directory first on the import path.
    subprocess.run([*pyinstaller, *paths, str(spec)], check=True, cwd=BUILD)
    collected = json.loads((BUILD / "pyinstaller" / "image-cri-shim" / "collected.json").read_text())
    stray = [src for src in collected if src.startswith(f"{ROOT}/") and not src.startswith(f"{BUILD}/")]
    if stray:
        sys.exit(f"build: PyInstaller took {stray[0]} from the source tree, not from the wheel")

    stage = DIST / name
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(BUILD / "app" / APP, stage / APP, symlinks=True)
    shutil.copy(ROOT / "packaging" / "install.sh", stage / "install.sh")
    shutil.copy(ROOT / "systemd" / "image-cri-shim.service", stage / "image-cri-shim.service")
    # The examples of docs/examples/ are the ones shipped: one copy, validated by
    # tests/integration/test_examples.py.
    for source, target in EXAMPLES.items():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, stage / target)
        else:
            shutil.copy(ROOT / source, stage / target)
    for path in stage.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)

    foreign = [f"{path.relative_to(stage)} ({kind})" for path, kind in elf_files(stage) if kind != machine]
    if foreign:
        sys.exit(f"build: not for {machine}, in a bundle for linux/{GOARCH[machine]}: {', '.join(foreign)}")
    floor = symbol_floor(stage / APP)
    glibc = floor.get("GLIBC", ("2.2", "", ""))[0]
    header = [
        f"# image-cri-shim {version} for linux/{GOARCH[machine]}: every package this bundle contains.",
        f"# Built on {build_system(toolchain)}; needs glibc >= {glibc} on the node.",
        f"# {floor_line(floor)}",
    ]
    rows = bundled(collected, toolchain)
    (stage / "bundled.txt").write_text("\n".join(header + table(rows)) + "\n")
    files = sorted(p for p in stage.rglob("*") if p.is_file() and not p.is_symlink())
    write_sums(stage / "SHA256SUMS", files, stage)

    tarball = DIST / f"{name}.tar.gz"
    with tarfile.open(tarball, "w:gz", compresslevel=6) as tar:
        tar.add(stage, arcname=name, filter=_owned_by_root)
    artifacts = sorted(p for p in DIST.iterdir() if p.is_file() and p.name != "SHA256SUMS")
    write_sums(DIST / "SHA256SUMS", artifacts, DIST)
    for path in [*artifacts, stage / APP / APP]:
        print(f"{path.relative_to(ROOT)}  {path.stat().st_size / 1e6:.1f} MB")
    print(f"{stage.relative_to(ROOT)}/  {sum(p.stat().st_size for p in files) / 1e6:.1f} MB unpacked")
    print(floor_line(floor))


def check_wheel(version: str) -> None:
    """The wheel holds the real files of the linked folders, byte for byte, not links."""
    wheel = DIST / f"image_cri_shim-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        entries = {info.filename: info for info in archive.infolist()}
        for folder in MAPPED:
            for source in sorted((ROOT / folder).iterdir()):
                if source.suffix not in (".py", ".pyi", ".proto"):
                    continue
                entry = entries.get(f"image_cri_shim/{folder}/{source.name}")
                if entry is None or stat.S_ISLNK(entry.external_attr >> 16):
                    sys.exit(f"build: {wheel.name} lacks the file image_cri_shim/{folder}/{source.name}")
                if archive.read(entry) != source.read_bytes():
                    sys.exit(
                        f"build: image_cri_shim/{folder}/{source.name} in {wheel.name} differs from {folder}/"
                    )


def toolchain_manifest() -> dict[str, Any]:
    """What packaging/toolchain.py built this interpreter from; only that interpreter freezes."""
    path = Path(sys.base_prefix) / "manifest.json"
    if not path.exists():
        sys.exit(f"build: {sys.base_prefix} is not packaging/toolchain.py's Python (make dist uses it)")
    manifest: dict[str, Any] = json.loads(path.read_text())
    return manifest


def elf_files(folder: Path) -> list[tuple[Path, str]]:
    """Every ELF file under `folder`, with the machine it is for ("x86_64", "aarch64", or the
    number of another one), read from its header."""
    found = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
        with open(path, "rb") as file:
            head = file.read(20)
        if head[:4] == b"\x7fELF":
            number = int.from_bytes(head[18:20], "little" if head[5] == 1 else "big")
            kind = next((name for name, value in ELF_MACHINES.items() if value == number), str(number))
            found.append((path, kind))
    return found


def symbol_floor(app: Path) -> dict[str, tuple[str, str, str]]:
    """For GLIBC, GLIBCXX and CXXABI: the newest version any ELF file of `app` needs, with the
    file (relative to `app`) and a symbol that needs it. Computed, never assumed."""
    newest: dict[str, tuple[tuple[int, ...], str, str]] = {}
    for path, _ in elf_files(app):
        dump = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=True)
        for prefix, number, symbol in needed_versions(dump.stdout):
            key = tuple(map(int, number.split(".")))
            if prefix not in newest or key > newest[prefix][0]:
                newest[prefix] = (key, str(path.relative_to(app)), symbol)
    return {p: (".".join(map(str, v)), f, s) for p, (v, f, s) in newest.items()}


def needed_versions(objdump: str) -> list[tuple[str, str, str]]:
    """(prefix, version, symbol) of each undefined symbol in `objdump -T` output: what the file
    needs from the node (the versions it defines itself are not needed from anyone)."""
    found = re.findall(r"\*UND\*\s+\S+\s+\(?(GLIBC|GLIBCXX|CXXABI)_([\d.]+)\)?\s+(\S+)", objdump)
    return [(prefix, version.rstrip("."), symbol) for prefix, version, symbol in found]


def floor_line(floor: dict[str, tuple[str, str, str]]) -> str:
    parts = [f"{p}_{floor[p][0]} ({floor[p][1]}: {floor[p][2]})" for p in FLOOR_PREFIXES if p in floor]
    return "newest symbol versions needed, from every ELF file: " + ", ".join(parts)


def bundled(collected: list[str], toolchain: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """(name, version, licence, origin) of every package a collected file comes from, and of
    every library the toolchain built (linked into CPython's modules when not a file of its own)."""
    owners: dict[str, Distribution] = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            owners[os.path.realpath(dist.locate_file(file))] = dist
    interpreter = os.path.realpath(sys.base_prefix) + os.sep
    rows = {("PyInstaller bootloader", metadata.version("pyinstaller"), BOOTLOADER_LICENCE, "pypi")}
    rows.update(
        (lib["name"], lib["version"], lib["licence"], f"built from Debian source {lib['source']}")
        for lib in toolchain["libraries"]
    )
    for source in filter(os.path.isabs, collected):
        real = os.path.realpath(source)
        if real in owners:
            dist = owners[real]
            if dist.metadata["Name"].lower() != "pyinstaller":  # its loader modules: the bootloader row
                rows.add((dist.metadata["Name"], dist.version, pypi_licence(dist), "pypi"))
        elif not real.startswith((interpreter, str(BUILD) + os.sep)):  # base_library.zip: the stdlib
            sys.exit(f"build: PyInstaller took {source} from the build machine, not from the toolchain")
    names = {normalized(row[0]) for row in rows}
    missing = [name for name in requirements() if normalized(name) not in names]
    if missing:
        sys.exit(f"build: the program does not take in {', '.join(missing)}, which pyproject.toml requires")
    return sorted(rows, key=lambda row: (row[3] != "pypi", row[0].lower()))


def requirements() -> list[str]:
    """The names of the packages the wheel requires (pyproject.toml's dependencies, no extras)."""
    listed = metadata.requires("image-cri-shim") or []
    return [re.split(r"[\s;<>=!~\[(]", line, maxsplit=1)[0] for line in listed if "extra ==" not in line]


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pypi_licence(dist: Distribution) -> str:
    meta = dist.metadata
    text = (meta.get("License-Expression") or meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 40:
        return text
    classifiers = [
        c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier") or () if c.startswith("License ::")
    ]
    return " / ".join(classifiers) or f"unknown: {meta['Name']}'s metadata names none"


def build_system(toolchain: dict[str, Any]) -> str:
    release = platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    return f"{release} with zig cc {toolchain['zig']} for {toolchain['target']}"


def table(rows: list[tuple[str, str, str, str]]) -> list[str]:
    rows = [("# name", "version", "licence", "from"), *rows]
    widths = [max(len(row[i]) for row in rows) + 2 for i in range(3)]
    return ["".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + row[3] for row in rows]


def write_sums(target: Path, files: list[Path], base: Path) -> None:
    lines = [f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(base)}" for p in files]
    target.write_text("\n".join(lines) + "\n")


def _owned_by_root(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


if __name__ == "__main__":
    main()
