"""packaging/build.py's checks that need no build: the architecture of each ELF file, read from
its header, and the names of the packages pyproject.toml requires (each must be frozen in)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[2]


def load(name: str) -> ModuleType:
    """A script of packaging/ as a module (packaging/ is no package: its name is PyPI's)."""
    spec = importlib.util.spec_from_file_location(f"packaging_{name}", ROOT / "packaging" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def elf_header(machine: int) -> bytes:
    """The first 20 bytes of a little-endian 64-bit ELF shared object for `machine`."""
    return b"\x7fELF\x02\x01\x01" + bytes(9) + (3).to_bytes(2, "little") + machine.to_bytes(2, "little")


def test_elf_files_are_named_by_the_machine_their_header_says(tmp_path: Path) -> None:
    build = load("build")
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "x.so").write_bytes(elf_header(62) + bytes(100))
    (tmp_path / "a.so").write_bytes(elf_header(183) + bytes(100))
    (tmp_path / "riscv.so").write_bytes(elf_header(243) + bytes(100))
    (tmp_path / "script.py").write_text("print('not ELF')\n")
    (tmp_path / "link.so").symlink_to(tmp_path / "a.so")
    found = {str(path.relative_to(tmp_path)): kind for path, kind in build.elf_files(tmp_path)}
    assert found == {"a.so": "aarch64", "lib/x.so": "x86_64", "riscv.so": "243"}


def test_the_required_packages_are_pyproject_tomls_dependencies() -> None:
    build = load("build")
    names = [build.normalized(name) for name in build.requirements()]
    assert "grpcio" in names and "prometheus-client" in names and "pytest" not in names, names
    assert build.normalized("Prometheus_Client") == "prometheus-client"
