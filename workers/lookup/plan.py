"""Where an image could come from: a pure function of the reference and the registries.

`plan` lists the candidates in the order they are tried, each with the reference that
registry would hold the image under after its `mirrors` rules (docs/routing.md). Nothing here
does I/O or imports the HTTP client: the ImageStatus path and worker start-up use it, and
`resolver` executes a plan against the registries (what the answers mean: `decisions`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass

from image_cri_shim.config import Registry
from image_cri_shim.reference import Reference, ReferenceError


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
