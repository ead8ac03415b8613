"""The offline bundle of `make dist`: the frozen program behaves as the installed package does,
install.sh installs it (twice, then uninstalls it), and bundled.txt and SHA256SUMS tell the truth.

The bundle is built once per test run by `make dist` (one to two minutes; the first build on a
machine also builds the glibc 2.17 toolchain, see docs/install.md), or reused when dist/ already
holds one newer than every file it is built from.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
import zipfile
from collections.abc import Callable
from pathlib import Path

import pytest

from image_cri_shim import __version__
from image_cri_shim.config import load
from tests.harness import Containerd, ImageBuilder, RegistryFactory
from tests.harness.cri import CriClient
from tests.harness.dist import (
    DIST,
    MAPPED,
    NAME,
    ROOT,
    assert_manylinux2014,
    assert_sums_cover,
    glibc_floor,
    sums,
)
from tests.harness.processes import wait_for
from tests.harness.scrape import get, scrape, value
from tests.harness.service import Service, alive, base_config, title

# The first test waits for the build, which on a fresh machine includes the toolchain's.
pytestmark = pytest.mark.timeout(3600)


@pytest.fixture(scope="session")
def program(extracted: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """/usr/local/bin/image-cri-shim of a root that install.sh installed the bundle into."""
    root = tmp_path_factory.mktemp("root")
    install(extracted, "--prefix", str(root))
    return root / "usr/local/bin/image-cri-shim"


def install(bundle: Path, *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["sh", str(bundle / "install.sh"), *args], capture_output=True, text=True, timeout=120, check=False
    )
    assert (done.returncode == 0) == ok, (
        f"install.sh {args}: exit {done.returncode}\n{done.stdout}{done.stderr}"
    )
    return done


def snapshot(directory: Path) -> dict[str, tuple[int, int, float]]:
    """relative path -> (mode, size, mtime) of everything under `directory`."""
    found = {}
    for path in [directory, *directory.rglob("*")]:
        info = path.lstat()
        found[str(path.relative_to(directory))] = (info.st_mode, info.st_size, info.st_mtime)
    return found


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- the frozen program as a service ---------------------------------------------------------------------


def test_the_bundled_program_runs_the_service(
    program: Path,
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    service_factory: Callable[..., Service],
    short_dir: Path,
) -> None:
    installed = snapshot(program.parent.parent)
    temp = short_dir / "tmp"
    temp.mkdir()
    registry = registry_factory()
    image_factory(registry, "library/bundled", "1")
    started = time.monotonic()
    metrics = str(short_dir / "metrics.sock")
    service = service_factory(
        {**base_config(containerd, registry), "metricsAddress": metrics},
        env={"TMPDIR": str(temp)},
        program=[program],
    )
    print(f"bundled program: exec to READY=1 in {(time.monotonic() - started) * 1000:.0f} ms")

    # One process per role, each the program itself (no interpreter, no unpacking parent).
    assert title(service.process.pid) == "image-cri-shim: master"
    titles = ["image-cri-shim: syncer", "image-cri-shim: worker gen=1"]

    def titled() -> dict[int, str] | None:  # READY=1 waits for the worker, not for the syncer
        found = service.children()
        return found if sorted(found.values()) == titles else None

    children = wait_for(titled, 10, f"children titled {titles}")
    for pid in [service.process.pid, *children]:
        assert os.readlink(f"/proc/{pid}/exe") == str(program.resolve())

    with CriClient(service.socket) as client:
        client.pull("bundled:1")
        assert client.status("bundled:1") is not None
    # The metrics endpoint and prometheus-client, loaded only when configured, are in the bundle.
    assert get(metrics, "/healthz") == (200, "ok: worker gen=1 serving\n")
    samples = scrape(metrics)
    assert value(samples, "rewrite_decisions_total", result="rewritten", registry=registry.host) == 1
    with CriClient(containerd.socket) as direct:
        # pulled from the registry (the metric above says so), recorded under the caller's name
        assert direct.status("docker.io/library/bundled:1") is not None, "containerd has no such image"

    for args, expected in ((["--dry-run"], "containerd"), (["--resolve", "bundled:1"], registry.host)):
        done = subprocess.run(
            [str(program), "-f", str(service.config), *args], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0 and expected in done.stdout, done.stdout + done.stderr

    # Reloads: the unit's ExecReload= (the bundled program, this config), then a config edit.
    reload = (
        unit_line("ExecReload")
        .replace("/usr/local/bin/image-cri-shim", str(program))
        .replace("/etc/image-cri-shim/config.yaml", str(service.config))
    )
    said: list[str] = []
    ready = service.reload_and_wait(
        lambda: said.append(
            subprocess.run(
                ["/bin/sh", "-c", reload], check=True, timeout=90, capture_output=True, text=True
            ).stdout
        )
    )
    assert "serving gen=2" in ready["STATUS"], ready
    assert said[0].startswith("reloaded: worker gen=2 serving"), said
    ready = service.reload_and_wait(lambda: service.edit(lambda c: c.update(timeout="20m")))
    assert "serving gen=3" in ready["STATUS"], ready
    assert "image-cri-shim: worker gen=3" in service.children().values()

    children = service.children()
    service.process.signal(signal.SIGTERM)
    assert service.process.stop(timeout=30) == 0
    assert not any(alive(pid) for pid in children), "a child outlived the master"
    assert not service.socket.exists()
    assert snapshot(program.parent.parent) == installed, "the program wrote into its own installation"
    assert not list(temp.iterdir()), "the program wrote into the temp dir"
    # What the test itself put there: the config, the state dir, TMPDIR, and the harness's
    # notify socket and log (tests/harness/service.py).
    ours = {"config.yaml", "state", "tmp", "service.log", service.notify.path.name}
    unexpected = {p.name for p in short_dir.iterdir()} - ours
    assert not unexpected, f"written into HOME: {unexpected}"


def test_a_config_error_from_the_bundled_program_is_one_line(program: Path, tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("address: http://127.0.0.1:5000\ntimeout: soon\n")
    done = subprocess.run([program, "-f", path], capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert done.stderr.count("\n") == 1 and f"config {path}: timeout:" in done.stderr, done.stderr


def unit_line(key: str) -> str:
    """The value of `key=` in the systemd unit."""
    unit = (ROOT / "systemd" / "image-cri-shim.service").read_text()
    found = re.search(rf"^{key}=(.+)$", unit, re.MULTILINE)
    assert found is not None, f"no {key}= in the unit"
    return found.group(1)


@pytest.mark.parametrize("how", ["venv", "bundle"])
def test_start_and_worker_restart_beside_the_venv(
    how: str,
    program: Path,
    containerd: Containerd,
    registry_factory: RegistryFactory,
    service_factory: Callable[..., Service],
) -> None:
    command = [sys.executable, "-m", "image_cri_shim"] if how == "venv" else [program]
    started = time.monotonic()
    service = service_factory(base_config(containerd, registry_factory()), program=command)
    ready = time.monotonic() - started
    mark = service.notify.count()
    os.kill(service.child("image-cri-shim: worker gen=1"), signal.SIGKILL)
    killed = time.monotonic()

    def replaced() -> bool:
        return any(m.get("STATUS", "").startswith("serving gen=2") for m in service.notify.since(mark))

    wait_for(replaced, 10, "worker gen=2 to serve", interval=0.01)
    restart = time.monotonic() - killed
    print(
        f"{how}: exec to READY=1 {ready * 1000:.0f} ms, killed worker serving again {restart * 1000:.0f} ms"
    )
    assert ready < 5 and restart < 5  # bounds, not a benchmark: the numbers are in docs/install.md


# -- install.sh ------------------------------------------------------------------------------------------


def test_install_sh_is_shellcheck_clean() -> None:
    shellcheck = shutil.which("shellcheck")
    assert shellcheck is not None, "shellcheck is missing (Debian package shellcheck; make test installs it)"
    done = subprocess.run(
        [shellcheck, "--shell=sh", str(ROOT / "packaging" / "install.sh")], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stdout


def test_install_twice_keep_the_config_then_uninstall(extracted: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    first = install(extracted, "--prefix", str(root))
    assert f"image-cri-shim {__version__}\n" in first.stdout
    for step in (
        "systemctl daemon-reload && systemctl enable --now image-cri-shim",
        "imageServiceEndpoint: unix:///var/run/image-cri-shim.sock",
    ):
        assert step in first.stdout, first.stdout
    command = root / "usr/local/bin/image-cri-shim"
    unit = root / "etc/systemd/system/image-cri-shim.service"
    config = root / "etc/image-cri-shim/config.yaml"
    assert unit_line("ExecStart").startswith("/usr/local/bin/image-cri-shim ")
    assert os.readlink(command) == f"../lib/image-cri-shim/{__version__}/image-cri-shim"
    assert stat.S_IMODE(command.resolve().stat().st_mode) == 0o755
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644
    assert unit.read_bytes() == (ROOT / "systemd" / "image-cri-shim.service").read_bytes()
    assert stat.S_IMODE(config.stat().st_mode) == 0o600
    assert config.read_bytes() == (ROOT / "docs" / "examples" / "config.yaml").read_bytes()

    # Again: the same tree, and an operator's config is never touched.
    config.write_text("address: https://mine.example.com\n")
    config.chmod(0o640)
    before = snapshot(root)
    again = install(extracted, "--prefix", str(root))
    assert "kept the existing" in again.stdout
    after = snapshot(root)
    assert after[str(config.relative_to(root))] == before[str(config.relative_to(root))]
    assert {path: mode for path, (mode, _, _) in after.items()} == {p: m for p, (m, _, _) in before.items()}
    assert config.read_text() == "address: https://mine.example.com\n"

    # An upgrade keeps the version a running service may still use, and only that one.
    lib = root / "usr/local/lib/image-cri-shim"
    for old in ("0.0.1", "0.0.2"):
        shutil.copytree(lib / __version__, lib / old, symlinks=True)
    command.unlink()
    command.symlink_to("../lib/image-cri-shim/0.0.2/image-cri-shim")
    install(extracted, "--prefix", str(root))
    assert sorted(p.name for p in lib.iterdir()) == sorted(["0.0.2", __version__])

    done = install(extracted, "--prefix", str(root), "--uninstall")
    assert "kept" in done.stdout
    assert not command.exists() and not command.is_symlink()
    assert not lib.exists() and not unit.exists()
    assert config.read_text() == "address: https://mine.example.com\n"


def test_a_damaged_bundle_installs_nothing(extracted: Path, tmp_path: Path) -> None:
    damaged = tmp_path / "bundle"
    shutil.copytree(extracted, damaged, symlinks=True)
    with open(damaged / "image-cri-shim.service", "a") as unit:
        unit.write("# changed\n")
    done = install(damaged, "--prefix", str(tmp_path / "root"), ok=False)
    assert "image-cri-shim.service: FAILED" in done.stderr and "damaged" in done.stderr
    assert not (tmp_path / "root" / "usr").exists()


def test_install_sh_refuses_a_node_whose_glibc_grpc_cannot_use(extracted: Path, tmp_path: Path) -> None:
    """A node with a glibc that libpython accepts and grpc does not (the bundle's grpc made to
    need GLIBC_2.99): --version still works, which is why install.sh asks selfcheck instead."""
    node = tmp_path / "bundle"
    shutil.copytree(extracted, node, symlinks=True)
    (cygrpc,) = (node / "image-cri-shim/_internal/grpc/_cython").glob("cygrpc.*.so")
    data = cygrpc.read_bytes()
    assert data.count(b"GLIBC_2.17\0") == 1
    cygrpc.write_bytes(data.replace(b"GLIBC_2.17\0", b"GLIBC_2.99\0"))
    files = sorted(
        p for p in node.rglob("*") if p.is_file() and not p.is_symlink() and p.name != "SHA256SUMS"
    )
    (node / "SHA256SUMS").write_text("".join(f"{sha256(p)}  {p.relative_to(node)}\n" for p in files))
    program = node / "image-cri-shim/image-cri-shim"
    assert subprocess.run([program, "--version"], capture_output=True, timeout=30).returncode == 0

    done = install(node, "--prefix", str(tmp_path / "root"), ok=False)
    assert done.stderr.count("\n") == 1, done.stderr
    assert "this node cannot run image-cri-shim:" in done.stderr
    assert "libc.so.6: version `GLIBC_2.99' not found" in done.stderr, done.stderr
    assert not (tmp_path / "root" / "usr").exists()


def test_the_bundled_selfcheck_loads_what_the_service_loads(extracted: Path) -> None:
    program = extracted / "image-cri-shim/image-cri-shim"
    done = subprocess.run([program, "selfcheck"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and done.stdout.startswith("ok: "), done.stdout + done.stderr


# -- what dist/ holds ----------------------------------------------------------------------------------------


def test_sha256sums_match_the_artifacts(bundle: Path, extracted: Path) -> None:
    listed = sums(DIST / "SHA256SUMS")
    wheel = f"image_cri_shim-{__version__}-py3-none-any.whl"
    ours = {wheel, f"image_cri_shim-{__version__}.tar.gz", f"{NAME}.tar.gz"}
    # and the bundle of another architecture, when `make dist ARCH=...` built one too
    others = {
        name for name in listed if re.fullmatch(rf"image-cri-shim-{__version__}-linux-\w+\.tar\.gz", name)
    }
    assert set(listed) - others == ours - others and f"{NAME}.tar.gz" in listed, sorted(listed)
    for name, digest in listed.items():
        assert sha256(DIST / name) == digest, name

    assert_sums_cover(extracted)
    assert snapshot(extracted).keys() == snapshot(bundle).keys(), "the tarball holds what dist/ holds"
    assert stat.S_IMODE((extracted / "install.sh").stat().st_mode) == 0o755


def test_bundled_txt_lists_every_package_with_its_version_and_licence(extracted: Path) -> None:
    lines = (extracted / "bundled.txt").read_text().splitlines()
    rows = [re.split(r"\s{2,}", line) for line in lines if not line.startswith("#")]
    assert all(len(row) == 4 for row in rows), rows
    packages = {name.lower().replace("_", "-"): (version, licence) for name, version, licence, _ in rows}
    for version, licence in packages.values():
        assert version and licence and not licence.startswith("unknown"), (version, licence)
    assert packages["image-cri-shim"][0] == __version__
    with zipfile.ZipFile(DIST / f"image_cri_shim-{__version__}-py3-none-any.whl") as wheel:
        metadata = wheel.read(f"image_cri_shim-{__version__}.dist-info/METADATA").decode()
    required = re.findall(r"^Requires-Dist: ([A-Za-z0-9_.-]+)(?![^\n]*extra ==)", metadata, re.MULTILINE)
    assert "grpcio" in required
    for name in required:
        assert name.lower().replace("_", "-") in packages, f"{name} is bundled but not listed"
    for name in ("cpython", "pyinstaller bootloader", "openssl", "zlib", "bzip2", "xz (liblzma)", "libffi"):
        assert name in packages
    built = [row for row in rows if row[3].startswith("built from Debian source ")]
    assert len(built) == 6 and all(re.fullmatch(r"[0-9][\w.+~-]*", row[1]) for row in built), built

    # The glibc floor in the header, checked with readelf (build.py uses objdump).
    floor = glibc_floor(extracted)
    assert f"needs glibc >= {floor} on the node" in lines[1], (lines[1], floor)


def test_every_elf_file_needs_at_most_the_manylinux2014_floor(extracted: Path) -> None:
    """Each undefined symbol's version is at most glibc 2.17's, libstdc++ 3.4.19's and CXXABI 1.3.7's;
    and one without a version is defined by another file of the bundle, or bound at a version of
    the floor by the program itself: a function that a compile-only configure check found in new
    headers would otherwise bind to whatever the node's glibc has, or fail to load there."""
    assert_manylinux2014(extracted)


def test_the_wheel_holds_the_real_files_of_the_linked_folders(bundle: Path) -> None:
    with zipfile.ZipFile(DIST / f"image_cri_shim-{__version__}-py3-none-any.whl") as wheel:
        for folder in MAPPED:
            for source in (ROOT / folder).iterdir():
                if source.suffix in (".py", ".pyi", ".proto"):
                    member = wheel.getinfo(f"image_cri_shim/{folder}/{source.name}")
                    assert not stat.S_ISLNK(member.external_attr >> 16), member.filename
                    assert wheel.read(member) == source.read_bytes(), member.filename
        unit = "image-cri-shim.service"
        assert wheel.read(f"image_cri_shim/systemd/{unit}") == (ROOT / "systemd" / unit).read_bytes()


def test_the_bundle_ships_the_examples_of_the_docs(extracted: Path) -> None:
    """docs/examples/ is the one source: the bundle holds its files byte for byte (they are
    validated in tests/integration/test_examples.py), and the example config loads without a warning."""
    examples = ROOT / "docs" / "examples"
    shipped = {
        "config.example.yaml": examples / "config.yaml",
        "kubelet-config.yaml": examples / "kubelet-config.yaml",
        **{f"manifests/{p.name}": p for p in (examples / "manifests").iterdir()},
    }
    assert sorted(p.name for p in (extracted / "manifests").iterdir()) == sorted(
        p.name for p in (examples / "manifests").iterdir()
    )
    for name, source in shipped.items():
        assert (extracted / name).read_bytes() == source.read_bytes(), name
    config = load(str(extracted / "config.example.yaml"))
    assert not config.warnings and config.registries
