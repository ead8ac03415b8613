"""The rewrite plan (pure) and the resolver that executes it: order, concurrency, cache, single-flight."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from image_cri_shim import config, reference
from image_cri_shim.workers.registry import Answer, Platform, RegistryClient
from image_cri_shim.workers.resolver import Resolver, plan
from tests.harness.tinyregistry import TinyRegistry
from tests.test_registry import MANIFEST, Clock

AMD64 = Platform("linux", "amd64")


def load(text: str) -> config.Config:
    return config.parse(text, "test.yaml")


def test_plan_orders_by_priority_then_address_then_domain() -> None:
    cfg = load(
        """
address: http://offline.example.com
offlinePriority: 500
registries:
  - {address: b.example.com, priority: 500}
  - {address: a.example.com, priority: 500}
  - {address: top.example.com, priority: 900}
  - {address: low.example.com, priority: 10}
"""
    )
    candidates = plan(reference.parse("nginx:1.27"), cfg.registries)
    assert [str(c.reference) for c in candidates] == [
        "top.example.com/library/nginx:1.27",
        "offline.example.com/library/nginx:1.27",
        "a.example.com/library/nginx:1.27",
        "b.example.com/library/nginx:1.27",
        "low.example.com/library/nginx:1.27",
    ]


def test_plan_keeps_path_tag_and_digest() -> None:
    cfg = load("address: http://127.0.0.1:5000\n")
    digest = "sha256:" + "a" * 64
    (candidate,) = plan(reference.parse(f"quay.io/cilium/cilium:v1.15@{digest}"), cfg.registries)
    assert str(candidate.reference) == f"127.0.0.1:5000/cilium/cilium:v1.15@{digest}"
    assert candidate.reference.manifest_ref == digest


class Registries:
    """A few tiny registries and a resolver over them, in one event loop."""

    def __init__(self, count: int, priorities: list[int], cache: str = "") -> None:
        self.servers = [TinyRegistry() for _ in range(count)]
        lines = ["registries:"]
        for server, priority in zip(self.servers, priorities, strict=True):
            lines.append(f"  - {{address: 'http://{server.host}', priority: {priority}}}")
        self.config = load("\n".join(lines) + "\n" + cache)
        self.clock = Clock()

    def resolver(self) -> tuple[Resolver, list[RegistryClient]]:
        clients = {r.domain: RegistryClient(r, AMD64, clock=self.clock) for r in self.config.registries}
        return Resolver(self.config.registries, clients, self.config.cache, clock=self.clock), list(
            clients.values()
        )

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


@pytest.fixture
def three() -> Iterator[Registries]:
    registries = Registries(3, [300, 200, 100])
    yield registries
    registries.stop()


def resolve_all(r: Registries, *images: str) -> list[str | None]:
    async def run() -> list[str | None]:
        resolver, clients = r.resolver()
        try:
            out = []
            for image in images:
                decision = await resolver.resolve(reference.parse(image))
                out.append(str(decision.target.reference) if decision.target else None)
            return out
        finally:
            for c in clients:
                await c.aclose()

    return asyncio.run(run())


def test_highest_priority_holder_wins(three: Registries) -> None:
    _, mid, low = three.servers
    mid.add_manifest("library/nginx", "1.27", MANIFEST)
    low.add_manifest("library/nginx", "1.27", MANIFEST)
    low.add_manifest("team/app", "v1", MANIFEST)
    assert resolve_all(three, "nginx:1.27", "team/app:v1", "redis:7") == [
        f"{mid.host}/library/nginx:1.27",
        f"{low.host}/team/app:v1",
        None,
    ]


def test_concurrent_probes_still_answer_in_priority_order(three: Registries) -> None:
    high, _, low = three.servers
    high.add_manifest("library/nginx", "1.27", MANIFEST)
    high.behaviour.delay = 0.5  # the preferred registry answers last
    low.add_manifest("library/nginx", "1.27", MANIFEST)
    assert resolve_all(three, "nginx:1.27") == [f"{high.host}/library/nginx:1.27"]


def test_decisions_are_cached_and_lookups_share_one_probe(three: Registries) -> None:
    _, mid, _ = three.servers
    mid.add_manifest("library/nginx", "1.27", MANIFEST)
    mid.behaviour.delay = 0.3

    async def run() -> None:
        resolver, clients = three.resolver()
        try:
            ref = reference.parse("nginx:1.27")
            decisions = await asyncio.gather(*(resolver.resolve(ref) for _ in range(20)))
            assert {str(d.target.reference) for d in decisions if d.target} == {
                f"{mid.host}/library/nginx:1.27"
            }
            assert mid.count(lambda m, p: "manifests" in p) == 1
            await resolver.resolve(ref)
            assert mid.count(lambda m, p: "manifests" in p) == 1
            assert resolver.hits == 1
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(run())


def test_negative_decisions_expire_sooner() -> None:
    r = Registries(1, [100], cache="cache: {imageCacheTTL: 1h, negativeCacheTTL: 10s}\n")
    (server,) = r.servers

    async def run() -> None:
        resolver, clients = r.resolver()
        try:
            ref = reference.parse("nginx:1.27")
            assert (await resolver.resolve(ref)).target is None
            server.add_manifest("library/nginx", "1.27", MANIFEST)
            r.clock.now += 5
            assert (await resolver.resolve(ref)).target is None  # still cached
            r.clock.now += 6
            assert (await resolver.resolve(ref)).target is not None
            server.behaviour.manifests.clear()
            r.clock.now += 1800
            assert (await resolver.resolve(ref)).target is not None  # positive: an hour
        finally:
            for c in clients:
                await c.aclose()
            r.stop()

    asyncio.run(run())


def test_a_down_registry_is_skipped_and_used_again_after_recovery(three: Registries) -> None:
    """A decision taken while a better candidate was down lives only as long as a negative one."""
    high, mid, _ = three.servers
    for server in (high, mid):
        server.add_manifest("library/nginx", "1.27", MANIFEST)
    high.behaviour.status = 503

    async def run() -> None:
        resolver, clients = three.resolver()
        try:
            ref = reference.parse("nginx:1.27")
            first = await resolver.resolve(ref)
            assert first.target is not None and first.target.registry.domain == mid.host
            assert first.degraded
            assert [p.answer for _, p in first.answers] == [Answer.UNREACHABLE, Answer.FOUND]
            high.behaviour.status = None
            three.clock.now += three.config.cache.negative_cache_ttl + 10
            again = await resolver.resolve(ref)
            assert again.target is not None and again.target.registry.domain == high.host
            assert not again.degraded
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(run())


def test_zero_cache_size_disables_the_cache() -> None:
    r = Registries(1, [100], cache="cache: {imageCacheSize: 0}\n")
    (server,) = r.servers
    server.add_manifest("library/nginx", "1.27", MANIFEST)
    try:
        resolve_all(r, "nginx:1.27", "nginx:1.27")
        assert server.count(lambda m, p: "manifests" in p) == 2
    finally:
        r.stop()
