"""One step of keeping the config file merged with the ConfigMap: decide, validate, write if different.

The file is replaced only by `write_atomic` (temp file, fsync, 0600, rename, fsync dir), and only
when the merged bytes differ from the bytes read, so a reader never sees half a file and an
unchanged ConfigMap never touches the file (the master reloads on every change it sees).
Every problem is one line, without a secret, and leaves the file as it was.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from image_cri_shim.atomic import write_atomic
from image_cri_shim.config import Config, ConfigMapRef
from image_cri_shim.syncer.merge import Rejected, merge
from image_cri_shim.syncer.snapshot import Snapshot


@dataclass(frozen=True)
class Outcome:
    written: bool = False
    text: bytes | None = None  # what the file holds after a successful step
    config: Config | None = None
    problem: str | None = None  # one line; the file is unchanged
    retry: bool = False  # the problem may pass with the same input (a full disk): try again later
    notes: tuple[str, ...] = ()
    passwords: tuple[str, ...] = ()


def apply(snapshot: Snapshot, ref: ConfigMapRef, path: str, local: bytes) -> Outcome:
    """Bring the file at `path`, which holds `local`, in line with `snapshot`."""
    where = f"ConfigMap {ref.namespace}/{ref.name}"
    if snapshot.data is None:
        return Outcome(problem=f"{where} not found: config file unchanged")
    wanted = snapshot.data.get(ref.key)
    if wanted is None:
        return Outcome(problem=f"{where} has no key {ref.key}: config file unchanged")
    try:
        local_text = local.decode("utf-8-sig")
    except UnicodeDecodeError:
        return Outcome(problem=f"config {path} is not UTF-8 text: not merged")
    result = merge(wanted, local_text, path)
    if isinstance(result, Rejected):
        return Outcome(
            problem=f"{where} key {ref.key} not applied: {result.reason}", passwords=result.passwords
        )
    data = result.text.encode("utf-8")
    done = Outcome(text=data, config=result.config, notes=result.notes, passwords=result.passwords)
    if data == local:
        return done
    try:
        write_atomic(path, data, 0o600)
    except OSError as err:
        reason = err.strerror or type(err).__name__
        return Outcome(
            problem=f"cannot write config {path}: {reason}: file unchanged",
            retry=True,
            passwords=result.passwords,
        )
    return replace(done, written=True)
