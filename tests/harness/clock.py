"""Time that tests move by hand."""

from __future__ import annotations


class Clock:
    """Monotonic time the test moves by hand, so backoff periods need no sleeping."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now
