"""When an answered pull's records are renamed while other pulls run (`deferred`): the rule as a
table, and the queue carrying it out with a stand-in for the runtime's records."""

from __future__ import annotations

import asyncio

import pytest

from image_cri_shim.workers.naming.deferred import Deferred, Queued, due, wait_for

A, B, C = "docker.io/library/a:1", "docker.io/library/b:1", "docker.io/library/c:1"


@pytest.mark.parametrize(
    ("queued", "pulling", "now", "expected"),
    [
        # no pull waits for its answer: everything goes now
        ({A: 10.0, B: 10.9}, (), 11.0, [A, B]),
        # pulls of other images still run: only what waited `within` (1 s) goes
        ({A: 10.0, B: 10.5}, (C,), 11.0, [A]),
        ({A: 10.0, B: 10.5}, (C,), 10.9, []),
        # ...never the records of an image being pulled again (that pull renames it as it ends)
        ({A: 10.0, B: 10.0}, (A, C), 12.0, [B]),
        ({}, (C,), 12.0, []),
    ],
    ids=["idle", "waited-long-enough", "not-yet", "pulled-again", "nothing"],
)
def test_what_is_renamed_now(
    queued: dict[str, float], pulling: tuple[str, ...], now: float, expected: list[str]
) -> None:
    assert due(queued, pulling, now, within=1.0) == expected


def test_how_long_the_queue_may_wait() -> None:
    assert wait_for({A: 10.0, B: 10.4}, (C,), 10.5, within=1.0) == pytest.approx(0.5)
    assert wait_for({A: 10.0}, (C,), 12.0, within=1.0) == 0.0
    # an image pulled again waits for that pull's end, however long: no timer
    assert wait_for({A: 10.0, B: 10.4}, (A,), 10.5, within=1.0) == pytest.approx(0.9)
    assert wait_for({A: 10.0}, (A,), 12.0, within=1.0) is None
    assert wait_for({}, (C,), 12.0, within=1.0) is None


class Runtime:
    """The renamings done, batch by batch, as caller -> (pulled name, since); `pulling`: callers
    whose pull is not answered."""

    def __init__(self) -> None:
        self.batches: list[dict[str, tuple[list[str], float]]] = []
        self.pulling: set[str] = set()

    async def rename(self, batch: dict[str, Queued]) -> None:
        await asyncio.sleep(0)
        self.batches.append({caller: (list(q.pulled), q.since) for caller, q in batch.items()})


def test_deferred_wait_for_the_pulls_around_them() -> None:
    async def scenario() -> None:
        runtime = Runtime()
        deferred = Deferred(runtime.rename, lambda: runtime.pulling, within=5.0)
        runtime.pulling.add(C)
        deferred.add(A, "mirror/a:1", 20.0)
        deferred.add(A, "mirror/a:1", 10.0)  # queued twice: renamed once, since the earlier pull
        deferred.add(A, "backup/a:1", 30.0)  # pulled through another registry too: both, latest last
        deferred.add(B, "mirror/b:1", 30.0)
        await asyncio.sleep(0.05)
        assert runtime.batches == [], "C's pull is not answered yet"
        assert deferred.pending and deferred.holds(A) and not deferred.holds(C)
        runtime.pulling.clear()
        deferred.wake()
        await asyncio.sleep(0.05)
        assert runtime.batches == [{A: (["mirror/a:1", "backup/a:1"], 10.0), B: (["mirror/b:1"], 30.0)}]
        assert not deferred.pending
        await deferred.close()

    asyncio.run(scenario())


def test_a_renaming_waits_no_longer_than_within_while_pulls_go_on() -> None:
    async def scenario() -> None:
        runtime = Runtime()
        deferred = Deferred(runtime.rename, lambda: runtime.pulling, within=0.1)
        runtime.pulling.add(C)
        deferred.add(A, "mirror/a:1", 10.0)
        await asyncio.sleep(0.3)
        assert runtime.batches == [{A: (["mirror/a:1"], 10.0)}]
        await deferred.close()

    asyncio.run(scenario())


def test_a_renaming_behind_a_pull_of_its_own_image_sleeps_until_that_pull_ends() -> None:
    async def scenario() -> None:
        runtime = Runtime()
        woken = 0

        def pulling() -> set[str]:
            nonlocal woken
            woken += 1
            return runtime.pulling

        deferred = Deferred(runtime.rename, pulling, within=0.01)
        runtime.pulling.update({A, C})
        deferred.add(A, "mirror/a:1", 10.0)
        await asyncio.sleep(0.2)
        assert runtime.batches == [] and woken <= 3, f"the queue looked {woken} times"
        runtime.pulling.discard(A)
        deferred.wake()
        await asyncio.sleep(0.05)
        assert runtime.batches == [{A: (["mirror/a:1"], 10.0)}]
        await deferred.close()

    asyncio.run(scenario())


def test_a_failed_renaming_is_logged_and_the_queue_goes_on() -> None:
    async def scenario() -> None:
        runtime = Runtime()
        failures = [OSError("names file: read-only file system")]

        async def rename(batch: dict[str, Queued]) -> None:
            if failures:
                raise failures.pop()
            await runtime.rename(batch)

        deferred = Deferred(rename, lambda: runtime.pulling, within=60.0)
        deferred.add(A, "mirror/a:1", 10.0)
        await asyncio.sleep(0.05)
        assert not deferred.pending, "the failed batch is not retried here: it stays owed"
        deferred.add(B, "mirror/b:1", 10.0)
        await asyncio.wait_for(deferred.close(), 1.0)
        assert runtime.batches == [{B: (["mirror/b:1"], 10.0)}]

    asyncio.run(scenario())


def test_closing_renames_what_is_queued_at_once() -> None:
    async def scenario() -> None:
        runtime = Runtime()
        deferred = Deferred(runtime.rename, lambda: runtime.pulling, within=60.0)
        runtime.pulling.add(C)
        deferred.add(A, "mirror/a:1", 10.0)
        await asyncio.wait_for(deferred.close(), 1.0)
        assert runtime.batches == [{A: (["mirror/a:1"], 10.0)}]
        assert not deferred.pending

    asyncio.run(scenario())
