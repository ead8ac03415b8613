"""One step of keeping the config file merged with the ConfigMap: decide, validate, write if different.

`decide` is the whole decision and pure: what the ConfigMap's state and the file's bytes make of
each other, as a value that already says what it means (its `result` is the label of
`configmap_syncs_total`, `retry` whether the same input may pass later). `apply` only adds the
write. The file is replaced only by `write_atomic` (temp file, fsync, 0600, rename, fsync dir),
and only when the merged bytes differ from the bytes read, so a reader never sees half a file and
an unchanged ConfigMap never touches the file (the master reloads on every change it sees).
Every problem is one line, without a secret, and leaves the file as it was.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from image_cri_shim.atomic import write_atomic
from image_cri_shim.config import Config, ConfigMapRef
from image_cri_shim.syncer.merge import Rejected, merge
from image_cri_shim.syncer.snapshot import Snapshot


class Result(enum.Enum):
    """What became of one ConfigMap state (the `result` label of configmap_syncs_total)."""

    WRITTEN = "written"  # the merge differed from the file, which now holds it
    UNCHANGED = "unchanged"  # the file already held the merge
    ABSENT = "absent"  # no ConfigMap, or no key in it
    REJECTED = "rejected"  # the ConfigMap's text, or the file's, cannot be merged into a valid config
    FAILED = "failed"  # the merge could not be written (a full disk)


@dataclass(frozen=True)
class Applied:
    """The file holds the merge of the ConfigMap: `text`, valid as `config`."""

    text: bytes
    config: Config
    changes: bool  # `text` differs from what the file held: it is (or was) written
    notes: tuple[str, ...] = ()  # ConfigMap keys ignored, one line each
    passwords: tuple[str, ...] = ()

    @property
    def result(self) -> Result:
        return Result.WRITTEN if self.changes else Result.UNCHANGED

    @property
    def message(self) -> str:
        return "config updated from ConfigMap" if self.changes else "config already matches ConfigMap"


@dataclass(frozen=True)
class NotApplied:
    """The file stays as it was, for the reason `problem` (one line)."""

    result: Result  # ABSENT, REJECTED or FAILED
    problem: str
    passwords: tuple[str, ...] = ()

    @property
    def retry(self) -> bool:
        """The same input may pass later (a full disk): try again without waiting for a change."""
        return self.result is Result.FAILED


Outcome = Applied | NotApplied


def decide(snapshot: Snapshot, ref: ConfigMapRef, path: str, local: bytes) -> Outcome:
    """Pure: what bringing the file at `path`, which holds `local`, in line with `snapshot` means."""
    where = f"ConfigMap {ref.namespace}/{ref.name}"
    if snapshot.data is None:
        return NotApplied(Result.ABSENT, f"{where} not found: config file unchanged")
    wanted = snapshot.data.get(ref.key)
    if wanted is None:
        return NotApplied(Result.ABSENT, f"{where} has no key {ref.key}: config file unchanged")
    try:
        local_text = local.decode("utf-8-sig")
    except UnicodeDecodeError:
        return NotApplied(Result.REJECTED, f"config {path} is not UTF-8 text: not merged")
    result = merge(wanted, local_text, path)
    if isinstance(result, Rejected):
        problem = f"{where} key {ref.key} not applied: {result.reason}"
        return NotApplied(Result.REJECTED, problem, result.passwords)
    data = result.text.encode("utf-8")
    return Applied(data, result.config, data != local, result.notes, result.passwords)


def apply(snapshot: Snapshot, ref: ConfigMapRef, path: str, local: bytes) -> Outcome:
    """`decide`, then write the merge when it changes the file."""
    outcome = decide(snapshot, ref, path, local)
    if not isinstance(outcome, Applied) or not outcome.changes:
        return outcome
    try:
        write_atomic(path, outcome.text, 0o600)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        problem = f"cannot write config {path}: {reason}: file unchanged"
        return NotApplied(Result.FAILED, problem, outcome.passwords)
    return outcome
