"""Pulled records are removed once the pulls around them are answered, not on each pull's way out.

Renaming a rewritten pull on containerd writes the caller's records, then removes the pulled
ones. Every one of those is a write to containerd's metadata database (a transaction and a sync
of its own), and pulls running at the same time queue on the same writes: with 32 pulls at once
the removals kept each answer waiting about 25 ms longer (60 ms at most), all of it spent behind
other pulls' writes. A caller needs only its own records before its answer. So while pulls of
other images are not answered yet, the removals wait here until they are, or `WITHIN` at most;
meanwhile answers name the image as asked by translation (`Naming.image`), as on a runtime
without records. A pull that is the only one removes its records at once, before its answer.
The queue is in memory only: the renaming is recorded as owed in the name store until its
removals are done, so a worker killed meanwhile leaves them to the next full listing, and a
worker that stops removes them first."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass, field

from image_cri_shim import logs

log = logs.get("naming")

# The longest a removal waits for the pulls around it (a node pulling without pause still has
# its pulled names removed within about this).
WITHIN = 1.0


@dataclass
class Queued:
    """The pulled records of one caller's image still to remove, since `at` (time.monotonic())."""

    names: list[str] = field(default_factory=list)
    at: float = 0.0


def due(
    queued: Mapping[str, float], pulling: Collection[str], now: float, within: float = WITHIN
) -> list[str]:
    """The callers (each queued at a time.monotonic() time) whose records are removed now: every
    one once no pull waits for its answer; while pulls do, those waiting `within` or longer,
    unless a pull of that very image is among them (it renames the records again as it ends)."""
    if not pulling:
        return list(queued)
    return [caller for caller, at in queued.items() if now - at >= within and caller not in pulling]


def wait_for(
    queued: Mapping[str, float], pulling: Collection[str], now: float, within: float = WITHIN
) -> float | None:
    """Seconds until the oldest queued removal falls due whatever the pulls do; None when only
    the end of a pull can make one due (an image being pulled again waits for that pull)."""
    waiting = [at for caller, at in queued.items() if caller not in pulling]
    return max(0.0, min(waiting) + within - now) if waiting else None


class Removals:
    """The queue, and the one task that carries it out by calling `remove` with the pulled records
    of each caller due. `pulling()`: the callers with a pull not answered yet."""

    def __init__(
        self,
        remove: Callable[[dict[str, list[str]]], Awaitable[object]],
        pulling: Callable[[], Collection[str]],
        within: float = WITHIN,
    ) -> None:
        self._remove = remove
        self._pulling = pulling
        self._within = within
        self._queued: dict[str, Queued] = {}
        self._removing: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> bool:
        """Whether pulled records are still to go (answers are translated meanwhile)."""
        return bool(self._queued) or bool(self._removing)

    def holds(self, caller: str) -> bool:
        """Whether `caller`'s pulled records are still to go."""
        return caller in self._queued or caller in self._removing

    def add(self, caller: str, names: Collection[str]) -> None:
        entry = self._queued.setdefault(caller, Queued(at=time.monotonic()))
        entry.names.extend(n for n in names if n not in entry.names)
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._run())

    def wake(self) -> None:
        """A pull was answered: the queue may be due."""
        self._wake.set()

    async def _run(self) -> None:
        while self._queued:
            now = time.monotonic()
            queued, pulling = {c: q.at for c, q in self._queued.items()}, self._pulling()
            ready = list(queued) if self._closing else due(queued, pulling, now, self._within)
            if not ready:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), wait_for(queued, pulling, now, self._within))
                continue
            batch = {c: self._queued.pop(c).names for c in ready}
            self._removing.update(batch)
            try:
                await self._remove(batch)
            except Exception as err:  # a fault of its own ends no queue: what it missed stays owed
                log.warning("could not remove the pulled image records, left for later", error=repr(err))
            finally:
                self._removing.difference_update(batch)

    async def close(self) -> None:
        """Remove what is queued at once (the worker stops), and wait until that is done."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
