"""Where to pull an image from: the plan (`plan.py`) executed against the registries, cached.

`Resolver` probes the candidates concurrently but answers as if it had asked them in order,
caches the decision, and lets concurrent lookups of one image share one probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from cachetools import TLRUCache

from image_cri_shim import logs
from image_cri_shim.config import CacheConfig, Registry
from image_cri_shim.metrics import OFF
from image_cri_shim.reference import Reference
from image_cri_shim.workers.failures import Cause, Verdict
from image_cri_shim.workers.plan import Candidate, Decision, Outcome, Planner, outcome
from image_cri_shim.workers.registry import Answer, Probe, RegistryClient

log = logs.get("resolver")


class _Cache(TLRUCache[str, Decision]):
    """The decision cache, counting what it drops to make room (not what expires)."""

    def __init__(self, evictions: Any, maxsize: int, ttu: Any, timer: Callable[[], float]) -> None:
        super().__init__(maxsize=maxsize, ttu=ttu, timer=timer)
        self._evictions = evictions

    def popitem(self) -> tuple[str, Decision]:
        self._evictions.inc()
        return super().popitem()


class Resolver:
    """Decisions for PullImage: plan, probe, cache, single-flight."""

    def __init__(
        self,
        registries: Sequence[Registry],
        clients: Mapping[str, RegistryClient],
        cache: CacheConfig,
        clock: Callable[[], float] = time.monotonic,
        upstream: bool = True,
        metrics: Any = OFF,
    ) -> None:
        self._plan = Planner(registries)
        self._upstream = upstream  # config `upstream`: only for saying what happens next
        self.clients = clients
        self._positive_ttl = cache.image_cache_ttl
        self._negative_ttl = cache.negative_cache_ttl
        self._metrics = metrics
        self._cache: TLRUCache[str, Decision] | None = None
        if cache.image_cache_size > 0:
            self._cache = _Cache(metrics.cache_evictions, cache.image_cache_size, self._expiry, clock)
        self._inflight: dict[str, asyncio.Future[Decision]] = {}
        self._failovers: dict[tuple[str, frozenset[str]], asyncio.Future[Decision]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def registries(self) -> tuple[Registry, ...]:
        return self._plan.registries

    def _expiry(self, _key: str, decision: Decision, now: float) -> float:
        if decision.target is not None and not decision.degraded:
            return now + self._positive_ttl
        if decision.degraded:
            # made without a registry that was down: decide again once it is asked again, so
            # traffic returns to it when it recovers, not a whole negativeCacheTTL later
            waits = [
                self.clients[c.registry.domain].retry_in()
                for c, probe in decision.answers
                if probe.answer in (Answer.UNREACHABLE, Answer.SKIPPED, Answer.THROTTLED)
            ]
            return now + min([self._negative_ttl, *waits])
        return now + self._negative_ttl

    def cache_size(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    async def resolve(self, ref: Reference) -> Decision:
        key = str(ref)
        if self._cache is not None:
            decision = self._cache.get(key)
            if decision is not None:
                self.hits += 1
                self._metrics.cache_hits.inc()
                self._count(decision)
                return decision
        self.misses += 1
        self._metrics.cache_misses.inc()
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._decide(ref))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        # shield: a caller that gives up must not cancel the probe the others wait for.
        decision = await asyncio.shield(pending)
        self._count(decision)
        return decision

    def _outcome(self, decision: Decision) -> Outcome:
        return outcome(decision, self.registries, self._upstream)

    def _count(self, decision: Decision) -> None:
        registry = decision.target.registry.domain if decision.target is not None else ""
        self._metrics.decisions.labels(self._outcome(decision), registry).inc()

    async def _decide(self, ref: Reference) -> Decision:
        started = time.monotonic()
        decision = await self.probe(ref)
        if self._cache is not None:
            self._cache[str(ref)] = decision
        elapsed = f"{(time.monotonic() - started) * 1000:.0f}ms"
        fate = self._outcome(decision)
        if fate != "rewritten" or decision.target is None:
            target = "refused (upstream: false)" if fate == "refused" else "unchanged"
            log.info("rewrite decision", image=ref, target=target, why=decision.reason(), took=elapsed)
        else:
            log.info(
                "rewrite decision",
                image=ref,
                target=decision.target.reference,
                registry=decision.target.registry.domain,
                why=decision.reason(),
                took=elapsed,
            )
        return decision

    async def forget(self, ref: Reference, failed: Candidate) -> None:
        """Drop the cached decision for `ref` if it still goes through `failed` (a pull through
        it failed for a cause no other registry could fix: decide afresh next time)."""
        if self._cache is None:
            return
        current = self._cache.get(str(ref))
        if current is not None and current.target == failed:
            self._cache.pop(str(ref), None)

    async def failover(
        self, ref: Reference, failed: Candidate, tried: frozenset[str], verdict: Verdict
    ) -> Decision:
        """The decision after a pull through `failed` failed (`tried`: the registries pulled from
        so far, `failed`'s included): the next candidate that holds the image, or none.

        The decision through `failed` is dropped at once. Pulls that fail through the same
        target together share one failover (one log line, one count); a pull that fails after
        another one already failed over takes that decision.
        """
        key = str(ref)
        if self._cache is not None:
            current = self._cache.get(key)
            if current is not None and _past(current, tried):
                return current
            self._cache.pop(key, None)
        flight = (key, tried)
        pending = self._failovers.get(flight)
        if pending is None:
            pending = asyncio.ensure_future(self._fail_over(ref, failed, tried, verdict))
            self._failovers[flight] = pending
            pending.add_done_callback(lambda _: self._failovers.pop(flight, None))
        return await asyncio.shield(pending)

    async def _fail_over(
        self, ref: Reference, failed: Candidate, tried: frozenset[str], verdict: Verdict
    ) -> Decision:
        client = self.clients[failed.registry.domain]
        client.pull_failed(verdict.why, down=verdict.registry_down)
        self._metrics.failovers.labels(failed.registry.domain, verdict.cause.value).inc()
        probed = await self.probe(ref, skip=tried)
        pulled = (failed, Probe(_answer(verdict), f"pull failed: {verdict.why}"))
        decision = Decision(
            ref, probed.target, (pulled, *probed.answers), probed.degraded or verdict.registry_down
        )
        if self._cache is not None:
            self._cache[str(ref)] = decision
        to = self._next(decision, tried)
        log.info("pull failover", image=ref, **{"from": failed.reference}, to=to, why=verdict.why)
        return decision

    def _next(self, decision: Decision, tried: frozenset[str]) -> object:
        """Where a pull goes after a failover, for the log line."""
        if decision.target is not None:
            return decision.target.reference
        if self._outcome(decision) == "refused":
            return "none (upstream: false)"
        if decision.source.domain in tried:
            return "none (every candidate failed)"
        return f"{decision.source} (unchanged)"

    async def probe(
        self, ref: Reference, *, everyone: bool = False, skip: frozenset[str] = frozenset()
    ) -> Decision:
        """Ask the candidates (concurrently) and take the first in order that holds the image.

        `everyone` waits for the answers after the target too (`--resolve` shows them all);
        the decision is the same. Registries whose domain is in `skip` are not asked.
        """
        candidates = [c for c in self._plan(ref) if c.registry.domain not in skip]
        tasks = [
            asyncio.ensure_future(self.clients[c.registry.domain].holds(c.reference)) for c in candidates
        ]
        answers: list[tuple[Candidate, Probe]] = []
        target: Candidate | None = None
        degraded = False
        try:
            for candidate, task in zip(candidates, tasks, strict=True):
                probe = await task
                answers.append((candidate, probe))
                if target is not None:
                    continue
                if probe.answer is Answer.FOUND:
                    target = candidate
                    if not everyone:
                        break
                elif probe.answer in (Answer.UNREACHABLE, Answer.SKIPPED, Answer.THROTTLED):
                    degraded = True
        finally:
            for task in tasks:
                task.cancel()
        return Decision(ref, target, tuple(answers), degraded)


def _answer(verdict: Verdict) -> Answer:
    """A failed pull as a probe answer, for the decision made after it."""
    if verdict.registry_down:
        return Answer.UNREACHABLE
    return Answer.DENIED if verdict.cause is Cause.DENIED else Answer.NOT_FOUND


def _past(decision: Decision, tried: frozenset[str]) -> bool:
    """Whether `decision` was made after every pull in `tried` failed: it points elsewhere."""
    return decision.target is None or decision.target.registry.domain not in tried
