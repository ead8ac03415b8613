"""Where to pull an image from: a pure plan, then the probes that execute it, cached.

`plan` is a pure function from a reference and the configured registries to the ordered
list of candidates (which reference each registry would hold it under). `Resolver` executes
a plan with the registry clients: it probes the candidates concurrently but answers as if it
had asked them in order, caches the decision, and lets concurrent lookups of one image share
one probe.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from cachetools import TLRUCache

from image_cri_shim import logs
from image_cri_shim.config import CacheConfig, Registry
from image_cri_shim.reference import Reference, ReferenceError
from image_cri_shim.workers.registry import Answer, Probe, RegistryClient

log = logs.get("resolver")


@dataclass(frozen=True, slots=True)
class Candidate:
    registry: Registry
    reference: Reference  # where this registry would hold the image


def plan(ref: Reference, registries: Sequence[Registry]) -> tuple[Candidate, ...]:
    """The candidates for `ref`, in the order they are tried.

    `registries` comes from the config already ordered (priority, then the `address` entry,
    then domain), so the plan keeps that order. A registry whose domain cannot carry this
    image name (e.g. too long a result) is no candidate for it.
    """
    candidates = []
    for registry in registries:
        try:
            candidates.append(Candidate(registry, ref.with_domain(registry.domain)))
        except ReferenceError:
            continue
    return tuple(candidates)


def registry_for(domain: str, registries: Sequence[Registry]) -> Registry | None:
    for registry in registries:
        if registry.domain == domain:
            return registry
    return None


@dataclass(frozen=True, slots=True)
class Decision:
    source: Reference
    target: Candidate | None  # None: no candidate holds the image
    answers: tuple[tuple[Candidate, Probe], ...]  # what each candidate that was asked answered
    degraded: bool  # a candidate before the target could not be asked: decide again soon

    @property
    def rewritten(self) -> bool:
        return self.target is not None and self.target.reference != self.source

    def reason(self) -> str:
        """Why, in a few words: what each candidate answered."""
        return "; ".join(f"{c.reference}: {p}" for c, p in self.answers) or "no candidates"


class Resolver:
    """Decisions for PullImage: plan, probe, cache, single-flight."""

    def __init__(
        self,
        registries: Sequence[Registry],
        clients: Mapping[str, RegistryClient],
        cache: CacheConfig,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._registries = tuple(registries)
        self.clients = clients
        self._positive_ttl = cache.image_cache_ttl
        self._negative_ttl = cache.negative_cache_ttl
        self._cache: TLRUCache[str, Decision] | None = None
        if cache.image_cache_size > 0:
            self._cache = TLRUCache(maxsize=cache.image_cache_size, ttu=self._expiry, timer=clock)
        self._inflight: dict[str, asyncio.Future[Decision]] = {}
        self.hits = 0
        self.misses = 0

    @property
    def registries(self) -> tuple[Registry, ...]:
        return self._registries

    def _expiry(self, _key: str, decision: Decision, now: float) -> float:
        good = decision.target is not None and not decision.degraded
        return now + (self._positive_ttl if good else self._negative_ttl)

    def cache_size(self) -> int:
        return len(self._cache) if self._cache is not None else 0

    async def resolve(self, ref: Reference) -> Decision:
        key = str(ref)
        if self._cache is not None:
            decision = self._cache.get(key)
            if decision is not None:
                self.hits += 1
                return decision
        self.misses += 1
        pending = self._inflight.get(key)
        if pending is None:
            pending = asyncio.ensure_future(self._decide(ref))
            self._inflight[key] = pending
            pending.add_done_callback(lambda _: self._inflight.pop(key, None))
        # shield: a caller that gives up must not cancel the probe the others wait for.
        return await asyncio.shield(pending)

    async def _decide(self, ref: Reference) -> Decision:
        started = time.monotonic()
        decision = await self.probe(ref)
        if self._cache is not None:
            self._cache[str(ref)] = decision
        elapsed = f"{(time.monotonic() - started) * 1000:.0f}ms"
        if decision.target is None:
            log.info("rewrite decision", image=ref, target="unchanged", why=decision.reason(), took=elapsed)
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

    async def probe(self, ref: Reference) -> Decision:
        """Ask the candidates (concurrently) and take the first in order that holds the image."""
        candidates = plan(ref, self._registries)
        tasks = [
            asyncio.ensure_future(self.clients[c.registry.domain].holds(c.reference)) for c in candidates
        ]
        answers: list[tuple[Candidate, Probe]] = []
        degraded = False
        try:
            for candidate, task in zip(candidates, tasks, strict=True):
                probe = await task
                answers.append((candidate, probe))
                if probe.answer is Answer.FOUND:
                    return Decision(ref, candidate, tuple(answers), degraded)
                if probe.answer in (Answer.UNREACHABLE, Answer.SKIPPED, Answer.THROTTLED):
                    degraded = True
        finally:
            for task in tasks:
                task.cancel()
        return Decision(ref, None, tuple(answers), degraded)
