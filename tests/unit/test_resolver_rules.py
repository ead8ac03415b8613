"""The resolver's rules over registries that answer from a table (its `Prober` protocol): order
whatever the arrival, early answers, single-flight, the cache's lifetimes, failover. No sockets:
the order of arrival is forced with events, time with a hand-moved clock.

The same rules against real HTTP registries: integration/test_resolver.py and
test_registry_faults.py."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

import pytest

from image_cri_shim import config, reference
from image_cri_shim.reference import Reference
from image_cri_shim.workers.lookup.decisions import Answer, Decision, Probe, outcome
from image_cri_shim.workers.lookup.plan import Planner
from image_cri_shim.workers.lookup.resolver import Resolver
from image_cri_shim.workers.pull.failures import Cause, Verdict
from tests.harness.clock import Clock

F, N, U, S = Answer.FOUND, Answer.NOT_FOUND, Answer.UNREACHABLE, Answer.SKIPPED
DOMAINS = ("a.test", "b.test", "c.test")  # in plan order
NGINX = reference.parse("nginx:1.27")
R = TypeVar("R")


class Table:
    """A registry that answers `answer`, optionally once `after` is set; records what it was asked."""

    def __init__(self, answer: Answer = N, backoff: float = 0.0) -> None:
        self.answer = answer
        self.backoff = backoff
        self.after: asyncio.Event | None = None
        self.answered = asyncio.Event()
        self.asked: list[str] = []
        self.cancelled = 0
        self.failed: list[tuple[str, bool]] = []

    async def holds(self, ref: Reference) -> Probe:
        self.asked.append(str(ref))
        try:
            if self.after is not None:
                await self.after.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.answered.set()
        return Probe(self.answer)

    def retry_in(self) -> float:
        return self.backoff

    def pull_failed(self, why: str, *, down: bool) -> None:
        self.failed.append((why, down))
        if down:
            self.backoff = 5.0  # as the real client backs off


def resolver(tables: dict[str, Table], cache: str = "", upstream: bool = True) -> tuple[Resolver, Clock]:
    lines = [f"  - {{address: 'http://{d}', priority: {300 - 100 * i}}}" for i, d in enumerate(DOMAINS)]
    cfg = config.parse("registries:\n" + "\n".join(lines) + "\n" + cache, "t.yaml")
    clock = Clock()
    return Resolver(Planner(cfg.registries), tables, cfg.cache, clock=clock, upstream=upstream), clock


def run(coroutine: Coroutine[Any, Any, R]) -> R:
    return asyncio.run(coroutine)


def target(decision: Decision) -> str | None:
    return decision.target.registry.domain if decision.target is not None else None


def three(*answers: Answer) -> dict[str, Table]:
    return {d: Table(a) for d, a in zip(DOMAINS, answers, strict=True)}


@pytest.mark.parametrize(
    ("answers", "expected", "degraded", "asked"),
    [
        ((F, F, F), "a.test", False, 1),
        ((N, F, F), "b.test", False, 2),
        ((U, N, F), "c.test", True, 3),
        ((S, F, N), "b.test", True, 2),
        ((N, N, N), None, False, 3),
    ],
)
def test_the_first_holder_in_plan_order_and_the_answers_up_to_it(
    answers: tuple[Answer, ...], expected: str | None, degraded: bool, asked: int
) -> None:
    async def go() -> Decision:
        return await resolver(three(*answers))[0].resolve(NGINX)

    decision = run(go())
    assert (target(decision), decision.degraded, len(decision.answers)) == (expected, degraded, asked)


def test_the_preferred_registry_wins_although_it_answers_last() -> None:
    async def go() -> tuple[Decision, list[str]]:
        tables = three(F, N, F)
        arrivals: list[str] = []
        for domain, table in tables.items():
            table.answered = _Recorded(arrivals, domain)
        tables["a.test"].after = tables["c.test"].answered  # a.test answers only after c.test
        return await resolver(tables)[0].resolve(NGINX), arrivals

    decision, arrivals = run(go())
    assert arrivals[-1] == "a.test", arrivals
    assert target(decision) == "a.test"


class _Recorded(asyncio.Event):
    """An `answered` event that also notes the order in which the registries answered."""

    def __init__(self, arrivals: list[str], name: str) -> None:
        super().__init__()
        self._arrivals, self._name = arrivals, name

    def set(self) -> None:
        self._arrivals.append(self._name)
        super().set()


def test_a_found_target_stops_waiting_for_the_candidates_after_it() -> None:
    async def go() -> tuple[Decision, dict[str, Table]]:
        tables = three(F, F, F)
        never = asyncio.Event()
        tables["b.test"].after = tables["c.test"].after = never
        decision = await resolver(tables)[0].resolve(NGINX)
        await asyncio.sleep(0)  # let the cancellations run
        return decision, tables

    decision, tables = run(go())
    assert target(decision) == "a.test" and len(decision.answers) == 1
    assert (tables["b.test"].cancelled, tables["c.test"].cancelled) == (1, 1)


def test_everyone_waits_for_every_answer_and_decides_the_same() -> None:
    async def go() -> Decision:
        return await resolver(three(N, F, U))[0].probe(NGINX, everyone=True)

    decision = run(go())
    assert target(decision) == "b.test" and not decision.degraded
    assert [p.answer for _, p in decision.answers] == [N, F, U]


def test_concurrent_lookups_share_one_probe_and_the_next_is_a_hit() -> None:
    async def go() -> tuple[list[Decision], Resolver, dict[str, Table]]:
        tables = three(N, F, N)
        gate = tables["b.test"].after = asyncio.Event()
        r, _ = resolver(tables)
        lookups = [asyncio.ensure_future(r.resolve(NGINX)) for _ in range(20)]
        await asyncio.sleep(0)
        gate.set()
        decisions = await asyncio.gather(*lookups)
        await r.resolve(NGINX)
        return decisions, r, tables

    decisions, r, tables = run(go())
    assert {target(d) for d in decisions} == {"b.test"}
    assert [len(t.asked) for t in tables.values()] == [1, 1, 1]
    assert (r.hits, r.misses) == (1, 20)


@pytest.mark.parametrize(
    ("answers", "backoff", "fresh_after", "cached_at"),
    [
        ((N, F, N), 0.0, 3600.0, 3599.0),  # imageCacheTTL
        ((N, N, N), 0.0, 30.0, 29.0),  # negativeCacheTTL
        ((U, F, N), 5.0, 5.0, 4.0),  # until the down registry is asked again
        ((U, N, N), 5.0, 5.0, 4.0),
        ((U, F, N), 600.0, 30.0, 29.0),  # never longer than negativeCacheTTL
    ],
)
def test_cached_decisions_live_as_long_as_expiry_says(
    answers: tuple[Answer, ...], backoff: float, fresh_after: float, cached_at: float
) -> None:
    async def go() -> list[int]:
        tables = three(*answers)
        tables["a.test"].backoff = backoff
        r, clock = resolver(tables, "cache: {imageCacheTTL: 1h, negativeCacheTTL: 30s}\n")
        asked = []
        start = clock.now
        for at in (0.0, cached_at, fresh_after):
            clock.now = start + at
            await r.resolve(NGINX)
            asked.append(len(tables["a.test"].asked))
        return asked

    assert run(go()) == [1, 1, 2]


def test_a_zero_cache_size_asks_every_time() -> None:
    async def go() -> int:
        tables = three(F, N, N)
        r, _ = resolver(tables, "cache: {imageCacheSize: 0}\n")
        for _ in range(3):
            await r.resolve(NGINX)
        return len(tables["a.test"].asked)

    assert run(go()) == 3


def test_failover_skips_what_was_tried_and_counts_the_failure() -> None:
    async def go() -> tuple[list[Decision], dict[str, Table]]:
        tables = three(F, F, N)
        r, _ = resolver(tables)
        first = await r.resolve(NGINX)
        assert first.target is not None
        down = Verdict(Cause.CONNECTION, "connection reset")
        second = await r.failover(NGINX, first.target, frozenset({"a.test"}), down)
        assert second.target is not None
        # a pull that failed through a.test after the failover takes the decision already made
        late = await r.failover(NGINX, first.target, frozenset({"a.test"}), down)
        missing = Verdict(Cause.NOT_FOUND, "blob missing")
        last = await r.failover(NGINX, second.target, frozenset({"a.test", "b.test"}), missing)
        return [first, second, late, last, await r.resolve(NGINX)], tables

    (first, second, late, last, cached), tables = run(go())
    assert [target(d) for d in (first, second, late, last)] == ["a.test", "b.test", "b.test", None]
    assert second.degraded, "made past a registry that went down: decided again soon"
    assert [(c.registry.domain, p.answer) for c, p in last.answers] == [("b.test", N), ("c.test", N)]
    assert [len(t.asked) for t in tables.values()] == [1, 2, 3], "a failed registry is not asked again"
    assert tables["a.test"].failed == [("connection reset", True)]
    assert tables["b.test"].failed == [("blob missing", False)]
    assert cached is last, "the decision after the failover is the cached one"


def test_forget_drops_only_a_decision_through_the_failed_candidate() -> None:
    async def go() -> list[int]:
        tables = three(N, F, N)
        r, _ = resolver(tables)
        decision = await r.resolve(NGINX)
        assert decision.target is not None
        other = decision.answers[0][0]  # a.test, which is not the target
        await r.forget(NGINX, other)
        await r.resolve(NGINX)
        counts = [len(tables["b.test"].asked)]
        await r.forget(NGINX, decision.target)
        await r.resolve(NGINX)
        return [*counts, len(tables["b.test"].asked)]

    assert run(go()) == [1, 2]


def test_a_decision_at_the_images_own_name_goes_as_asked_and_is_dropped_through_its_target() -> None:
    """The image's own registry (b.test) is configured and holds it: the pull goes as asked, and
    when it fails, forgetting through that target drops the decision as a failover would."""
    own = reference.parse("b.test/library/nginx:1.27")

    async def go() -> tuple[Decision, int]:
        tables = three(N, F, N)
        r, _ = resolver(tables)
        decision = await r.resolve(own)
        assert decision.target is not None
        await r.forget(own, decision.target)
        await r.resolve(own)
        return decision, len(tables["b.test"].asked)

    decision, asked = run(go())
    assert decision.target is not None and decision.target.reference == own and not decision.rewritten
    assert outcome(decision, (), upstream=True) == "unchanged"
    assert asked == 2, "decided afresh after the failed pull"
