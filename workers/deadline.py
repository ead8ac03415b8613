"""One call's deadline: made once when a call arrives, handed down to everything done for it.

The caller's own deadline, capped by the configured `timeout`, fixes when the shim's work for the
call must be over: the registry probes, every pull attempt of a failover, the renaming after a
pull, the answer. Each of them asks this one value what is left, instead of working it out again
from the caller's context and when the call began (docs/behaviour.md, "Deadlines and timeouts").
"""

from __future__ import annotations

import time
from dataclasses import dataclass

# Seconds kept to send the answer back before the caller's deadline.
MARGIN = 0.25
# With less left, another pull attempt could only end in DEADLINE_EXCEEDED.
MIN_ATTEMPT = 2 * MARGIN


@dataclass(frozen=True, slots=True)
class Deadline:
    """`end`: when the call's time is up, as a time.monotonic() time."""

    end: float

    @classmethod
    def of(cls, remaining: float | None, timeout: float, now: float) -> Deadline:
        """A call that arrived at `now`, whose caller allows `remaining` seconds (None: no
        deadline of its own), under the configured `timeout`."""
        return cls(now + (timeout if remaining is None else min(remaining, timeout)))

    def left(self, now: float | None = None) -> float:
        """Seconds left, never negative."""
        return max(0.0, self.end - (time.monotonic() if now is None else now))

    @property
    def answer_by(self) -> float:
        """When work after the runtime's answer (renaming, looking again) must stop, so the
        answer still reaches the caller in time."""
        return self.end - MARGIN

    def may_try_again(self, now: float | None = None) -> bool:
        """Whether another pull attempt can still end before the deadline."""
        return self.left(now) > MIN_ATTEMPT
