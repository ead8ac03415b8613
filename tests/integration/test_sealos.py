"""Config shapes that load under sealos' Go shim behave here as they did there, through
`--dry-run` and the running service."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from image_cri_shim.config import PASSTHROUGH
from tests.harness import Containerd, CriClientFactory, ImageBuilder, RegistryFactory, wait_for
from tests.harness.cli import run, write
from tests.harness.kubeapi import KubeApi
from tests.harness.service import Service, start_service

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def service_factory(short_dir: Path) -> Iterator[Callable[..., Service]]:
    started: list[Service] = []

    def start(config: dict[str, object], api: KubeApi | None = None) -> Service:
        service = start_service(short_dir, config, api=api)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop(timeout=20)
        print(service.process.describe(lines=60))


def test_priority_zero_means_the_default_in_dry_run_and_service(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
    service_factory: Callable[..., Service],
    short_dir: Path,
) -> None:
    zero, low = registry_factory(), registry_factory()
    for registry in (zero, low):
        image_factory(registry, "library/app", "v1")
    config: dict[str, object] = {
        "cri": containerd.address,
        "registries": [{"address": low.url, "priority": 100}, {"address": zero.url, "priority": 0}],
    }
    (short_dir / "dry").mkdir()
    done = run("-f", str(write(short_dir / "dry", config)), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert f"{zero.url}  priority 500" in done.stdout, done.stdout
    assert f"{low.url}  priority 100" in done.stdout

    service = service_factory({**config, "debug": True})
    client = cri_client(service.socket)
    client.pull("docker.io/library/app:v1")
    assert f"target={zero.host}/library/app:v1" in service.process.log_text(), (
        "priority 0 is 500, tried first"
    )
    client.remove("docker.io/library/app:v1")


def test_negative_cache_size_is_a_warning_and_no_cache(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    service_factory: Callable[..., Service],
    short_dir: Path,
) -> None:
    config: dict[str, object] = {
        "cri": containerd.address,
        "address": registry_factory().url,
        "cache": {"imageCacheSize": -10},
    }
    warning = "cache.imageCacheSize: -10 is negative: the decision cache is disabled"
    (short_dir / "dry").mkdir()
    done = run("-f", str(write(short_dir / "dry", config)), "--dry-run")
    assert done.returncode == 0, done.stderr
    assert warning in done.stdout + done.stderr
    service = service_factory(config)
    assert warning in service.process.log_text()
    assert service.generation() == 1


def test_node_file_with_only_shim_and_cri_takes_the_configmaps_registries(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    cri_client: CriClientFactory,
    service_factory: Callable[..., Service],
    short_dir: Path,
) -> None:
    registry = registry_factory()
    image_factory(registry, "library/synced", "v1")
    with KubeApi() as api:
        config: dict[str, object] = {"shim": str(short_dir / "shim.sock"), "cri": containerd.address}
        (short_dir / "dry").mkdir()
        kubeconfig = api.write_kubeconfig(short_dir / "kubeconfig")
        env = {"HOME": str(short_dir), "KUBECONFIG": str(kubeconfig)}
        done = run("-f", str(write(short_dir / "dry", config)), "--dry-run", env=env)
        assert done.returncode == 0, done.stderr
        assert PASSTHROUGH in done.stdout + done.stderr

        service = service_factory(config, api=api)
        ready = service.notify.since(0)[0]
        assert "registries: none (passthrough)" in ready["STATUS"], ready
        assert service.process.log_text().count(PASSTHROUGH) == 1, "said once, in one line"
        client = cri_client(service.socket)
        client.pull(f"{registry.host}/library/synced:v1")  # passthrough: pulled as asked
        client.remove(f"{registry.host}/library/synced:v1")

        api.apply_configmap("image-cri-shim", {"registries.yaml": yaml.safe_dump({"address": registry.url})})
        wait_for(
            lambda: registry.host in service.notify.text(), 20, "the ConfigMap's registry in STATUS=",
            detail=service.process.describe,
        )  # fmt: skip
        wait_for(
            lambda: "proc=worker gen=1 msg=drained" in service.process.log_text(), 30,
            "the passthrough worker to hand its clients over", detail=service.process.describe,
        )  # fmt: skip
        assert client.pull("docker.io/library/synced:v1").startswith("sha256:")
        assert f"target={registry.host}/library/synced:v1" in service.process.log_text()
        client.remove("docker.io/library/synced:v1")
