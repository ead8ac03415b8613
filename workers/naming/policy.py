"""The naming policy: to every CRI client, an image pulled through the shim is the image it asked for
(docs/behaviour.md, "Names a client sees").

The shim pulls `registry.k8s.io/pause:3.9` as `mirror.local/pause:3.9`; the runtime then holds it
under the second name. Clients expect the first: in ImageStatus and ListImages (`repo_tags`,
`repo_digests`), as a ListImages filter, and for RemoveImage and CreateContainer.

Where the runtime keeps image records the shim can write (containerd's images API on the same
socket, namespace `k8s.io`), the runtime's own state is made true: after a rewritten pull the
records of the rewritten name (`name:tag` and `repository@digest`) are copied under the caller's
name and then removed. containerd's CRI follows its image records as they change (1.6, 1.7 and
2.x alike), so kubelet, crictl, image GC, `ctr images ls` and CreateContainer see the caller's
name with no help from the shim, across restarts and with every registry down, and the node
stays consistent if the shim is ever removed. A rewritten name the node held before the pull
(pulled directly, or preloaded) keeps its record.

On cri-dockerd the records are Docker Engine's, and its API (`dockerapi`, on Docker's own socket)
renames them the same way: the image is tagged under the caller's name and the pulled tag and
digest record are removed. Docker makes digest records only when it pulls, so an image pulled by
digest alone keeps its pulled record there and is translated, as below. Which records move is a
value (`renaming`), the same for both runtimes.

Elsewhere (CRI-O: no such API, or Docker's socket out of reach) answers are translated instead:
ImageStatus and ListImages report the caller's names in place of the rewritten ones, and
CreateContainer's image is mapped to the name the runtime holds. The pair is kept in the name
store, for the translation and for what verbose ImageStatus says about where the image came from.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

import grpc
import grpc.aio
from google.protobuf.message import DecodeError

from image_cri_shim import logs, reference
from image_cri_shim.protos import containerd_pb2 as ctr
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.reference import Reference
from image_cri_shim.workers.lookup.plan import Planner
from image_cri_shim.workers.naming.deferred import Deferred, Queued
from image_cri_shim.workers.naming.renaming import (
    PAID,
    Owe,
    ledger,
    renames,
    renaming,
    reported,
    reported_name,
    repository,
    when,
)
from image_cri_shim.workers.naming.store import NameStore
from image_cri_shim.workers.runtime.calls import unary_call
from image_cri_shim.workers.runtime.dockerapi import DockerError, DockerImages, familiar
from image_cri_shim.workers.runtime.records import OutOfTime, Records, call_timeout
from image_cri_shim.workers.runtime.upstream import Context, Upstream

log = logs.get("naming")

T = TypeVar("T")
SETTLE_TIMEOUT = 5.0  # containerd's CRI follows record changes within milliseconds
INFO_KEY = "image-cri-shim"


CONTAINERD, DOCKER, TRANSLATION = "containerd", "docker", "translation"


def described(mode: str, docker_socket: str | None) -> str:
    """What a naming mode means to an operator (the start-up line, `--dry-run`)."""
    return {
        CONTAINERD: "native: the runtime's image records, through containerd's images API",
        DOCKER: f"native: Docker Engine's image records, through its API at {docker_socket}",
        TRANSLATION: "translation: the caller's names in answers, the runtime keeps the pulled ones",
    }[mode]


async def runtime_name(channel: grpc.aio.Channel, until: float | None) -> str | None:
    """The runtime's name from CRI Version (`containerd`, `docker`, `cri-o`), None without an answer."""
    for version in ("runtime.v1", "runtime.v1alpha2"):
        call = unary_call(channel, f"/{version}.RuntimeService/Version")
        try:
            timeout = call_timeout(until, time.monotonic())
            raw = await call(cri.VersionRequest(version="v1").SerializeToString(), timeout=timeout)
        except OutOfTime:
            return None
        except grpc.RpcError as err:
            if err.code() == grpc.StatusCode.UNIMPLEMENTED:
                continue
            return None
        return cri.VersionResponse.FromString(raw).runtime_name
    return None


async def naming_mode(records: Records, docker: DockerImages | None, until: float | None) -> str | None:
    """How names are kept on this runtime: its records through containerd's images API, Docker
    Engine's records (cri-dockerd, Docker's socket answering), or translation; None when the
    runtime cannot be asked now."""
    served = await records.served(until)
    if served is None:
        return None
    if served:
        return CONTAINERD
    name = await runtime_name(records.channel, until)
    if name is None:
        return None
    if name == "docker" and docker is not None and await docker.version(until) is not None:
        return DOCKER
    return TRANSLATION


def copy(record: ctr.Image, name: str) -> ctr.Image:
    """`record` under another name, as new (containerd sets its times)."""
    renamed = ctr.Image()
    renamed.CopyFrom(record)
    renamed.name = name
    renamed.ClearField("created_at")
    return renamed


def created_before(image: ctr.Image, since: float) -> bool:
    """Whether the record existed before the pull began: the node held that name already."""
    created = image.created_at.seconds + image.created_at.nanos / 1e9
    return image.HasField("created_at") and created < since


@dataclass
class Pull:
    """One rewritten pull of `caller`, begun at `since` (wall clock)."""

    caller: str
    since: float
    done: bool = False  # back from the runtime


class Naming:
    """Owns how images pulled through the shim are named to its callers."""

    def __init__(
        self, upstream: Upstream, names: NameStore, planner: Planner, docker_socket: str | None = None
    ) -> None:
        self._records = Records(upstream.channel)
        self._docker = DockerImages(docker_socket) if docker_socket else None
        self._names = names
        self._plan = planner
        self._mode: str | None = None
        # Renaming takes runtime round trips: it holds only its name's gate, so concurrent pulls
        # of different images rename side by side. A gate lives while someone holds or awaits it.
        self._gates: weakref.WeakValueDictionary[str, asyncio.Lock] = weakref.WeakValueDictionary()
        self._pulls: dict[str, tuple[int, float]] = {}  # caller -> (pulls in flight, earliest start)
        self._active: dict[str, int] = {}  # caller -> pulls not answered yet (in the runtime, renaming)
        # The names file is written with a lock and an fsync: never on the event loop. One
        # thread, so the changes reach the file in the order they were made; the changes made
        # while it writes are written together by its next write.
        self._files = ThreadPoolExecutor(1, thread_name_prefix="names")
        self._queued: list[tuple[Callable[[], None], asyncio.Future[None]]] = []
        self._writing: asyncio.Task[None] | None = None
        self._deferred = Deferred(self._rename_deferred, lambda: self._active)
        self._status = "/runtime.v1.ImageService/ImageStatus"  # as the last renaming's caller asked

    async def close(self) -> None:
        await self._deferred.close()
        self._files.shutdown(wait=True)
        if self._docker is not None:
            await self._docker.close()

    async def _save(self, change: Callable[[], None]) -> None:
        """Apply a change of the name store (it writes the names file) in the files thread,
        with the others queued meanwhile."""
        await self._queue(change)

    def _queue(self, change: Callable[[], None]) -> asyncio.Future[None]:
        """`_save` without waiting: the future is done once the change is written."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._queued.append((change, done))
        if self._writing is None or self._writing.done():
            self._writing = loop.create_task(self._write_queued())
        return done

    async def _write_queued(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            batch, self._queued = self._queued, []
            try:
                await loop.run_in_executor(self._files, self._names.changed, [c for c, _ in batch])
            except Exception as err:  # a fault of the store's own: each change's caller hears it
                for _, done in batch:
                    if not done.done():
                        done.set_exception(err)
                continue
            for _, done in batch:
                if not done.done():
                    done.set_result(None)

    async def _record(self, caller: str, target: str) -> None:
        if self._names.target(caller) != target:
            await self._save(lambda: self._names.record(caller, target))

    async def _forget(self, callers: list[str]) -> None:
        if any(self._names.target(c) is not None for c in callers):
            await self._save(lambda: self._names.forget(callers))

    @contextlib.asynccontextmanager
    async def pulling(self, source: Reference) -> AsyncIterator[Pull]:
        """Around a rewritten pull. containerd finishes a pull by reading the record it wrote,
        so a rename must not remove that record while another pull of the name is still in
        the runtime: the last of concurrent pulls to come back renames for all of them."""
        pull = Pull(reported(source), time.time())
        async with self._gate(pull.caller):
            users, since = self._pulls.get(pull.caller, (0, pull.since))
            self._pulls[pull.caller] = (users + 1, min(since, pull.since))
        self._active[pull.caller] = self._active.get(pull.caller, 0) + 1
        try:
            yield pull
        finally:
            if not pull.done:
                self._returned(pull)
            left = self._active.pop(pull.caller) - 1
            if left:
                self._active[pull.caller] = left
            self._deferred.wake()

    def _returned(self, pull: Pull) -> tuple[int, float]:
        """This pull is back from the runtime: (pulls of its name still there, their earliest start)."""
        pull.done = True
        users, since = self._pulls.pop(pull.caller)
        if users > 1:
            self._pulls[pull.caller] = (users - 1, since)
        return users - 1, since

    def _gate(self, caller: str) -> asyncio.Lock:
        gate = self._gates.get(caller)
        if gate is None:
            gate = self._gates[caller] = asyncio.Lock()
        return gate

    @property
    def native(self) -> bool:
        """Whether the runtime's own records carry the caller's names, as far as known yet."""
        return self._mode == CONTAINERD

    async def mode_by(self, until: float | None) -> str | None:
        """The naming mode (`naming_mode`), asked once per worker within what is left before
        `until`; None while the runtime cannot be asked."""
        if self._mode is None:
            mode = await naming_mode(self._records, self._docker, until)
            if mode is None:
                return None
            self._mode = mode
            log.info(
                "image names", mode=mode, kept=described(mode, self._docker.path if self._docker else None)
            )
        return self._mode

    async def describe(self, until: float | None) -> str:
        """The naming mode for the start-up line."""
        mode = await self.mode_by(until)
        return "not known yet (the runtime does not answer)" if mode is None else mode

    # -- pulls ------------------------------------------------------------------------------------

    async def pulled(self, method: str, pull: Pull, target: Reference, until: float) -> None:
        """A rewritten pull (`method`) succeeded: name it as asked, and return once the
        runtime's CRI answers under the new names, or when `until` (the caller's deadline,
        time.monotonic()) comes first: the pull succeeded all the same. While pulls of other
        images are not answered yet, or their renamings not done, containerd's records are renamed
        after them (`deferred`)."""
        caller, name = pull.caller, reported(target)
        self._status = method.rsplit("/", 1)[0] + "/ImageStatus"
        await self._record(caller, name)
        mode = await self.mode_by(until)
        async with self._gate(caller):  # no other pull of the name starts meanwhile
            others, began = self._returned(pull)
            busy = self._deferred.pending or any(c != caller for c in self._active)
            plan = when(others, began, self._names.owed(caller), busy, mode == CONTAINERD)
            last = plan.since
            if plan.defer and last is not None:
                self._defer(caller, name, last)
                return
            changes = await self._rename(mode, caller, name, last, until)
            await self._keep(caller, last, changes)
        if changes and mode == CONTAINERD:
            await self._settle(self._status, changes, until)

    async def _keep(self, caller: str, since: float | None, changes: dict[str, bool] | None) -> None:
        """Record what is owed after a renaming of the records made since `since` was tried
        (`changes`: None when it could not be done now)."""
        kept = ledger(since, changes is not None, self._names.owed(caller), self._deferred.holds(caller))
        if isinstance(kept, Owe):
            owed_since = kept.since
            await self._save(lambda: self._names.owe(caller, owed_since))
        elif kept == PAID:
            await self._save(lambda: self._names.paid(caller))

    def _defer(self, caller: str, name: str, since: float) -> None:
        """Rename after the pulls of other images are answered (`deferred`), owed until then."""
        self._queue(lambda: self._names.owe(caller, since)).add_done_callback(_unsaved)
        self._deferred.add(caller, name, since)

    async def _rename(
        self, mode: str | None, caller: str, name: str, since: float | None, until: float
    ) -> dict[str, bool] | None:
        """Rename the records as the mode says: each name written (True) or removed (False), {}
        for nothing to do, None when it could not be done now (owed)."""
        if mode == CONTAINERD:
            return await self._adopt(caller, name, since, until)
        if mode == DOCKER:
            return await self._adopt_docker(caller, name, since, until)
        return {} if mode == TRANSLATION else None

    async def held_before(self, pull: Pull, target: Reference, until: float) -> None:
        """Before a rewritten pull on Docker, whose records carry no times: a pulled name the node
        holds already (preloaded, or pulled past the shim) is recorded as held directly, so the
        renaming after the pull keeps it, as `created_before` does on containerd. Names the shim's
        own pulls made (another pull of the image still running, a renaming owed) are not."""
        docker, name = self._docker, reported(target)
        if docker is None or self._names.callers(name) - {name} or await self.mode_by(until) != DOCKER:
            return
        if self._pulls.get(pull.caller, (0, 0.0))[0] > 1:
            return
        try:
            image = await docker.inspect(name, until)
        except (OutOfTime, DockerError, ValueError, KeyError):
            return
        if image is not None and image.holds(name):
            for held, _ in renames(pull.caller, name, image.digest_of(name)):
                if image.holds(held):
                    await self._record(held, held)

    async def pulled_directly(self, source: Reference) -> None:
        """A pull went as asked: a rewritten name pulled so stays, on every runtime."""
        name = reported(source)
        if self._names.callers(name) - {name}:
            await self._record(name, name)

    async def found(self, method: str, caller: str, name: str, until: float) -> bool:
        """The caller's image is on the node under `name` (`look`), seen by an ImageService
        `method`: under another name (preloaded, or pulled by an older shim) it is named as asked.
        A renaming owed since the shim's pull of it is done now, the pulled records removed.
        True when the runtime holds it under the caller's name only now (ask it again so)."""
        if self._deferred.holds(caller):
            return False  # renamed by its queue in a moment; answers are translated meanwhile
        since = self._owed(caller)  # the shim's own pull made the records since then
        pulled = self._names.target(caller)
        if name == caller:  # named already; the pulled records may be left from a partial renaming
            if since is None or pulled is None or pulled == caller:
                return False
            name = pulled
        elif pulled != name:
            await self._record(name, name)  # held before the shim named it: it stays
            since = None
        await self._record(caller, name)
        mode = await self.mode_by(until)
        if mode not in (CONTAINERD, DOCKER) or (mode == DOCKER and "@" in caller):
            return False  # Docker makes no digest record on request: translated
        self._status = method.rsplit("/", 1)[0] + "/ImageStatus"
        changes = await self._rename(mode, caller, name, since, until)
        await self._keep(caller, since, changes)
        if changes is None:
            return False
        if changes and mode == CONTAINERD:
            await self._settle(self._status, changes, until)
        return bool(changes)

    async def pay_owed(self, method: str, until: float) -> None:
        """Do the renamings still owed, before a full ListImages (`method`) would list the
        pulled names: `found` under the caller's own name does each."""
        for caller in self._names.owing():
            await self.found(method, caller, caller, until)

    def _in_hand(self, caller: str) -> bool:
        """Whether a pull of `caller`'s image is still being answered, or its renaming is still to be
        done: the runtime may show it under neither name for that moment, and its pair stays."""
        return caller in self._active or self._deferred.holds(caller)

    def _owed(self, caller: str) -> float | None:
        """When the pull whose renaming is owed began; None while another pull of the name is
        in the runtime (it reads the pulled records, and renames when it is back)."""
        return None if caller in self._pulls else self._names.owed(caller)

    async def removed(self, caller: str, names: Iterable[str]) -> None:
        """The caller's image was removed (held under `names`): forget every pair of it."""
        callers = [caller, *(c for n in names for c in self._names.callers(n))]
        await self._forget(callers)

    async def _adopt(
        self, caller: str, name: str, since: float | None, until: float
    ) -> dict[str, bool] | None:
        """Copy the records of `name` under `caller`; remove those made since the pulls began
        (`since`; None: remove none), each call within what is left before `until` (`renaming`
        decides which). Returns each name written (True) or removed (False); None when it could
        not be done now."""
        changes: dict[str, bool] = {}
        try:
            record = await self._records.get(name, until)
            if record is None:
                return changes
            digest = record.target.digest
            others = [old for old, _ in renames(caller, name, digest)[1:]]
            found = await asyncio.gather(*(self._records.get(old, until) for old in others))
            held = {name: record, **{old: r for old, r in zip(others, found, strict=True) if r is not None}}
            before = [n for n, r in held.items() if since is None or created_before(r, since)]
            plan = renaming(caller, name, digest, held, before)
            # Every new name is written before any pulled one goes, so the image is never left
            # without a record (containerd would collect its content); each step's records at once.
            await asyncio.gather(
                *(self._records.put(copy(held[old], new), until) for old, new in plan.create)
            )
            changes.update({new: True for _, new in plan.create})
            await asyncio.gather(*(self._records.delete(old, until) for old in plan.remove))
            changes.update({old: False for old in plan.remove})
        except (OutOfTime, grpc.RpcError) as err:
            if isinstance(err, OutOfTime) or err.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
                log.info("no time left to name the image as asked, left for later", image=caller, pulled=name)
            else:
                log.warning(
                    "could not name the image as pulled", image=caller, pulled=name, error=err.details()
                )
            return None
        return changes

    async def _adopt_docker(
        self, caller: str, name: str, since: float | None, until: float
    ) -> dict[str, bool] | None:
        """`_adopt` on Docker Engine's records: tag the image under the caller's name, remove the
        pulled names (`renaming`). A pulled name the shim saw pulled as asked (or, with `since`
        None, any) was held before and stays. A complete renaming leaves nothing to translate:
        the pair is forgotten. Returns what `_adopt` does."""
        docker = self._docker
        if docker is None:
            return None
        changes: dict[str, bool] = {}
        try:
            image = await docker.inspect(name, until)
            if image is None:
                return changes
            digest = image.digest_of(name)
            held = [n for n, _ in renames(caller, name, digest) if image.holds(n)]
            before = held if since is None else [n for n in held if n in self._names.callers(n)]
            plan = renaming(caller, name, digest, held, before, digests=False)
            for _, new in plan.create:
                await docker.tag(image.id, new, until)
                changes[new] = True
            for old in plan.remove:
                await docker.untag(old, until)
                changes[old] = False
        except (OutOfTime, DockerError, ValueError, KeyError) as err:
            if isinstance(err, OutOfTime):
                log.info("no time left to name the image as asked, left for later", image=caller, pulled=name)
            else:
                log.warning("could not name the image as pulled", image=caller, pulled=name, error=str(err))
            return None
        if plan.complete:
            await self._forget([caller])  # Docker holds it by the caller's name alone now
        return changes

    async def _rename_deferred(self, batch: dict[str, Queued]) -> None:
        """Rename the records of each caller in `batch` (`deferred`) together, wait until the CRI
        shows them so, and the renamings are owed no more. A caller whose image is being pulled
        again is left alone: that pull renames it as it ends."""
        until = time.monotonic() + SETTLE_TIMEOUT

        async def rename(caller: str, queued: Queued) -> dict[str, bool] | None:
            changes: dict[str, bool] = {}
            async with self._gate(caller):
                if caller in self._active:
                    return None
                for pulled in queued.pulled:  # the latest last: the caller's name ends on its image
                    adopted = await self._adopt(caller, pulled, queued.since, until)
                    if adopted is None:
                        return None
                    changes.update(adopted)
            return changes

        results = await asyncio.gather(*(rename(c, q) for c, q in batch.items()))
        done = [caller for caller, changes in zip(batch, results, strict=True) if changes is not None]
        changed = {name: shown for changes in results if changes for name, shown in changes.items()}
        if changed:
            await self._settle(self._status, changed, until)

        def paid() -> None:
            for caller in done:
                self._names.paid(caller)

        if done:
            await self._save(paid)

    async def _settle(self, status: str, wanted: dict[str, bool], until: float) -> None:
        """containerd's CRI learns of record changes from its event stream, a moment later: wait
        (briefly, and never past `until`) until its ImageStatus shows each name present or
        absent as `wanted`, so the caller's next call already sees the image by the name it
        asked for. A name whose record someone changed again meanwhile (an image removed as
        soon as it was named) is waited for no more: the CRI follows the records, not this
        renaming, and the renamings queued behind this one would wait for nothing."""
        call = unary_call(self._records.channel, status)
        deadline = min(time.monotonic() + SETTLE_TIMEOUT, until)
        pending = dict(wanted)

        async def shown(name: str) -> bool:
            request = cri.ImageStatusRequest(image=cri.ImageSpec(image=name)).SerializeToString()
            timeout = call_timeout(deadline, time.monotonic())
            answer = cri.ImageStatusResponse.FromString(await call(request, timeout=timeout))
            if bool(answer.image.id) == pending[name]:
                return True
            return (await self._records.get(name, deadline) is not None) != pending[name]

        while pending and time.monotonic() < deadline:
            try:
                done = await asyncio.gather(*(shown(name) for name in pending))
            except (OutOfTime, grpc.RpcError):
                return
            for name, settled in zip(list(pending), done, strict=True):
                if settled:
                    del pending[name]
            if pending:
                await asyncio.sleep(0.005)
        if pending:
            log.warning(
                "the runtime's CRI did not follow the renamed image records in time", names=",".join(pending)
            )

    # -- answers ------------------------------------------------------------------------------------

    @property
    def remembers(self) -> bool:
        """Whether any image was pulled under another name (else no answer needs naming)."""
        return bool(self._names)

    async def look(
        self, source: Reference, ask: Callable[[str], Awaitable[tuple[bool, T]]]
    ) -> tuple[str | None, T | None]:
        """Ask the runtime under each name the caller's image may be held under (`local_names`)
        until `ask` says it holds it there: (that name, its answer), or (None, the first answer).
        A remembered pulled name the runtime no longer holds is forgotten on the way."""
        caller = reported(source)
        first: T | None = None
        for name in self.local_names(source):
            held, answer = await ask(name)
            if held:
                return name, answer
            if name == self._names.target(caller) and not self._in_hand(caller):
                await self._forget([caller])  # pruned: the image is gone
            first = answer if first is None else first
        return None, first

    def local_names(self, source: Reference) -> list[str]:
        """Names the caller's image may be present under, most likely first: its own name and the
        name it was pulled as through the shim, then each candidate's name in plan order."""
        names = self.first_names(reported(source))
        for candidate in self._plan(source):
            name = reported(candidate.reference)
            if name not in names:
                names.append(name)
        return names

    def first_names(self, caller: str) -> list[str]:
        """Names the caller's image is most likely held under, in the order to look."""
        mapped = self._names.target(caller)
        if mapped is None or mapped == caller:
            return [caller]
        renamed = self.native or self._mode == DOCKER  # the caller's name is the runtime's own
        return [caller, mapped] if renamed else [mapped, caller]

    def answers_as_held(self, verbose: bool) -> bool:
        """Whether containerd's ImageStatus answer, for an image it holds under the name the
        caller sent, is the shim's answer too: containerd reads names by the grammar the shim
        does, and nothing is owed, waits for removal or goes into `info`."""
        return not verbose and self.native and not self._deferred.pending and not self._names.owing()

    def status(self, response: cri.ImageStatusResponse, caller: str | None, verbose: bool) -> bool:
        """Name an ImageStatus answer; True if it changed."""
        changed = self.image(response.image)
        if verbose and response.image.id:
            origin = self.origin([*([caller] if caller else []), *response.image.repo_tags])
            if origin is not None:
                response.info[INFO_KEY] = origin
                changed = True
        return changed

    def listing(self, response: cri.ListImagesResponse) -> bool:
        """Name every image of a ListImages answer; True if any changed."""
        changed = False
        for image in response.images:
            changed = self.image(image) or changed
        return changed

    def image(self, image: cri.Image) -> bool:
        """Without image records: the caller's names instead of the rewritten ones. With them the
        runtime's answer is already true, once renamed (`deferred`)."""
        if not self._names or (self.native and not self._deferred.pending):
            return False
        tags, digests = translate(image.repo_tags, image.repo_digests, self._names)
        if self._mode == DOCKER:  # in Docker's own spelling of the names it holds
            tags, digests = spelled(tags), spelled(digests)
        if (tags, digests) == (list(image.repo_tags), list(image.repo_digests)):
            return False
        image.ClearField("repo_tags")
        image.ClearField("repo_digests")
        image.repo_tags.extend(tags)
        image.repo_digests.extend(digests)
        return True

    def origin(self, names: Iterable[str]) -> str | None:
        """Where an image the shim pulled under another name came from, for verbose `info`."""
        for name in names:
            pulled = self._names.target(name)
            if pulled is not None and pulled != name:
                return json.dumps({"pulledAs": pulled, "registry": reference.parse(pulled).domain})
        return None

    async def prune(self, response: cri.ListImagesResponse) -> None:
        """Forget the pairs of images no longer on the node (listed under neither name). Not those
        of a pull still being answered or renamed: a listing made while the records are renamed
        may show the image under neither name, the CRI not having followed yet."""
        present = {name for image in response.images for name in (*image.repo_tags, *image.repo_digests)}
        gone = [
            t
            for t in self._names.targets()
            if t not in present
            and not self._names.callers(t) & present
            and not any(self._in_hand(c) for c in self._names.callers(t))
        ]
        if gone:
            await self._save(lambda: self._names.forget_targets(gone))

    # -- CreateContainer ------------------------------------------------------------------------------

    async def create_container(self, upstream: Upstream, method: str, raw: bytes, context: Context) -> bytes:
        """Without image records the runtime knows only the pulled name: map the caller's to it.
        With them, while the image's renaming waits (`deferred`), to the image's ID. Only the
        image field is decoded; everything else goes as it came."""
        if self._names and (not self.native or self._deferred.pending):
            try:
                request = cri.CreateContainerRequest.FromString(raw)
            except DecodeError:
                return await upstream.unary(method, raw, context)  # the runtime says what is wrong
            image = request.config.image.image
            if self.native:
                pulled = await self._waiting_id(upstream, method, image, context)
            else:
                pulled = self._mapped(image)
            if pulled is not None:
                request.config.image.image = pulled
                raw = request.SerializeToString()
        return await upstream.unary(method, raw, context)

    def _mapped(self, image: str) -> str | None:
        caller = reported_name(image)
        pulled = self._names.target(caller) if caller is not None else None
        return pulled if pulled != caller else None

    async def _waiting_id(self, upstream: Upstream, method: str, image: str, context: Context) -> str | None:
        """The ID of the image `image` names while its renaming waits: the pulled name may be
        removed any moment, the ID stays. None otherwise, or when the runtime does not say."""
        caller = reported_name(image)
        pulled = self._mapped(image)
        if caller is None or pulled is None or not self._deferred.holds(caller):
            return None
        status = method.replace("RuntimeService/CreateContainer", "ImageService/ImageStatus")
        request = cri.ImageStatusRequest(image=cri.ImageSpec(image=pulled)).SerializeToString()
        try:
            answer = await upstream.call(status, request, context)
        except grpc.RpcError:
            return None  # the call goes as asked, and the runtime says what it says
        return cri.ImageStatusResponse.FromString(answer).image.id or None


def _unsaved(done: asyncio.Future[None]) -> None:
    """A change of the name store that nobody waited for could not be written."""
    if not done.cancelled() and done.exception() is not None:
        log.warning("could not write the names file", error=str(done.exception()))


def spelled(names: Iterable[str]) -> list[str]:
    """Names as Docker spells them (`nginx:1.27` for `docker.io/library/nginx:1.27`), each once."""
    return list(dict.fromkeys(familiar(n) for n in names))


def translate(tags: Iterable[str], digests: Iterable[str], store: NameStore) -> tuple[list[str], list[str]]:
    """`repo_tags` and `repo_digests` with each rewritten name replaced by its callers' names, and
    each digest name of a rewritten repository by the callers' repositories at that digest. A
    name the node also holds directly (recorded as its own caller) stays."""
    names: dict[str, list[str]] = {"tags": [], "digests": []}
    moved: dict[str, set[str]] = {}  # rewritten repository -> the callers' repositories
    kept: set[str] = set()  # rewritten repositories the node also holds directly

    def add(name: str) -> None:
        bucket = names["digests" if "@" in name else "tags"]
        if name not in bucket:
            bucket.append(name)

    digests = list(digests)
    for name in (*tags, *digests):
        callers = store.callers(name)
        others = callers - {name}
        if not others:
            if "@" not in name:
                add(name)
            continue
        if name in callers:
            add(name)
            kept.add(repository(name))
        for caller in sorted(others):
            add(caller)
        moved.setdefault(repository(name), set()).update(repository(c) for c in others)
    for name in digests:
        if store.callers(name) - {name}:
            continue  # pulled by digest: done above
        repo, digest = repository(name), name.split("@", 1)[1]
        if repo not in moved or repo in kept:
            add(name)
        for caller_repo in sorted(moved.get(repo, ())):
            add(f"{caller_repo}@{digest}")
    return names["tags"], names["digests"]
