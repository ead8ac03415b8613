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
import sysconfig
import tarfile
import zipfile
from importlib import metadata
from importlib.metadata import Distribution
from pathlib import Path

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

# Licences of the system libraries PyInstaller takes in on Debian 11/12 and Ubuntu, by package:
# their copyright files are not all machine-readable, and some name the whole source package's.
DEBIAN_LICENCES = {
    "libssl3": "Apache-2.0",
    "libssl1.1": "OpenSSL",
    "libffi8": "MIT",
    "libffi7": "MIT",
    "zlib1g": "Zlib",
    "libuuid1": "BSD-3-Clause",
    "libbz2-1.0": "bzip2-1.0.6",
    "liblzma5": "public-domain",
    "libstdc++6": "GPL-3.0-or-later WITH GCC-exception-3.1",
    "libgcc-s1": "GPL-3.0-or-later WITH GCC-exception-3.1",
}
BOOTLOADER_LICENCE = "GPL-2.0-or-later WITH Bootloader-exception"


def main() -> None:
    version = image_cri_shim.__version__
    machine = platform.machine()
    if machine not in GOARCH:
        sys.exit(f"build: no Go name for architecture {machine!r}: add it to GOARCH")
    name = f"image-cri-shim-{version}-linux-{GOARCH[machine]}"
    check_wheel(version)

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
    # The examples of docs/examples/ are the ones shipped: one copy, validated by tests/test_examples.py.
    for source, target in EXAMPLES.items():
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, stage / target)
        else:
            shutil.copy(ROOT / source, stage / target)
    for path in stage.rglob("*"):
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() or os.access(path, os.X_OK) else 0o644)

    floor = glibc_floor(stage / APP)
    header = [
        f"# image-cri-shim {version} for linux/{GOARCH[machine]}: every package this bundle contains.",
        f"# Built on {build_system()}; needs glibc >= {floor} on the node.",
    ]
    (stage / "bundled.txt").write_text("\n".join(header + table(bundled(collected))) + "\n")
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
    print(f"glibc floor: {floor}")


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


def glibc_floor(app: Path) -> str:
    """The newest GLIBC_x.y symbol version any ELF file of the program needs."""
    needed = {(2, 2)}
    for path in app.rglob("*"):
        if path.is_file() and not path.is_symlink() and path.read_bytes()[:4] == b"\x7fELF":
            dump = subprocess.run(["objdump", "-T", str(path)], capture_output=True, text=True, check=True)
            needed.update((int(a), int(b)) for a, b in re.findall(r"\bGLIBC_(\d+)\.(\d+)", dump.stdout))
    return "{}.{}".format(*max(needed))


def bundled(collected: list[str]) -> list[tuple[str, str, str, str]]:
    """(name, version, licence, origin) of every package a collected file comes from."""
    owners: dict[str, Distribution] = {}
    for dist in metadata.distributions():
        for file in dist.files or ():
            owners[os.path.realpath(dist.locate_file(file))] = dist
    stdlib = os.path.realpath(sysconfig.get_path("stdlib")) + os.sep
    python = ("CPython", platform.python_version(), "PSF-2.0", "python")
    rows = {("PyInstaller bootloader", metadata.version("pyinstaller"), BOOTLOADER_LICENCE, "pypi"), python}
    for source in filter(os.path.isabs, collected):
        real = os.path.realpath(source)
        if real in owners:
            dist = owners[real]
            if dist.metadata["Name"].lower() != "pyinstaller":  # its loader modules: the bootloader row
                rows.add((dist.metadata["Name"], dist.version, pypi_licence(dist), "pypi"))
        elif real.startswith(stdlib) or os.path.basename(real).startswith("libpython"):
            rows.add(python)
        elif not real.startswith(str(BUILD) + os.sep):  # base_library.zip: the stdlib again
            rows.add(system_package(source))
    return sorted(rows, key=lambda row: (row[3] != "pypi", row[0].lower()))


def pypi_licence(dist: Distribution) -> str:
    meta = dist.metadata
    text = (meta.get("License-Expression") or meta.get("License") or "").strip()
    if text and "\n" not in text and len(text) <= 40:
        return text
    classifiers = [
        c.rsplit(" :: ", 1)[1] for c in meta.get_all("Classifier") or () if c.startswith("License ::")
    ]
    return " / ".join(classifiers) or f"unknown: {meta['Name']}'s metadata names none"


def system_package(path: str) -> tuple[str, str, str, str]:
    """The Debian package a system library comes from (another system: the file alone)."""
    if shutil.which("dpkg-query"):
        for candidate in dict.fromkeys([path, os.path.realpath(path)]):
            found = subprocess.run(["dpkg-query", "-S", candidate], capture_output=True, text=True)
            if found.returncode == 0:
                package = found.stdout.split(":", 1)[0]
                version = subprocess.run(
                    ["dpkg-query", "-W", "-f=${Version}", package], capture_output=True, text=True, check=True
                ).stdout
                licence = DEBIAN_LICENCES.get(package, f"unknown: see /usr/share/doc/{package}/copyright")
                return package, version, licence, "debian"
    return os.path.basename(path), "-", f"unknown: system library {path}", "system"


def build_system() -> str:
    release = platform.freedesktop_os_release().get("PRETTY_NAME", platform.platform())
    return f"{release}, glibc {platform.libc_ver()[1]}, Python {platform.python_version()}"


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
