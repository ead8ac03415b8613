"""The resolver against real HTTP registries: the priority order, a registry that is down and
back, the reference a probe asks for under a mirrors rule, and an index without the node's platform.

The plan itself: unit/test_plan.py; the resolver's rules (order, single-flight, cache lifetimes,
failover) over registries that answer from a table, without sockets: unit/test_resolver_rules.py."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from image_cri_shim import config, reference
from image_cri_shim.workers.lookup.client import Platform, RegistryClient
from image_cri_shim.workers.lookup.decisions import Answer
from image_cri_shim.workers.lookup.plan import Planner
from image_cri_shim.workers.lookup.resolver import Resolver
from tests.harness.clock import Clock
from tests.harness.tinyregistry import MANIFEST, OCI_INDEX, TinyRegistry

AMD64 = Platform("linux", "amd64")


def load(text: str) -> config.Config:
    return config.parse(text, "test.yaml")


class Registries:
    """A few tiny registries and a resolver over them, in one event loop."""

    def __init__(
        self, count: int, priorities: list[int], cache: str = "", mirrors: list[str] | None = None
    ) -> None:
        self.servers = [TinyRegistry() for _ in range(count)]
        lines = ["registries:"]
        rules = mirrors or ["{}"] * count  # a YAML mapping per server; {} means no rules
        for server, priority, rule in zip(self.servers, priorities, rules, strict=True):
            lines.append(f"  - {{address: 'http://{server.host}', priority: {priority}, mirrors: {rule}}}")
        self.config = load("\n".join(lines) + "\n" + cache)
        self.clock = Clock()

    def resolver(self) -> tuple[Resolver, list[RegistryClient]]:
        clients = {r.domain: RegistryClient(r, AMD64, clock=self.clock) for r in self.config.registries}
        return Resolver(Planner(self.config.registries), clients, self.config.cache, clock=self.clock), list(
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


def test_a_down_registry_is_skipped_and_used_again_after_recovery(three: Registries) -> None:
    """A decision taken while a better candidate was down lives only until that one is asked again."""
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
            # The decision lives as long as the registry's backoff (5 s), not negativeCacheTTL (30 s).
            three.clock.now += 4
            assert (await resolver.resolve(ref)).target == first.target  # cached, still backing off
            three.clock.now += 1.5
            again = await resolver.resolve(ref)
            assert again.target is not None and again.target.registry.domain == high.host
            assert not again.degraded
        finally:
            for c in clients:
                await c.aclose()

    asyncio.run(run())


@pytest.fixture
def harbor_and_plain() -> Iterator[Registries]:
    """A Harbor-style registry (priority 900, rules for docker.io and quay.io) and one without rules."""
    registries = Registries(2, [900, 100], mirrors=["{docker.io: dockerhub, quay.io: quay}", "{}"])
    yield registries
    registries.stop()


def test_resolver_probes_the_computed_reference_and_backs_off_per_registry(
    harbor_and_plain: Registries,
) -> None:
    """Cache, single-flight, backoff and the platform check work the same for rewritten paths."""
    harbor, plain = harbor_and_plain.servers
    harbor.add_manifest("dockerhub/library/nginx", "1.27", MANIFEST)
    harbor.add_manifest("quay/org/app", "v1", MANIFEST)
    plain.add_manifest("library/redis", "7", MANIFEST)

    async def run() -> None:
        resolver, clients = harbor_and_plain.resolver()
        try:
            nginx = reference.parse("nginx:1.27")
            decisions = await asyncio.gather(*(resolver.resolve(nginx) for _ in range(10)))
            assert {str(d.target.reference) for d in decisions if d.target} == {
                f"{harbor.host}/dockerhub/library/nginx:1.27"
            }
            assert harbor.count(lambda m, p: p == "/v2/dockerhub/library/nginx/manifests/1.27") == 1
            app = await resolver.resolve(reference.parse("quay.io/org/app:v1"))
            assert app.target is not None and app.target.rule == "quay.io"
            redis = await resolver.resolve(reference.parse("redis:7"))
            assert redis.target is not None and str(redis.target.reference) == f"{plain.host}/library/redis:7"
            assert [p.answer for _, p in redis.answers] == [Answer.NOT_FOUND, Answer.FOUND]

            harbor.behaviour.status = 503
            down = await resolver.resolve(reference.parse("quay.io/org/other:v1"))
            assert [p.answer for _, p in down.answers] == [Answer.UNREACHABLE, Answer.NOT_FOUND]
            asked = harbor.count()
            skipped = await resolver.resolve(reference.parse("quay.io/org/third:v1"))
            assert [p.answer for _, p in skipped.answers] == [Answer.SKIPPED, Answer.NOT_FOUND]
            assert harbor.count() == asked, "during its backoff the registry is not contacted"
        finally:
            for client in clients:
                await client.aclose()

    asyncio.run(run())


def test_index_without_the_node_platform_does_not_win_under_a_prefix(harbor_and_plain: Registries) -> None:
    harbor, plain = harbor_and_plain.servers
    index = {"schemaVersion": 2, "manifests": [{"platform": {"os": "linux", "architecture": "s390x"}}]}
    harbor.add_manifest("dockerhub/library/nginx", "1", index, media_type=OCI_INDEX)
    plain.add_manifest("library/nginx", "1", MANIFEST)
    assert resolve_all(harbor_and_plain, "nginx:1") == [f"{plain.host}/library/nginx:1"]
