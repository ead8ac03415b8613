"""What the registries answered, what was decided from it, and what that decision means.

Values and pure functions only, no I/O and no HTTP client: the resolver (`choose`, `expiry`,
`after_failure`), PullImage and its failover (`outcome`), the metrics, the decision log line
(`shown`) and `--resolve` all ask here, so they cannot disagree about a decision.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from image_cri_shim.config import Registry
from image_cri_shim.reference import Reference
from image_cri_shim.workers.lookup.plan import Candidate, registry_for
from image_cri_shim.workers.pull.failures import Cause, Verdict


class Answer(enum.Enum):
    FOUND = "found"
    NOT_FOUND = "not found"
    NO_PLATFORM = "no manifest for this platform"
    DENIED = "denied"
    THROTTLED = "throttled"
    UNREACHABLE = "unreachable"
    SKIPPED = "skipped (backing off)"


# Answers of a registry that could not be asked: a decision made past one is only provisional.
UNASKED = frozenset({Answer.UNREACHABLE, Answer.SKIPPED, Answer.THROTTLED})


@dataclass(frozen=True, slots=True)
class Probe:
    answer: Answer
    detail: str = ""

    def __str__(self) -> str:
        return f"{self.answer.value} ({self.detail})" if self.detail else self.answer.value


Answers = tuple[tuple[Candidate, Probe], ...]


@dataclass(frozen=True, slots=True)
class Decision:
    source: Reference
    target: Candidate | None  # None: no candidate holds the image
    answers: Answers  # what each candidate that was asked answered
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


def choose(source: Reference, answers: Iterable[tuple[Candidate, Probe]]) -> Decision:
    """The decision from the answers of the candidates, in plan order: the first that holds the
    image, whatever order the answers arrived in. Degraded when a candidate before it (or any,
    without a target) could not be asked."""
    answers = tuple(answers)
    degraded = False
    for candidate, probe in answers:
        if probe.answer is Answer.FOUND:
            return Decision(source, candidate, answers, degraded)
        degraded = degraded or probe.answer in UNASKED
    return Decision(source, None, answers, degraded)


def expiry(
    decision: Decision, now: float, positive: float, negative: float, retry_in: Callable[[str], float]
) -> float:
    """When a cached decision is made afresh. A target found with every earlier candidate asked
    lives `positive` seconds, no target `negative`. A degraded one lives until the first registry
    that could not be asked is asked again (`retry_in(domain)`), so traffic returns to it when it
    recovers, not a whole negativeCacheTTL later (docs/behaviour.md, "Decisions and their lifetimes")."""
    if not decision.degraded:
        return now + (positive if decision.target is not None else negative)
    waits = [retry_in(c.registry.domain) for c, p in decision.answers if p.answer in UNASKED]
    return now + min([negative, *waits])


def failed_pull(verdict: Verdict) -> Probe:
    """A pull that failed through a candidate, as that candidate's answer."""
    if verdict.registry_down:
        answer = Answer.UNREACHABLE
    else:
        answer = Answer.DENIED if verdict.cause is Cause.DENIED else Answer.NOT_FOUND
    return Probe(answer, f"pull failed: {verdict.why}")


def after_failure(failed: Candidate, verdict: Verdict, probed: Decision) -> Decision:
    """The decision after a pull through `failed` failed and the others were asked (`probed`)."""
    answers = ((failed, failed_pull(verdict)), *probed.answers)
    return Decision(probed.source, probed.target, answers, probed.degraded or verdict.registry_down)


def past(decision: Decision, tried: frozenset[str]) -> bool:
    """Whether `decision` was made after every pull in `tried` failed: it points elsewhere."""
    return decision.target is None or decision.target.registry.domain not in tried


def as_asked(source: Reference, registries: Sequence[Registry], upstream: bool) -> bool:
    """Whether the image may be pulled as asked when no candidate serves it: `upstream: true`,
    or its own registry is a configured one (pulling from a configured registry is never
    "upstream"). Also what PullImage does when no decision could be made at all."""
    return upstream or registry_for(source.domain, registries) is not None


def refused(decision: Decision, registries: Sequence[Registry], upstream: bool) -> bool:
    """Whether `upstream: false` forbids this pull: no candidate holds the image, and it may not
    be pulled as asked."""
    return decision.target is None and not as_asked(decision.source, registries, upstream)


Outcome = Literal["rewritten", "unchanged", "refused"]


def outcome(decision: Decision, registries: Sequence[Registry], upstream: bool) -> Outcome:
    """What PullImage does with `decision`; the pull, its failover, the decision log line, the
    metrics and `--resolve` all ask this. A target at the image's own name (its own registry is
    configured and holds it) is a pull as asked: unchanged, not rewritten."""
    if decision.rewritten:
        return "rewritten"
    return "refused" if refused(decision, registries, upstream) else "unchanged"


def shown(decision: Decision, fate: Outcome) -> dict[str, object]:
    """Where the decision sends the pull, as the fields of its log line."""
    if fate != "rewritten" or decision.target is None:
        return {"target": "refused (upstream: false)" if fate == "refused" else "unchanged"}
    return {"target": decision.target.reference, "registry": decision.target.registry.domain}


def next_source(decision: Decision, fate: Outcome, tried: frozenset[str]) -> object:
    """Where a pull goes after a failover, for its log line."""
    if decision.target is not None:
        return decision.target.reference
    if fate == "refused":
        return "none (upstream: false)"
    if decision.source.domain in tried:
        return "none (every candidate failed)"
    return f"{decision.source} (unchanged)"


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
