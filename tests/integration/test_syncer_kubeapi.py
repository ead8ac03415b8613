"""The stand-in API server speaks the protocol the unchanged official client expects.

If these pass, what the syncer tests show against the stand-in holds for the client's side of
the conversation: list, get (404 Status), watch events, 410 Gone, bookmarks, 401/403, restart.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes import watch as k8s_watch

from tests.harness.kubeapi import KubeApi

NS, NAME = "kube-system", "image-cri-shim"


def core_for(api: KubeApi, tmp_path: Path, token: str | None = None) -> Any:
    path = api.write_kubeconfig(tmp_path / f"kubeconfig-{token}", token=token)
    client = k8s_config.new_client_from_config(config_file=str(path), persist_config=False)  # type: ignore[no-untyped-call]
    return k8s.CoreV1Api(client)


def watch(core: Any, **kwargs: Any) -> Iterator[dict[str, Any]]:
    """The official client's own watch helper over list_namespaced_config_map."""
    stream: Iterator[dict[str, Any]] = k8s_watch.Watch().stream(  # type: ignore[no-untyped-call]
        core.list_namespaced_config_map, NS, **kwargs
    )
    return stream


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with KubeApi() as server:
        yield server


def test_discovery_get_and_list(api: KubeApi, tmp_path: Path) -> None:
    core = core_for(api, tmp_path)
    assert k8s.VersionApi(core.api_client).get_code().git_version == "v1.33.0-standin"
    assert "v1" in k8s.CoreApi(core.api_client).get_api_versions().versions
    with pytest.raises(k8s.ApiException) as missing:
        core.read_namespaced_config_map(NAME, NS)
    assert missing.value.status == 404
    assert '"reason": "NotFound"' in (missing.value.body or "")
    version = api.apply_configmap(NAME, {"registries.yaml": "debug: true\n"})
    api.apply_configmap("other", {"x": "y"})
    got = core.read_namespaced_config_map(NAME, NS)
    assert got.metadata.resource_version == version
    assert got.data == {"registries.yaml": "debug: true\n"}
    listed = core.list_namespaced_config_map(NS, field_selector=f"metadata.name={NAME}")
    assert [item.metadata.name for item in listed.items] == [NAME]
    assert int(listed.metadata.resource_version) > int(version)
    assert len(core.list_namespaced_config_map(NS).items) == 2
    assert core.list_namespaced_config_map("default").items == []
    assert api.requests["get"] == 2 and api.requests["list"] == 3 and api.requests["discovery"] == 2


def test_watch_events_bookmarks_and_timeout(tmp_path: Path) -> None:
    with KubeApi(bookmark_interval=0.2) as api:
        core = core_for(api, tmp_path)
        listed = core.list_namespaced_config_map(NS, field_selector=f"metadata.name={NAME}")
        seen: list[tuple[str, str]] = []

        def changes() -> None:
            time.sleep(0.3)
            api.apply_configmap(NAME, {"k": "1"})
            api.apply_configmap("other", {"k": "1"})  # filtered out by the field selector
            api.apply_configmap(NAME, {"k": "2"})
            api.delete_configmap(NAME)

        threading.Thread(target=changes, daemon=True).start()
        started = time.monotonic()
        for event in watch(
            core,
            field_selector=f"metadata.name={NAME}",
            resource_version=listed.metadata.resource_version,
            allow_watch_bookmarks=True,
            timeout_seconds=2,
        ):
            seen.append((event["type"], event["raw_object"]["metadata"]["resourceVersion"]))
        elapsed = time.monotonic() - started
    kinds = [kind for kind, _ in seen]
    assert [k for k in kinds if k != "BOOKMARK"] == ["ADDED", "MODIFIED", "DELETED"]
    assert "BOOKMARK" in kinds
    assert 1.8 < elapsed < 5, "the watch ends at timeoutSeconds"
    versions = [int(v) for _, v in seen]
    assert versions == sorted(versions)


def test_watch_from_a_compacted_version_is_410(api: KubeApi, tmp_path: Path) -> None:
    core = core_for(api, tmp_path)
    old = api.apply_configmap(NAME, {"k": "1"})
    api.apply_configmap(NAME, {"k": "2"})
    api.compact()
    with pytest.raises(k8s.ApiException) as gone:
        for _ in watch(core, resource_version=old, timeout_seconds=5):
            pass
    assert gone.value.status == 410
    assert api.expired_sent == 1


def test_token_check_401_and_403(tmp_path: Path) -> None:
    with KubeApi(tokens={"good": "allowed", "node": "forbidden"}) as api:
        for token, status in (("wrong", 401), (None, 401), ("node", 403)):
            with pytest.raises(k8s.ApiException) as denied:
                core_for(api, tmp_path, token).list_namespaced_config_map(NS)
            assert denied.value.status == status
        assert core_for(api, tmp_path, "good").list_namespaced_config_map(NS).items == []


def test_restart_cuts_streams_and_keeps_state(api: KubeApi, tmp_path: Path) -> None:
    core = core_for(api, tmp_path)
    version = api.apply_configmap(NAME, {"k": "1"})
    port = api.port
    errors: list[BaseException] = []

    def follow() -> None:
        try:
            for _ in watch(core, resource_version=version, timeout_seconds=30):
                pass
        except Exception as err:
            errors.append(err)

    thread = threading.Thread(target=follow, daemon=True)
    thread.start()
    deadline = time.monotonic() + 5
    while api.active_watches == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert api.active_watches == 1
    api.stop()
    thread.join(5)
    assert not thread.is_alive() and errors, "a stopped server breaks the watch mid-stream"
    api.start()
    assert api.port == port
    assert core.read_namespaced_config_map(NAME, NS).metadata.resource_version == version
