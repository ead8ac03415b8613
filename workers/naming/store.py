"""Which caller name was pulled as which rewritten name, kept under `stateDir`
(docs/behaviour.md, "Names a client sees").

kubelet asks for `nginx:latest`; the shim pulled `registry.company.com/library/nginx:latest`.
On a runtime whose image records the shim cannot rename, the runtime knows only the second name,
so the shim must remember the pair to answer for the first (`naming`), across restarts and with
every registry down; on containerd the pair says where an image came from. A name recorded as
its own target is one the node also holds directly, so it stays listed. Names are kept in the
form the runtime reports them: `name:tag`, or `name@digest` for references that carry a digest.

A caller whose runtime records could not be renamed when its pull succeeded (the images API out
of reach, or no time left) is kept as owed, with when that pull began: the next lookup renames
them and removes the pulled records made since then, not a name the node held before.

The file is small and changes only on pulls and prunes. It is read without following a symbolic
link, without blocking on a FIFO and up to a bound, and nothing in a state directory another user
may change is read or written (`startup.state_dir_exposure`). Writers take an flock and merge with
what is on disk, so an old worker draining next to a new one never loses the other's pairs.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import stat
from collections.abc import Callable, Iterable, Iterator

from image_cri_shim import logs
from image_cri_shim.atomic import write_atomic
from image_cri_shim.smallfile import NotRegular, read_small
from image_cri_shim.startup import state_dir_exposure

log = logs.get("names")

FILE = "names.json"
LOCK = ".names.lock"
# A pair is about 150 bytes: room for some 50,000 images; a larger file is no names file.
MAX_BYTES = 8 << 20
State = tuple[dict[str, str], dict[str, float]]  # (caller -> pulled name, caller -> owed since)


class NameStore:
    def __init__(self, state_dir: str) -> None:
        self._dir = state_dir
        self._path = os.path.join(state_dir, FILE)
        self._targets: dict[str, str] = {}  # caller -> target
        self._callers: dict[str, set[str]] = {}  # target -> callers
        self._owed: dict[str, float] = {}  # caller -> when the pull whose renaming is owed began
        self._writable = True
        self._batch: list[Callable[[State], State]] | None = None  # changes held for one write
        try:
            os.makedirs(state_dir, mode=0o700, exist_ok=True)
        except OSError as err:
            self._writable = False
            log.warning(
                "state directory unusable, names kept in memory only", path=state_dir, error=err.strerror
            )
        exposed = state_dir_exposure(state_dir)
        if exposed is not None:
            # Another user could have planted its files: neither read nor written.
            self._writable = False
            log.warning("state directory not trusted", reason=exposed)
        self._replace(self._read() if exposed is None else ({}, {}))

    def __bool__(self) -> bool:
        return bool(self._targets)

    def target(self, caller: str) -> str | None:
        return self._targets.get(caller)

    def callers(self, target: str) -> set[str]:
        return self._callers.get(target, set())

    def targets(self) -> Iterator[str]:
        return iter(self._callers)

    def owing(self) -> list[str]:
        """The callers whose renaming is still owed."""
        return list(self._owed)

    def owed(self, caller: str) -> float | None:
        """When the pull of `caller` whose record renaming is still owed began (wall clock)."""
        return self._owed.get(caller)

    def record(self, caller: str, target: str) -> None:
        if self._targets.get(caller) != target:
            self._update({caller: target}, ())

    def owe(self, caller: str, since: float) -> None:
        """The renaming of `caller`'s pull, begun at `since`, is left for its next lookup."""
        if caller in self._targets and self._owed.get(caller) != since:
            self._update({}, (), {caller: since})

    def paid(self, caller: str) -> None:
        """`caller`'s records are renamed: nothing is owed any more."""
        if caller in self._owed:
            self._update({}, (), paid=[caller])

    def forget(self, callers: Iterable[str]) -> None:
        gone = [c for c in callers if c in self._targets]
        if gone:
            self._update({}, gone)

    def forget_targets(self, targets: Iterable[str]) -> None:
        self.forget([c for t in targets for c in self.callers(t)])

    def changed(self, changes: Iterable[Callable[[], None]]) -> None:
        """Make several changes (calls of the methods above) with one write of the file: pulls
        that end together cost one lock, one rename and one fsync between them."""
        self._batch = []
        try:
            for change in changes:
                change()
        finally:
            applied, self._batch = self._batch, None
        if applied:
            self._save(applied)

    # -- persistence ----------------------------------------------------------------------------

    def _replace(self, state: State) -> None:
        pairs, owed = state
        self._targets = pairs
        self._owed = {caller: since for caller, since in owed.items() if caller in pairs}
        self._callers = {}
        for caller, target in pairs.items():
            self._callers.setdefault(target, set()).add(caller)

    def _read(self) -> State:
        try:
            data = json.loads(read_small(self._path, MAX_BYTES, follow=False))
        except FileNotFoundError:
            return {}, {}
        except OSError as err:
            log.warning("ignoring unreadable names file", path=self._path, error=err.strerror or err)
            return {}, {}
        except ValueError as err:
            log.warning("ignoring unreadable names file", path=self._path, error=err)
            return {}, {}
        if not isinstance(data, dict):
            return {}, {}
        pairs, owed = data.get("names", {}), data.get("owed", {})
        return (
            {k: v for k, v in pairs.items() if isinstance(k, str) and isinstance(v, str)},
            {k: float(v) for k, v in owed.items() if isinstance(k, str) and isinstance(v, (int, float))},
        )

    def _update(
        self,
        add: dict[str, str],
        remove: Iterable[str],
        owe: dict[str, float] | None = None,
        paid: Iterable[str] = (),
    ) -> None:
        gone, settled = list(remove), list(paid)

        def apply(base: State) -> State:
            merged, owed = {**base[0], **add}, {**base[1], **(owe or {})}
            for caller in (*gone, *settled):
                owed.pop(caller, None)
            for caller in gone:
                merged.pop(caller, None)
            return merged, owed

        if self._batch is not None:  # the file is written once the batch is made (`changed`)
            self._batch.append(apply)
            self._replace(apply((self._targets, self._owed)))
            return
        if not self._save([apply]):
            self._replace(apply((self._targets, self._owed)))

    def _save(self, applied: list[Callable[[State], State]]) -> bool:
        """Apply `applied` to the file's content, under its lock, and write it once; whether the
        file could be written (the names are kept in memory either way)."""
        if not self._writable:
            return False
        try:
            with self._locked():
                merged = self._read()
                for apply in applied:
                    merged = apply(merged)
                document = {"names": merged[0], **({"owed": merged[1]} if merged[1] else {})}
                write_atomic(self._path, json.dumps(document, indent=1, sort_keys=True).encode() + b"\n")
        except OSError as err:
            log.warning("could not save names", path=self._path, error=err.strerror or err)
            return False
        self._replace(merged)
        return True

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        # Never through a symbolic link, never blocked by a FIFO: only a regular file is locked.
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
        fd = os.open(os.path.join(self._dir, LOCK), flags, 0o600)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise NotRegular(errno.EINVAL, f"{LOCK} is not a regular file")
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)
