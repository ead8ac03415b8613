"""A pull answered while pulls of other images run is renamed after them, not on its way out.

Renaming a rewritten pull on containerd writes the caller's records, then removes the pulled
ones. Every one of those is a write to containerd's metadata database (a transaction and a sync
of its own), and pulls running at the same time queue on the same writes: with 32 pulls at once
the caller's records kept each answer waiting about 26 ms, the removals 25 ms more, all of it
spent behind other pulls' writes. The caller needs neither before its answer: through the shim
the image is named as asked by translation meanwhile (`Naming.image`), as on a runtime without
records, and CreateContainer sent through the shim by the caller's name gets the image's ID. So
while pulls of other images are not answered yet, the renaming waits here until they are, or
`WITHIN` at most, and the renamings due go together. The last of them joins the queue too while
it holds renamings not done yet (its own would queue behind theirs). A pull with nothing around
it renames its records at once, before its answer.
The queue is in memory only: the renaming is recorded as owed in the name store until it is
done, so a worker killed meanwhile leaves it to the next lookup or full listing, and a worker
that stops does it first."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Collection, Mapping
from dataclasses import dataclass

from image_cri_shim import logs

log = logs.get("naming")

# The longest a renaming waits for the pulls around it (a node pulling without pause still has
# its images renamed within about this).
WITHIN = 1.0


@dataclass
class Queued:
    """The renaming of one caller's image, pulled as each of `pulled` (oldest first: pulls of it
    through different registries) by pulls begun at `since` (wall clock), waiting since `at`
    (time.monotonic())."""

    pulled: list[str]
    since: float
    at: float


def due(
    queued: Mapping[str, float], pulling: Collection[str], now: float, within: float = WITHIN
) -> list[str]:
    """The callers (each queued at a time.monotonic() time) renamed now: every one once no pull
    waits for its answer; while pulls do, those waiting `within` or longer, unless a pull of that
    very image is among them (it renames the records itself as it ends)."""
    if not pulling:
        return list(queued)
    return [caller for caller, at in queued.items() if now - at >= within and caller not in pulling]


def wait_for(
    queued: Mapping[str, float], pulling: Collection[str], now: float, within: float = WITHIN
) -> float | None:
    """Seconds until the oldest queued renaming falls due whatever the pulls do; None when only
    the end of a pull can make one due (an image being pulled again waits for that pull)."""
    waiting = [at for caller, at in queued.items() if caller not in pulling]
    return max(0.0, min(waiting) + within - now) if waiting else None


class Deferred:
    """The queue, and the one task that carries it out by calling `rename` with the renamings due.
    `pulling()`: the callers with a pull not answered yet."""

    def __init__(
        self,
        rename: Callable[[dict[str, Queued]], Awaitable[object]],
        pulling: Callable[[], Collection[str]],
        within: float = WITHIN,
    ) -> None:
        self._rename = rename
        self._pulling = pulling
        self._within = within
        self._queued: dict[str, Queued] = {}
        self._renaming: set[str] = set()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    @property
    def pending(self) -> bool:
        """Whether a renaming is still to be done (answers are translated meanwhile)."""
        return bool(self._queued) or bool(self._renaming)

    def holds(self, caller: str) -> bool:
        """Whether `caller`'s renaming is still to be done."""
        return caller in self._queued or caller in self._renaming

    def add(self, caller: str, pulled: str, since: float) -> None:
        """Queue the renaming of `caller`'s image; queued already, it keeps its place, gains the
        name pulled if it is another, and the earlier of the two pulls' starts."""
        entry = self._queued.get(caller)
        if entry is None:
            self._queued[caller] = Queued([pulled], since, time.monotonic())
        else:
            if pulled not in entry.pulled:
                entry.pulled.append(pulled)
            entry.since = min(entry.since, since)
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
            batch = {c: self._queued.pop(c) for c in ready}
            self._renaming.update(batch)
            try:
                await self._rename(batch)
            except Exception as err:  # a fault of its own ends no queue: what it missed stays owed
                log.warning("could not name the images as pulled, left for later", error=repr(err))
            finally:
                self._renaming.difference_update(batch)

    async def close(self) -> None:
        """Do what is queued at once (the worker stops), and wait until that is done."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
