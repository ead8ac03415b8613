"""When the worker gives memory back: after calls that moved much, once none is in flight
(image_cri_shim/lifecycle.py HeapTrimmer, workers/runtime/upstream.py Waits)."""

from __future__ import annotations

import time

from image_cri_shim.lifecycle import HeapTrimmer
from image_cri_shim.workers.runtime.upstream import Waits


def test_waits_say_when_they_fall_to_none() -> None:
    idle: list[int] = []
    waits = Waits(on_idle=lambda: idle.append(len(waits)))
    with waits:
        with waits:
            assert len(waits) == 2
        assert idle == []
    assert idle == [0]


class Counting(HeapTrimmer):
    def __init__(self) -> None:
        super().__init__(threshold=100, delay=0.0)
        self.trims = 0

    def _trim(self) -> None:
        self.trims += 1
        super()._trim()


def test_a_trim_follows_only_calls_that_moved_much() -> None:
    trimmer = Counting()
    trimmer.moved(60)
    trimmer.idle()
    assert trimmer.trims == 0, "60 bytes since the last trim: not worth one"
    trimmer.moved(60)
    trimmer.idle()
    deadline = 50
    while trimmer.trims == 0 and deadline:
        time.sleep(0.01)
        deadline -= 1
    assert trimmer.trims == 1
    trimmer.idle()
    time.sleep(0.05)
    assert trimmer.trims == 1, "the count starts again after a trim"
