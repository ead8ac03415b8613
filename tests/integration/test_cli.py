"""The commands of docs/operations.md as an operator runs them: exit codes, one-line errors, no secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml

from image_cri_shim import __version__
from tests.harness import Containerd, ImageBuilder, RegistryFactory
from tests.harness.cli import run, write
from tests.harness.kubeapi import KubeApi
from tests.harness.registry import free_port


def test_version() -> None:
    script = Path(sys.executable).parent / "image-cri-shim"
    done = subprocess.run([str(script), "--version"], capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0
    assert done.stdout == f"image-cri-shim {__version__}\n"


def test_bad_config_is_one_line_naming_file_and_key(short_dir: Path) -> None:
    path = write(
        short_dir,
        {"registries": [{"address": "a.example.com"}, {"address": "b.example", "priority": "high"}]},
    )
    started = time.monotonic()
    done = run("-f", str(path))
    assert time.monotonic() - started < 5
    assert done.returncode != 0
    assert done.stderr == f'config {path}: registries[1].priority: expected an integer, got "high"\n'
    assert "Traceback" not in done.stderr


def test_missing_config_file(short_dir: Path) -> None:
    done = run("-f", str(short_dir / "absent.yaml"))
    assert done.returncode != 0
    assert len(done.stderr.splitlines()) == 1
    assert str(short_dir / "absent.yaml") in done.stderr


def test_missing_cri_socket_without_force(short_dir: Path) -> None:
    path = write(
        short_dir,
        {
            "shim": str(short_dir / "s.sock"),
            "cri": str(short_dir / "none.sock"),
            "address": "http://127.0.0.1:1",
        },
    )
    done = run("-f", str(path))
    assert done.returncode == 1
    missing = short_dir / "none.sock"
    assert done.stderr.splitlines() == [
        f"image-cri-shim: CRI socket {missing} does not exist (set force: true to wait for it)"
    ]


def test_unusable_socket_directory_is_one_line(containerd: Containerd, short_dir: Path) -> None:
    (short_dir / "file").write_text("")
    path = write(
        short_dir,
        {
            "shim": str(short_dir / "file" / "s.sock"),
            "cri": containerd.address,
            "address": "http://127.0.0.1:1",
        },
    )
    done = run("worker", "-f", str(path))
    assert done.returncode == 1
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert "cannot create socket directory" in done.stderr


def test_dry_run_summarizes_without_secrets(
    containerd: Containerd, registry_factory: RegistryFactory, short_dir: Path
) -> None:
    private = registry_factory(auth=True)
    assert private.password is not None
    down = f"http://127.0.0.1:{free_port()}"
    path = write(
        short_dir,
        {
            "cri": containerd.address,
            "address": private.url,
            "auth": private.auth,
            "registries": [{"address": down, "priority": 10}],
        },
    )
    done = run("-f", str(path), "--dry-run")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "valid" in out
    assert "containerd" in out
    assert f"{private.url}  priority 1000  user {private.username}  /v2/: ok" in out
    assert f"{down}  priority 10  anonymous  /v2/: unreachable" in out, "a registry probe failure is reported"
    assert private.password not in out + done.stderr
    assert private.password.split(":", 1)[1] not in out + done.stderr
    # The file holds a password: readable by others, that is said, naming the file and its mode.
    path.chmod(0o644)
    exposed = f"  warning: config {path} is mode 0644: it holds passwords and is readable by group and others"
    assert exposed in run("-f", str(path), "--dry-run").stdout
    path.chmod(0o600)
    assert "holds passwords" not in run("-f", str(path), "--dry-run").stdout


def test_dry_run_reports_the_configmap_and_what_applying_it_changes(
    containerd: Containerd, short_dir: Path
) -> None:
    api = KubeApi()
    api.start()
    try:
        env = {"HOME": str(short_dir), "KUBECONFIG": str(api.write_kubeconfig(short_dir / "kubeconfig"))}
        path = write(
            short_dir, {"cri": containerd.address, "address": "http://127.0.0.1:1", "timeout": "15m"}
        )
        done = run("-f", str(path), "--dry-run", env=env)
        assert done.returncode == 0, done.stderr
        assert "configmap    kube-system/image-cri-shim key registries.yaml via $KUBECONFIG" in done.stdout
        assert "not found: the local file is used as it is" in done.stdout

        secret = "configmap-secret-pw"
        api.apply_configmap(
            "image-cri-shim",
            {
                "registries.yaml": yaml.safe_dump(
                    {
                        "timeout": "20m",
                        "registries": [{"address": "https://hub.example.com", "auth": f"u:{secret}"}],
                    }
                )
            },
        )
        before = path.read_bytes()
        done = run("-f", str(path), "--dry-run", env=env)
        assert done.returncode == 0, done.stderr
        assert "applying it changes timeout, registries[hub.example.com] added" in done.stdout, done.stdout
        assert secret not in done.stdout + done.stderr
        assert path.read_bytes() == before, "a dry run writes nothing"

        api.apply_configmap("image-cri-shim", {"registries.yaml": "timeout: [\n"})
        done = run("-f", str(path), "--dry-run", env=env)
        assert "not applicable: " in done.stdout, done.stdout
    finally:
        api.close()
    done = run("-f", str(path), "--dry-run", env=env)
    assert "no cluster access; the local file is used as it is" in done.stdout, done.stdout
    assert done.returncode == 0, "a cluster that cannot be reached does not fail the dry run"


def test_dry_run_fails_when_the_runtime_does_not_answer(short_dir: Path) -> None:
    path = write(short_dir, {"cri": str(short_dir / "none.sock"), "address": "http://127.0.0.1:1"})
    done = run("-f", str(path), "--dry-run")
    assert done.returncode == 1
    assert "does not answer" in done.stderr


def test_dry_run_with_a_bad_config(short_dir: Path) -> None:
    path = write(short_dir, {"address": "ftp://x"})
    done = run("-f", str(path), "--dry-run")
    assert done.returncode == 1
    assert done.stderr.startswith(f"config {path}: address:")
    assert len(done.stderr.splitlines()) == 1


def test_resolve_shows_target_registry_and_user(
    registry_factory: RegistryFactory, image_factory: ImageBuilder, short_dir: Path
) -> None:
    private, public = registry_factory(auth=True), registry_factory()
    assert private.password is not None
    image_factory(private, "library/resolved", "1")
    path = write(
        short_dir,
        {
            "address": public.url,
            "registries": [{"address": private.url, "auth": private.auth, "priority": 10}],
        },
    )
    done = run("-f", str(path), "--resolve", "resolved:1")
    assert done.returncode == 0, done.stderr
    assert f"target    {private.host}/library/resolved:1" in done.stdout
    assert f"user      {private.username}" in done.stdout
    assert f"{public.host}/library/resolved:1  not found" in done.stdout
    assert private.password not in done.stdout

    unchanged = run("-f", str(path), "--resolve", "quay.io/nobody/nothing:1")
    assert unchanged.returncode == 0
    assert "unchanged" in unchanged.stdout
    image_id = run("-f", str(path), "--resolve", "sha256:" + "a" * 64)
    assert image_id.returncode == 0 and "image ID" in image_id.stdout


def test_no_traceback_for_a_config_that_is_a_directory(short_dir: Path) -> None:
    done = run("-f", str(short_dir))
    assert done.returncode != 0
    assert "Traceback" not in done.stderr
    assert len(done.stderr.splitlines()) == 1
    assert os.fspath(short_dir) in done.stderr


def test_help_and_errors_list_no_internal_subcommand() -> None:
    """`worker` and `syncer` are how the master starts its children, not for operators."""
    from image_cri_shim.cli import build_internal_parser, build_parser

    text = build_parser().format_help()
    assert "SUPPRESS" not in text
    commands = text.split("commands:", 1)[1].splitlines()
    listed = [line.split()[0] for line in commands if line.startswith("    ") and line[4] != " "]
    assert listed == ["selfcheck"], text
    done = run("bogus")
    assert done.returncode == 2 and "selfcheck" in done.stderr
    assert "worker" not in done.stderr and "syncer" not in done.stderr, done.stderr
    assert build_internal_parser().parse_args(["worker", "--generation", "3"]).generation == 3
