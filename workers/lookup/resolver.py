"""Where to pull an image from: the plan (`plan.py`) executed against the registries, cached
(docs/behaviour.md, "How a registry is chosen").

`Resolver` probes the candidates concurrently but answers as if it had asked them in order,
caches the decision, and lets concurrent lookups of one image share one probe. It asks each
registry through a `Prober` (the HTTP client, `registry.RegistryClient`, in the worker); what the
answers mean is decided by the pure functions of `decisions`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from typing import Protocol

from cachetools import TLRUCache

from image_cri_shim import logs
from image_cri_shim.config import CacheConfig
from image_cri_shim.metrics import WORKER_OFF, Counter, WorkerMetrics
from image_cri_shim.reference import Reference
from image_cri_shim.workers.lookup.decisions import (
    Answer,
    Decision,
    Outcome,
    Probe,
    after_failure,
    choose,
    expiry,
    next_source,
    outcome,
    past,
    shown,
)
from image_cri_shim.workers.lookup.plan import Candidate, Planner
from image_cri_shim.workers.pull.failures import Verdict

log = logs.get("resolver")


class Prober(Protocol):
    """One registry, as the resolver asks it."""

    async def holds(self, ref: Reference) -> Probe:
        """Whether the registry holds `ref` (its path and tag or digest)."""

    def retry_in(self) -> float:
        """Seconds until the registry is asked again (0 when it is not backing off)."""

    def pull_failed(self, why: str, *, down: bool) -> None:
        """A pull through the registry failed for a cause of its own (`down`: connection-level)."""


class _Cache(TLRUCache[str, Decision]):
    """The decision cache, counting what it drops to make room (not what expires)."""

    def __init__(
        self,
        evictions: Counter,
        maxsize: int,
        ttu: Callable[[str, Decision, float], float],
        timer: Callable[[], float],
    ) -> None:
        super().__init__(maxsize=maxsize, ttu=ttu, timer=timer)
        self._evictions = evictions

    def popitem(self) -> tuple[str, Decision]:
        self._evictions.inc()
        return super().popitem()


class Resolver:
    """Decisions for PullImage: plan, probe, cache, single-flight."""

    def __init__(
        self,
        planner: Planner,
        clients: Mapping[str, Prober],
        cache: CacheConfig,
        clock: Callable[[], float] = time.monotonic,
        upstream: bool = True,
        metrics: WorkerMetrics = WORKER_OFF,
    ) -> None:
        self._plan = planner
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

    def _expiry(self, _key: str, decision: Decision, now: float) -> float:
        return expiry(decision, now, self._positive_ttl, self._negative_ttl, self._retry_in)

    def _retry_in(self, domain: str) -> float:
        return self.clients[domain].retry_in()

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
        return outcome(decision, self._plan.registries, self._upstream)

    def _count(self, decision: Decision) -> None:
        registry = decision.target.registry.domain if decision.target is not None else ""
        self._metrics.decisions.labels(self._outcome(decision), registry).inc()

    async def _decide(self, ref: Reference) -> Decision:
        started = time.monotonic()
        decision = await self.probe(ref)
        if self._cache is not None:
            self._cache[str(ref)] = decision
        elapsed = f"{(time.monotonic() - started) * 1000:.0f}ms"
        where = shown(decision, self._outcome(decision))
        log.info("rewrite decision", image=ref, **where, why=decision.reason(), took=elapsed)
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
            if current is not None and past(current, tried):
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
        decision = after_failure(failed, verdict, await self.probe(ref, skip=tried))
        if self._cache is not None:
            self._cache[str(ref)] = decision
        to = next_source(decision, self._outcome(decision), tried)
        log.info("pull failover", image=ref, **{"from": failed.reference}, to=to, why=verdict.why)
        return decision

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
        try:
            for candidate, task in zip(candidates, tasks, strict=True):
                answers.append((candidate, await task))
                if answers[-1][1].answer is Answer.FOUND and not everyone:
                    break
        finally:
            for task in tasks:
                task.cancel()
        return choose(ref, answers)
