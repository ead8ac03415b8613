"""`image-cri-shim --reload` (the unit's ExecReload=) and the reload line naming changed keys.

The command must tell the truth: exit 0 only once the new worker serves, exit 1 with the reason
when the file is invalid (and then nothing is asked of the service) or when the service refuses.
"""

from __future__ import annotations

import dataclasses
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from image_cri_shim.changes import changed_keys
from image_cri_shim.config import load, parse
from image_cri_shim.supervisor.control import control_path
from image_cri_shim.workers.serve.server import clients
from tests.harness import Containerd, RegistryFactory
from tests.harness.processes import wait_for
from tests.harness.service import Service, base_config


def reload_command(config: Path, timeout: float = 90) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "image_cri_shim", "-f", str(config), "--reload"],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_reload_waits_for_the_new_worker_and_prints_its_generation(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    mark = service.notify.count()
    done = reload_command(service.config)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("reloaded: worker gen=2 serving (took "), done.stdout
    # By the time the command returned, the master had said READY=1 for generation 2.
    ready = [m for m in service.notify.since(mark) if m.get("READY") == "1"]
    assert ready and "serving gen=2" in ready[-1]["STATUS"], ready
    assert "reload asked for on the control socket" in service.process.log_text()


def test_an_invalid_file_is_refused_before_the_service_is_asked(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    good = service.config.read_text()
    # Written in place (no rename): the file watch sees it too, so check what the command says
    # and that it asked nothing (no request logged by the master).
    service.config.write_text(good + "timeout: soon\n")
    done = reload_command(service.config)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.count("\n") == 1, done.stderr
    assert f"not reloading: config {service.config}: timeout:" in done.stderr
    assert "control socket" not in service.process.log_text()
    assert service.workers().get(1) is not None, "the running worker stays"


def test_a_config_the_service_refuses_fails_with_its_reason(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(
        {**base_config(containerd, registry_factory()), "configMap": {"enabled": False}}
    )
    # Valid as a file, but a worker cannot start with it: the CRI socket does not exist.
    service.edit(lambda c: c.update(cri=str(service.directory / "missing.sock")))
    done = reload_command(service.config)
    assert done.returncode == 1, done.stdout
    assert done.stderr.startswith("image-cri-shim: reload failed: "), done.stderr
    assert "exited with code 1 before serving" in done.stderr, done.stderr
    assert 1 in service.workers(), "the running worker stays"


def test_concurrent_reload_requests_each_get_an_answer(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    control = control_path(load(str(service.config)).shim)
    results: list[subprocess.CompletedProcess[str]] = []
    threads = [
        threading.Thread(target=lambda: results.append(reload_command(service.config))) for _ in range(3)
    ]
    # The master is held until all three requests wait on its control socket, so they arrive
    # together however slowly the three commands start on a busy machine.
    service.process.signal(signal.SIGSTOP)
    try:
        for thread in threads:
            thread.start()
        wait_for(lambda: (clients(control) or 0) >= 3, 60, "three --reload commands to connect")
    finally:
        service.process.signal(signal.SIGCONT)
    for thread in threads:
        thread.join(120)
    assert len(results) == 3
    assert all(r.returncode == 0 for r in results), [r.stderr for r in results]
    generations = {int(r.stdout.split("gen=")[1].split()[0]) for r in results}
    # Requests that arrive during a reload share the next one: at most two new generations.
    assert generations <= {2, 3} and generations, generations


def test_without_a_running_service_the_command_says_so(short_dir: Path) -> None:
    path = short_dir / "config.yaml"
    path.write_text(f"address: http://127.0.0.1:5000\nshim: {short_dir}/shim.sock\n")
    done = reload_command(path, timeout=30)
    assert done.returncode == 1
    assert "no running service for shim socket" in done.stderr and "Traceback" not in done.stderr


def test_the_reload_line_names_the_changed_keys(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    service = service_factory(base_config(containerd, registry_factory()))
    secret = "hunter2-reload-secret"
    service.reload_and_wait(
        lambda: service.edit(
            lambda c: c.update(
                timeout="20m",
                cache={"imageCacheSize": 7},
                registries=[{"address": "https://backup.example.com", "auth": f"puller:{secret}"}],
            )
        )
    )
    lines = [line for line in service.process.log_text().splitlines() if "starting a new worker" in line]
    assert lines, service.process.log_tail()
    assert 'changed="timeout,cache.imageCacheSize,registries[backup.example.com] added"' in lines[-1], lines
    assert secret not in service.process.log_text()


# -- the pure comparison --------------------------------------------------------------------------

BASE = """
address: https://registry.company.com
auth: admin:first-secret
registries:
  - {address: backup.company.com, auth: "u:p1", priority: 800}
  - {address: old.company.com}
"""


def test_changed_keys_names_keys_never_values() -> None:
    old = parse(BASE, "a.yaml")
    new = parse(
        BASE.replace("first-secret", "second-secret")
        .replace("priority: 800", "priority: 900")
        .replace(
            "  - {address: old.company.com}\n", "  - {address: new.company.com, insecureSkipVerify: true}\n"
        )
        + "debug: true\nconfigMap: {namespace: infra}\nmirrors: {docker.io: dockerhub}\n",
        "b.yaml",
    )
    keys = changed_keys(old, new)
    assert keys == [
        "debug",
        "configMap.namespace",
        "registries[backup.company.com].priority",
        "registries[new.company.com] added",
        "registries[old.company.com] removed",
        "registries[registry.company.com].auth",
        "registries[registry.company.com].mirrors",
    ], keys
    assert not any("secret" in k for k in keys)
    assert changed_keys(old, dataclasses.replace(old, path="elsewhere.yaml", warnings=("w",))) == []
