"""The registry client against a real HTTP server: probes and auth flows.

Registries that misbehave (errors, throttling, silence, broken auth, huge bodies) are in
test_registry_faults.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from image_cri_shim import config, reference
from image_cri_shim.workers import registry as reg
from image_cri_shim.workers.decisions import Answer, Probe
from image_cri_shim.workers.registry import Platform, RegistryClient
from tests.harness.tinyregistry import TinyRegistry

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


def probe(client: RegistryClient, image: str) -> Probe:
    async def run() -> Probe:
        return await client.holds(reference.parse(image))

    return asyncio.run(run())


def run_probes(client: RegistryClient, *images: str) -> list[Probe]:
    async def run() -> list[Probe]:
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
