"""The registry client against real HTTP servers: auth flows, platforms, health and backoff."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest

from image_cri_shim import config, reference
from image_cri_shim.workers import registry as reg
from image_cri_shim.workers.registry import Answer, Platform, RegistryClient
from tests.harness.tinyregistry import OCI_INDEX, TinyRegistry

AMD64 = Platform("linux", "amd64")
MANIFEST = {"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json"}


def registry_of(address: str, auth: str = "", extra: str = "") -> config.Registry:
    text = f"address: {address}\nauth: '{auth}'\n{extra}"
    return config.parse(text, "test.yaml").registries[0]


class Clock:
    """Monotonic time the test moves by hand, so backoff periods need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def tiny() -> Iterator[TinyRegistry]:
    server = TinyRegistry()
    server.add_manifest("library/nginx", "1.27", MANIFEST)
    yield server
    server.stop()


def probe(client: RegistryClient, image: str) -> reg.Probe:
    async def run() -> reg.Probe:
        return await client.holds(reference.parse(image))

    return asyncio.run(run())


def run_probes(client: RegistryClient, *images: str) -> list[reg.Probe]:
    async def run() -> list[reg.Probe]:
        try:
            return [await client.holds(reference.parse(i)) for i in images]
        finally:
            await client.aclose()

    return asyncio.run(run())


def test_found_and_not_found(tiny: TinyRegistry) -> None:
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    found, missing, other_tag = run_probes(client, "nginx:1.27", "redis:7", "nginx:1.26")
    assert found.answer is Answer.FOUND
    assert missing.answer is Answer.NOT_FOUND
    assert other_tag.answer is Answer.NOT_FOUND
    assert ("HEAD", "/v2/library/nginx/manifests/1.27") in [(m, p) for m, p, _ in tiny.requests]


def test_bearer_token_is_fetched_once_and_reused(tiny: TinyRegistry) -> None:
    tiny.behaviour.bearer = True
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    results = run_probes(client, "nginx:1.27", "nginx:1.27", "nginx:1.27")
    assert [r.answer for r in results] == [Answer.FOUND] * 3
    assert tiny.tokens_issued == 1
    # the first probe met the challenge; the later ones sent the token straight away
    assert tiny.count(lambda m, p: p.startswith("/v2/library/nginx")) == 4


def test_bearer_token_renewed_after_expiry(tiny: TinyRegistry) -> None:
    tiny.behaviour.bearer = True
    tiny.behaviour.token_lifetime = 60
    clock = Clock()
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64, clock=clock)

    async def run() -> None:
        try:
            ref = reference.parse("nginx:1.27")
            assert (await client.holds(ref)).answer is Answer.FOUND
            clock.now += 30
            assert (await client.holds(ref)).answer is Answer.FOUND
            assert tiny.tokens_issued == 1
            clock.now += 60
            assert (await client.holds(ref)).answer is Answer.FOUND
            assert tiny.tokens_issued == 2
        finally:
            await client.aclose()

    asyncio.run(run())


def test_basic_auth(tiny: TinyRegistry) -> None:
    tiny.behaviour.basic = ("admin", "pa:ss")
    good = RegistryClient(registry_of(f"http://{tiny.host}", "admin:pa:ss"), AMD64)
    bad = RegistryClient(registry_of(f"http://{tiny.host}", "admin:wrong"), AMD64)
    anonymous = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    assert [p.answer for p in run_probes(good, "nginx:1.27", "nginx:1.27")] == [Answer.FOUND] * 2
    assert run_probes(bad, "nginx:1.27")[0].answer is Answer.DENIED
    assert run_probes(anonymous, "nginx:1.27")[0].answer is Answer.DENIED


def test_token_endpoint_with_invalid_json_is_denied_not_a_crash(tiny: TinyRegistry) -> None:
    tiny.behaviour.bearer = True
    tiny.behaviour.token_body = b"{not json"
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    assert run_probes(client, "nginx:1.27")[0].answer is Answer.DENIED


def test_index_must_list_the_node_platform(tiny: TinyRegistry) -> None:
    def index(*platforms: dict[str, str]) -> dict[str, object]:
        return {
            "schemaVersion": 2,
            "manifests": [{"digest": "sha256:" + "0" * 64, "platform": p} for p in platforms],
        }

    tiny.add_manifest("library/multi", "1", index({"os": "linux", "architecture": "amd64"}), OCI_INDEX)
    tiny.add_manifest("library/s390x", "1", index({"os": "linux", "architecture": "s390x"}), OCI_INDEX)
    tiny.add_manifest(
        "library/arm", "1", index({"os": "linux", "architecture": "arm", "variant": "v6"}), OCI_INDEX
    )
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64)
    multi, foreign = run_probes(client, "multi:1", "s390x:1")
    assert multi.answer is Answer.FOUND
    assert foreign.answer is Answer.NO_PLATFORM
    arm7 = RegistryClient(registry_of(f"http://{tiny.host}"), Platform("linux", "arm", "v7"))
    assert run_probes(arm7, "arm:1")[0].answer is Answer.NO_PLATFORM


def test_server_errors_back_off_and_recover(tiny: TinyRegistry) -> None:
    clock = Clock()
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64, clock=clock)

    async def run() -> None:
        ref = reference.parse("nginx:1.27")
        try:
            tiny.behaviour.status = 503
            assert (await client.holds(ref)).answer is Answer.UNREACHABLE
            asked = tiny.count()
            assert (await client.holds(ref)).answer is Answer.SKIPPED
            assert tiny.count() == asked, "a registry in backoff is not contacted"
            tiny.behaviour.status = None
            clock.now += reg.BACKOFF_FIRST
            assert (await client.holds(ref)).answer is Answer.FOUND
        finally:
            await client.aclose()

    asyncio.run(run())


def test_backoff_grows_while_the_registry_stays_down(tiny: TinyRegistry) -> None:
    clock = Clock()
    tiny.behaviour.status = 500
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64, clock=clock)

    async def run() -> None:
        ref = reference.parse("nginx:1.27")
        try:
            assert (await client.holds(ref)).answer is Answer.UNREACHABLE
            clock.now += reg.BACKOFF_FIRST
            assert (await client.holds(ref)).answer is Answer.UNREACHABLE
            clock.now += reg.BACKOFF_FIRST  # the second period is twice as long
            assert (await client.holds(ref)).answer is Answer.SKIPPED
            clock.now += reg.BACKOFF_FIRST
            assert (await client.holds(ref)).answer is Answer.UNREACHABLE
        finally:
            await client.aclose()

    asyncio.run(run())


def test_429_is_skipped_for_retry_after(tiny: TinyRegistry) -> None:
    clock = Clock()
    tiny.behaviour.status = 429
    tiny.behaviour.retry_after = "120"
    client = RegistryClient(registry_of(f"http://{tiny.host}"), AMD64, clock=clock)

    async def run() -> None:
        ref = reference.parse("nginx:1.27")
        try:
            throttled = await client.holds(ref)
            assert throttled.answer is Answer.THROTTLED
            assert "120" in throttled.detail
            clock.now += 100
            assert (await client.holds(ref)).answer is Answer.SKIPPED
            tiny.behaviour.status = None
            clock.now += 21
            assert (await client.holds(ref)).answer is Answer.FOUND
        finally:
            await client.aclose()

    asyncio.run(run())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def test_refused_connection_is_unreachable_at_once() -> None:
    client = RegistryClient(registry_of(f"http://127.0.0.1:{free_port()}"), AMD64)
    started = time.monotonic()
    result = run_probes(client, "nginx:1.27")[0]
    assert result.answer is Answer.UNREACHABLE
    assert time.monotonic() - started < 2


def test_silent_registry_costs_its_timeout_once() -> None:
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(16)
    try:
        address = f"http://127.0.0.1:{listener.getsockname()[1]}"
        client = RegistryClient(registry_of(address), AMD64)
        started = time.monotonic()
        first, second = run_probes(client, "nginx:1.27", "nginx:1.27")
        elapsed = time.monotonic() - started
        assert first.answer is Answer.UNREACHABLE
        assert second.answer is Answer.SKIPPED
        assert elapsed < reg.PROBE_TIMEOUT + 2
    finally:
        listener.close()


def test_parse_challenge() -> None:
    scheme, params = reg.parse_challenge(
        'Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull"'
    )
    assert scheme == "bearer"
    assert params == {
        "realm": "https://auth.example.com/token",
        "service": "registry.example.com",
        "scope": "repository:a/b:pull",
    }
    assert reg.parse_challenge('Basic realm="x"') == ("basic", {"realm": "x"})
