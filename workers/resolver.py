"""Where to pull an image from: a pure plan, then the probes that execute it, cached.

`plan` is a pure function from a reference and the configured registries to the ordered
list of candidates (which reference each registry would hold it under, after its `mirrors`
routing rules, CONTRACT §9). `Resolver` executes
a plan with the registry clients: it probes the candidates concurrently but answers as if it
had asked them in order, caches the decision, and lets concurrent lookups of one image share
one probe.
"""

from __future__ import annotations

import asyncio
import functools
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
    rule: str | None = None  # the `mirrors` prefix that put it there; None: the registry has none


@dataclass(frozen=True, slots=True)
class Excluded:
    """A registry that is no candidate for an image, and why (for `--resolve`)."""

    registry: Registry
    why: str


def match(name: str, mirrors: tuple[tuple[str, str], ...]) -> tuple[str, str] | None:
    """The longest rule whose prefix is `name` or ends at a `/` of it.

    Whole components only: `docker.io/library` must not claim `docker.io/library2/x`.
    `mirrors` is longest first (config order), so the first match is the longest.
    """
    for prefix, path in mirrors:
        if name.startswith(prefix) and (len(name) == len(prefix) or name[len(prefix)] == "/"):
            return prefix, path
    return None


def locate(ref: Reference, registry: Registry, name: str) -> Candidate | None:
    """Where `registry` would hold `ref` (`name` is `ref.name`), or None if it is no candidate.

    Raises ReferenceError when the computed name would be invalid (too long).
    """
    if not registry.mirrors:
        return Candidate(registry, ref.with_domain(registry.domain))
    rule = match(name, registry.mirrors)
    if rule is None:
        return None
    prefix, path = rule
    rest = name[len(prefix) + 1 :]
    moved = f"{path}/{rest}" if path and rest else path or rest
    if not moved:
        raise ReferenceError("the rule leaves no repository path")
    target = Reference(ref.domain, moved, ref.tag, ref.digest).with_domain(registry.domain)
    return Candidate(registry, target, prefix)


def plan(ref: Reference, registries: Sequence[Registry]) -> tuple[Candidate, ...]:
    """The candidates for `ref`, in the order they are tried.

    `registries` comes from the config already ordered (priority, then the `address` entry,
    then domain), so the plan keeps that order. A registry with `mirrors` is a candidate only
    for images one of its rules matches; one whose computed name would be invalid is none.
    """
    name = ref.name
    candidates = []
    for registry in registries:
        try:
            candidate = locate(ref, registry, name)
        except ReferenceError:
            continue
        if candidate is not None:
            candidates.append(candidate)
    return tuple(candidates)


def explain(ref: Reference, registries: Sequence[Registry]) -> tuple[Candidate | Excluded, ...]:
    """`plan` with the registries left out kept in place, each with the reason."""
    name = ref.name
    out: list[Candidate | Excluded] = []
    for registry in registries:
        try:
            candidate = locate(ref, registry, name)
        except ReferenceError as err:
            out.append(Excluded(registry, f"the rewritten name would be invalid ({err})"))
            continue
        out.append(candidate or Excluded(registry, f"no mirrors entry matches {name}"))
    return tuple(out)


class Planner:
    """`plan` for one config, remembered per image.

    A worker's registries never change (a reload starts a new worker), and kubelet asks
    ImageStatus for the same few names all day, so each image is planned once.
    """

    def __init__(self, registries: Sequence[Registry], size: int = 4096) -> None:
        self.registries = tuple(registries)
        self._cached = functools.lru_cache(maxsize=size)(self._plan)

    def _plan(self, ref: Reference) -> tuple[Candidate, ...]:
        return plan(ref, self.registries)

    def __call__(self, ref: Reference) -> tuple[Candidate, ...]:
        return self._cached(ref)


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
        return (
            "; ".join(f"{c.reference}: {p}" for c, p in self.answers)
            or "no candidates (no mirrors entry matches)"
        )


def refused(decision: Decision, registries: Sequence[Registry], upstream: bool) -> bool:
    """Whether `upstream: false` forbids this pull: no candidate holds the image, and its own
    registry is not a configured one (pulling from a configured registry is never "upstream")."""
    return (
        decision.target is None and not upstream and registry_for(decision.source.domain, registries) is None
    )


def refusal(decision: Decision) -> str:
    """Why a pull is refused under `upstream: false`, for `kubectl describe pod`: each candidate
    with the name it was asked for and its answer (the answers carry no secret)."""
    source = decision.source
    head = (
        f"{source}: no configured registry holds it, and upstream: false forbids pulling it"
        f" from {source.domain}"
    )
    if not decision.answers:
        return f"{head}: no registry is a candidate for it (no mirrors entry matches)"
    return f"{head}: {decision.reason()}"


class Resolver:
    """Decisions for PullImage: plan, probe, cache, single-flight."""

    def __init__(
        self,
        registries: Sequence[Registry],
        clients: Mapping[str, RegistryClient],
        cache: CacheConfig,
        clock: Callable[[], float] = time.monotonic,
        upstream: bool = True,
    ) -> None:
        self._plan = Planner(registries)
        self._upstream = upstream  # config `upstream`: only for saying what happens next
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
        return self._plan.registries

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
            fate = (
                "refused (upstream: false)"
                if refused(decision, self.registries, self._upstream)
                else "unchanged"
            )
            log.info("rewrite decision", image=ref, target=fate, why=decision.reason(), took=elapsed)
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

    async def probe(self, ref: Reference, *, everyone: bool = False) -> Decision:
        """Ask the candidates (concurrently) and take the first in order that holds the image.

        `everyone` waits for the answers after the target too (`--resolve` shows them all);
        the decision is the same.
        """
        candidates = self._plan(ref)
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
