"""`metricsAddress`: Prometheus text and /healthz from the master, for all three processes.

Scraped over real HTTP (TCP and a unix socket) and parsed with prometheus-client's own text
parser, while the service pulls through a real containerd, follows the stand-in API server,
and swaps workers.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness import Containerd, ImageBuilder, RegistryFactory
from tests.harness.cri import CriClient
from tests.harness.kubeapi import KubeApi
from tests.harness.processes import wait_for
from tests.harness.registry import free_port
from tests.harness.scrape import get, scrape, value
from tests.harness.service import Service, base_config, start_service


@pytest.fixture
def api() -> Iterator[KubeApi]:
    server = KubeApi()
    server.start()
    yield server
    server.close()


def test_metrics_survive_worker_swaps_and_parse_during_a_reload(
    containerd: Containerd,
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    api: KubeApi,
    short_dir: Path,
) -> None:
    registry = registry_factory()
    image_factory.push(registry, "library/metered", "v1")
    address = f"127.0.0.1:{free_port()}"
    api.apply_configmap("image-cri-shim", {"registries.yaml": "debug: false\n"})
    service = start_service(
        short_dir, {**base_config(containerd, registry), "metricsAddress": address}, api=api
    )
    try:
        # The first sync rewrites the file in the syncer's form with the same settings: no reload.
        wait_for(
            lambda: value(scrape(address), "configmap_syncs_total", result="written") == 1 or None,
            15,
            "the syncer's first write",
        )
        wait_for(
            lambda: "the same settings" in service.process.log_text(), 5, "the master to read that write"
        )
        assert value(scrape(address), "reloads_total", trigger="file", result="ok") is None
        first = service.generation()
        assert first == 1
        with CriClient(service.socket) as client:
            client.pull("metered:v1")
            for _ in range(5):
                assert client.status("metered:v1") is not None
        samples = scrape(address)
        domain = registry.host
        assert value(samples, "rewrite_decisions_total", result="rewritten", registry=domain) == 1
        assert value(samples, "cache_misses_total") == 1
        assert value(samples, "registry_probe_duration_seconds_count", registry=domain, answer="found") == 1
        assert value(samples, "registry_up", registry=domain) == 1
        pulls = value(
            samples, "cri_call_duration_seconds_count", method="runtime.v1.ImageService/PullImage", code="OK"
        )
        assert pulls == 1
        statuses = value(
            samples,
            "cri_call_duration_seconds_count",
            method="runtime.v1.ImageService/ImageStatus",
            code="OK",
        )
        assert statuses is not None and statuses >= 5
        assert value(samples, "worker_generation") == first
        file_reloads = value(samples, "reloads_total", trigger="file", result="ok") or 0
        assert value(samples, "configmap_syncs_total", result="written") == 1
        assert value(samples, "configmap_watch_up") == 1
        synced = value(samples, "configmap_last_sync_timestamp_seconds")
        assert synced is not None and abs(synced - time.time()) < 60
        assert any(name == "image_cri_shim_build_info" for name, _ in samples)

        # Scrape as fast as possible through two reloads and the old workers' exits.
        failures: list[str] = []
        scrapes = 0
        stop = threading.Event()

        def scraper() -> None:
            nonlocal scrapes
            while not stop.is_set():
                try:
                    scrape(address)
                    scrapes += 1
                except Exception as err:  # any failure is what this test looks for
                    failures.append(repr(err))

        thread = threading.Thread(target=scraper, daemon=True)
        thread.start()
        retired = service.workers()[first]
        try:
            service.reload_and_wait(lambda: service.process.signal(signal.SIGHUP))
            service.reload_and_wait(lambda: service.edit(lambda c: c.update(timeout="20m")))
            wait_for(lambda: list(service.workers()) == [first + 2] or None, 20, "the old workers to exit")
        finally:
            stop.set()
            thread.join(10)
        assert not failures, failures[:3]
        assert scrapes > 10, scrapes

        after = scrape(address)
        assert value(after, "worker_generation") == first + 2
        assert value(after, "reloads_total", trigger="signal", result="ok") == 1
        assert value(after, "reloads_total", trigger="file", result="ok") == file_reloads + 1
        assert value(after, "config_last_reload_successful") == 1
        # The first worker's counts are still there, folded into the retired totals.
        assert value(after, "rewrite_decisions_total", result="rewritten", registry=domain) == 1
        assert (
            value(
                after,
                "cri_call_duration_seconds_count",
                method="runtime.v1.ImageService/PullImage",
                code="OK",
            )
            == 1
        )
        files = os.listdir(service.directory / ".shim.sock.metrics")
        assert "counter_retired.db" in files, files
        assert not any(f.endswith(f"_{retired}.db") for f in files), files

        status, text = get(address, "/healthz")
        assert (status, text) == (200, f"ok: worker gen={first + 2} serving\n")
        assert get(address, "/nothing")[0] == 404
    finally:
        service.stop()


def test_a_refused_reload_and_an_unusable_address_are_visible_but_harmless(
    containerd: Containerd, registry_factory: RegistryFactory, service_factory: Callable[..., Service]
) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        taken = f"127.0.0.1:{busy.getsockname()[1]}"
        service = service_factory({**base_config(containerd, registry_factory()), "metricsAddress": taken})
        log = service.process.log_text()
        assert "metrics endpoint unavailable, the image service is not affected" in log, log
        assert "Traceback" not in log
        with CriClient(service.socket) as client:
            assert client.version().runtime_name == "containerd"

    # Moved to a unix socket by a reload; then an invalid edit is counted as refused.
    path = str(service.directory / "metrics.sock")
    service.reload_and_wait(lambda: service.edit(lambda c: c.update(metricsAddress=path)))
    assert os.stat(path).st_mode & 0o777 == 0o660
    assert get(path, "/healthz") == (200, "ok: worker gen=2 serving\n")
    service.reload_and_wait(lambda: service.edit(lambda c: c.update(timeout="soon")))
    samples = scrape(path)
    assert value(samples, "reloads_total", trigger="file", result="invalid") == 1
    assert value(samples, "config_last_reload_successful") == 0

    # Switched off by a reload: the endpoint goes away.
    def switch_off(config: dict[str, object]) -> None:
        config.pop("metricsAddress")
        config["timeout"] = "20m"

    service.reload_and_wait(lambda: service.edit(switch_off))
    assert not os.path.exists(path)
