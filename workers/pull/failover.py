"""A rewritten PullImage, and its failover to the next source when the target registry fails it
(docs/behaviour.md, "Pull-time failover").

The pull goes to the decision's target first. When the runtime answers with a failure that lies
with that registry (`failures.classify`), the resolver drops the decision through it and names
the next candidate that holds the image (`Resolver.failover`); the same request is sent there
with that registry's credentials, and so on, then to the caller's reference unchanged where
`upstream` allows it. Every attempt runs within what is left of `timeout` and the caller's
deadline. A failure no registry can fix ends the pull at once with the runtime's answer.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol, TypeAlias

import grpc
import grpc.aio

from image_cri_shim import logs
from image_cri_shim.reference import Reference
from image_cri_shim.workers.deadline import MARGIN, Deadline
from image_cri_shim.workers.lookup.decisions import Decision, Outcome, Probe
from image_cri_shim.workers.lookup.plan import Candidate
from image_cri_shim.workers.pull.failures import Verdict, classify
from image_cri_shim.workers.runtime.upstream import Upstream

log = logs.get("failover")

Context: TypeAlias = "grpc.aio.ServicerContext[bytes, bytes]"


class Decisions(Protocol):
    """The resolver's side of a failover (`Registries`)."""

    async def failover(
        self, ref: Reference, failed: Candidate, tried: frozenset[str], why: Verdict, within: float
    ) -> Decision:
        """The next decision after a pull through `failed` failed (`tried`: every registry
        pulled from so far); raises TimeoutError when it takes longer than `within` seconds."""

    async def forget(self, ref: Reference, failed: Candidate) -> None:
        """Drop the decision through `failed`, if it is still the one cached."""


# The request for one attempt: through a candidate, or (None) as the caller asked.
Build = Callable[[Candidate | None], bytes]


@dataclass(frozen=True, slots=True)
class Attempt:
    name: str  # the image name pulled
    code: grpc.StatusCode
    details: str
    verdict: Verdict


def summary(source: Reference, attempts: Sequence[Attempt], rest: Sequence[tuple[Candidate, Probe]]) -> str:
    """The error when every attempt failed: each attempt with what it got, then what the other
    candidates answered (as the `upstream: false` refusal lists them)."""
    parts = [f"{a.name}: {a.verdict.why} ({a.details})" for a in attempts]
    parts += [f"{c.reference}: {p}" for c, p in rest]
    return f"{source}: every source tried failed: " + "; ".join(parts)


class Puller:
    def __init__(
        self, upstream: Upstream, decisions: Decisions | None, fate: Callable[[Decision], Outcome]
    ) -> None:
        self._upstream = upstream
        self._decisions = decisions  # None: no failover (the attempt's error goes back as it is)
        self._fate = fate  # what a decision means (`decisions.outcome` under the worker's config)

    async def pull(
        self,
        method: str,
        source: Reference,
        target: Candidate,
        build: Build,
        context: Context,
        deadline: Deadline,
    ) -> tuple[bytes, Candidate | None]:
        """The response, and the candidate it came through (None: the caller's reference, when
        no candidate is left and the decision lets it go as asked)."""
        attempts: list[Attempt] = []
        tried: set[str] = set()
        current: Candidate | None = target
        while True:
            try:
                return await self._upstream.call(method, build(current), context, deadline), current
            except grpc.RpcError as err:
                details = err.details() or ""
                name = str(current.reference) if current is not None else str(source)
                attempts.append(Attempt(name, err.code(), details, classify(err.code().name, details)))
                if current is None:
                    await self._give_up(context, err, source, attempts, ())
                if not self._may_retry(attempts[-1].verdict, context, deadline):
                    await self.forget(source, current)  # never outlives a failed pull through it
                    await self._give_up(context, err, source, attempts, ())
                tried.add(current.registry.domain)
                # the failover's probes may take what is left but a margin to answer in time
                left = deadline.left() - MARGIN
                decision = await self._next(source, current, frozenset(tried), attempts[-1].verdict, left)
                if decision is None:
                    await self._give_up(context, err, source, attempts, ())
                if self._fate(decision) == "refused" or (decision.target is None and source.domain in tried):
                    await self._give_up(context, err, source, attempts, decision.answers[1:])
                current = decision.target

    def _may_retry(self, verdict: Verdict, context: Context, deadline: Deadline) -> bool:
        return (
            self._decisions is not None
            and verdict.retryable
            and not context.cancelled()
            and deadline.may_try_again()
        )

    async def _next(
        self, source: Reference, failed: Candidate, tried: frozenset[str], why: Verdict, within: float
    ) -> Decision | None:
        assert self._decisions is not None
        try:
            return await self._decisions.failover(source, failed, tried, why, within)
        except TimeoutError:  # the probes of the next candidates took what was left
            log.info("no time left to fail over", image=source, **{"from": failed.reference}, why=why.why)
        except Exception as err:  # a fault of the shim's own: the runtime's answer goes back
            log.error("failover decision failed", image=source, error=repr(err))
        return None

    async def forget(self, source: Reference, failed: Candidate) -> None:
        """Drop the decision through `failed`: a positive decision never outlives a failed pull."""
        if self._decisions is None:
            return
        try:
            await self._decisions.forget(source, failed)
        except Exception as err:
            log.error("dropping a decision failed", image=source, error=repr(err))

    async def _give_up(
        self,
        context: Context,
        err: grpc.RpcError,
        source: Reference,
        attempts: Sequence[Attempt],
        rest: Sequence[tuple[Candidate, Probe]],
    ) -> NoReturn:
        """One attempt: the runtime's answer unchanged. Several: the last one's code, and each."""
        if len(attempts) == 1 and not rest:
            await self._upstream.abort(context, err)
        await context.abort(attempts[-1].code, summary(source, attempts, rest))
