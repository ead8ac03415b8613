"""Which image records a rewritten pull leaves behind, and when, as values: the records to create
under the caller's name and the pulled ones to remove (`renaming`), now or later (`when`), and
what is owed once it was tried (`ledger`).
`naming` carries them out on containerd's images API or Docker Engine's API; the rules are the
same, only what a runtime can hold differs.

A runtime's records of `registry.company.com/library/nginx:1.27` are the tag and, beside it,
`registry.company.com/library/nginx@sha256:…`. containerd holds both kinds under any name, so
both are copied. Docker Engine makes digest records only when it pulls, never on request (its tag
API refuses a digest): there the tag is copied and the pulled digest record removed, and an image
pulled by digest alone keeps its pulled record (nothing else would keep the image), to be
translated in answers instead.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from image_cri_shim import reference
from image_cri_shim.reference import Reference


def reported(ref: Reference) -> str:
    """The spelling a runtime reports for an image pulled as `ref` (repo_tags or repo_digests)."""
    return ref.digest_form(ref.digest) if ref.digest else str(ref)


def repository(name: str) -> str:
    """`host/path:tag` or `host/path@digest` -> `host/path`."""
    if "@" in name:
        return name.split("@", 1)[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass(frozen=True)
class Renaming:
    """What to do to a runtime's records: copy each `(pulled, caller)` pair, then remove `remove`."""

    create: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()
    kept: tuple[str, ...] = ()  # pulled records that stay (held before the pull, or the image's last)

    @property
    def complete(self) -> bool:
        """Whether the caller's name is all a client sees afterwards (nothing left to translate)."""
        return bool(self.create) and not self.kept


def renames(caller: str, pulled: str, digest: str) -> list[tuple[str, str]]:
    """(record of the pulled name, record under the caller's name) pairs: the name itself and,
    for a tag, the `repository@digest` record the runtime keeps beside it."""
    pairs = [(pulled, caller)]
    if "@" not in pulled and digest:
        pairs.append((f"{repository(pulled)}@{digest}", f"{repository(caller)}@{digest}"))
    return pairs


def renaming(
    caller: str, pulled: str, digest: str, held: Iterable[str], before: Iterable[str], digests: bool = True
) -> Renaming:
    """The renaming of `caller`'s image, pulled as `pulled` (manifest `digest`). `held`: the pulled
    records the runtime has now; `before`: those it had before the pull began (they stay: the node
    held that name already); `digests`: whether the runtime can create a digest record on request."""
    held, before = set(held), set(before)
    create, remove, kept = [], [], []
    pairs = [(old, new) for old, new in renames(caller, pulled, digest) if old in held]
    for old, new in pairs:
        if digests or "@" not in new:
            create.append((old, new))
    for old, _ in pairs:
        if old in before or not create:  # nothing else would keep the image: it stays as pulled
            kept.append(old)
        else:
            remove.append(old)
    return Renaming(tuple(create), tuple(remove), tuple(kept))


@dataclass(frozen=True)
class When:
    """When an answered rewritten pull's records are renamed: now, or after the pulls and the
    renamings of other images (`defer`, owed until then); `since`: pulled records made since
    then are removed (None: none, another pull of the name is still in the runtime and the last
    of them removes them)."""

    since: float | None = None
    defer: bool = False


def when(others: int, began: float, owed: float | None, busy: bool, records: bool) -> When:
    """`others`: pulls of the same name still in the runtime (it reads the pulled records to
    finish); `began`: the earliest start of this name's pulls; `owed`: when the pull of a renaming
    still owed began; `busy`: pulls of other images not answered yet, or renamings deferred and not
    done yet; `records`: the runtime's records are containerd's, whose every write queues behind
    theirs (the last of many pulls would wait for the renamings of all the others)."""
    if others:
        return When()
    since = began if owed is None else min(began, owed)
    return When(since, defer=records and busy)


@dataclass(frozen=True)
class Owe:
    """The renaming is owed: the next lookup or full listing does it; `since`: when the pull
    whose records it renames began (its records are told from others by their times)."""

    since: float


PAID = "paid"  # nothing is owed any more
UNCHANGED = None  # what is owed stays as it was
Ledger = Owe | str | None


def ledger(since: float | None, renamed: bool, owed: float | None, queued: bool) -> Ledger:
    """What is owed after a renaming was tried, kept across restarts. `since`: the pulled records
    it was to take (None: none, nothing was tried); `renamed`: whether it was done (or found
    nothing to do), not left for later; `owed`: when an owed renaming's pull began, if one is;
    `queued`: the name waits in the renaming queue, which pays when it is done."""
    if since is None:
        return UNCHANGED
    if not renamed:
        return Owe(since)
    return PAID if owed is not None and not queued else UNCHANGED


def reported_name(image: str) -> str | None:
    """How a runtime reports the image named `image` (`reported`); None for an image ID, an empty
    or an unparsable name."""
    if not image or reference.is_image_id(image):
        return None
    try:
        return reported(reference.parse(image))
    except reference.ReferenceError:
        return None


def foreign_ref(image_ref: str, caller: str) -> bool:
    """Whether a PullImage `image_ref` names another repository than the caller's (a rewritten
    pull's registry): the caller must get the image's ID instead. An ID is never foreign."""
    named = reported_name(image_ref)
    return named is not None and repository(named) != repository(caller)
