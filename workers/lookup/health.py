"""Whether a registry is asked now: up, or backing off after it failed, on a clock
(docs/behaviour.md, "A registry that is down").

Pure state and arithmetic (no I/O, no HTTP): the registry client reports each failure and
success here and asks `available()` before each probe. A registry that is down costs its
timeout once per backoff period, and is asked again afterwards so traffic returns when it
recovers.
"""

from __future__ import annotations

import time
from collections.abc import Callable

BACKOFF_FIRST = 5.0
BACKOFF_MAX = 60.0


def backoff(failures: int) -> float:
    """The backoff period after `failures` failed periods in a row: 5 s, doubling, up to 60 s.
    (The exponent is bounded: a registry down for a day must not overflow a float.)"""
    return min(BACKOFF_FIRST * 2.0 ** min(max(failures, 1) - 1, 32), BACKOFF_MAX)


class Health:
    """One registry's health: how many periods in a row it failed, and until when it is skipped."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._down_until = 0.0
        self.failures = 0  # periods in a row that ended in a failure

    def available(self) -> bool:
        return self._clock() >= self._down_until

    def retry_in(self) -> float:
        """Seconds until this registry is asked again (0 when it is not backing off)."""
        return max(0.0, self._down_until - self._clock())

    def failed(self, seconds: float | None = None) -> tuple[float, bool]:
        """Back off for `seconds` (a Retry-After), or the next backoff step; returns how long,
        and whether this is news. Failures within one period count once, so the backoff grows
        per period and not per concurrent probe."""
        now = self._clock()
        if now < self._down_until:
            return self._down_until - now, False
        self.failures += 1
        if seconds is None:
            seconds = backoff(self.failures)
        self._down_until = now + seconds
        return seconds, True

    def succeeded(self) -> bool:
        """The registry answered; True when it had been failing (it is reachable again)."""
        recovered = self.failures > 0
        self.failures = 0
        self._down_until = 0.0
        return recovered
