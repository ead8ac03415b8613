"""The names file and its lock as another user could have left them: a FIFO, a symbolic link,
a huge file, a directory anyone may write (workers/naming/store.py). Files in a temporary directory;
no sockets, no processes."""

from __future__ import annotations

import contextlib
import json
import os
import threading
from pathlib import Path

from image_cri_shim.workers.naming.store import FILE, LOCK, MAX_BYTES, NameStore

PAIR = {"names": {"docker.io/library/nginx:latest": "evil.example/x:1"}}


def opened(state: Path) -> NameStore:
    """A NameStore over `state`, made in a thread so that a blocking open fails the test
    instead of hanging it."""
    made: list[NameStore] = []
    thread = threading.Thread(target=lambda: made.append(NameStore(str(state))), daemon=True)
    thread.start()
    thread.join(5)
    assert made, f"opening the names in {state} blocked"
    return made[0]


def test_a_fifo_for_names_json_blocks_nothing(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.mkfifo(state / FILE)
    try:
        names = opened(state)
    finally:  # a blocked reader, had there been one, gets its end of file
        with contextlib.suppress(OSError):  # ENXIO: no reader
            os.close(os.open(state / FILE, os.O_WRONLY | os.O_NONBLOCK))
    assert not names


def test_names_json_is_not_read_through_a_symbolic_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(json.dumps(PAIR))
    (state / FILE).symlink_to(elsewhere)
    assert opened(state).target("docker.io/library/nginx:latest") is None


def test_a_names_file_past_the_bound_is_ignored(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / FILE).write_text(json.dumps(PAIR) + " " * MAX_BYTES)
    assert not opened(state)


def test_the_lock_is_never_taken_through_a_symbolic_link(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    planted = tmp_path / "made-by-root"
    (state / LOCK).symlink_to(planted)
    names = opened(state)
    names.record("docker.io/library/a:1", "r.example.com/library/a:1")
    assert not planted.exists()
    assert names.target("docker.io/library/a:1") == "r.example.com/library/a:1", "kept in memory"
    assert not (state / FILE).exists()


def test_a_state_directory_others_may_write_is_neither_read_nor_written(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o777)
    (state / FILE).write_text(json.dumps(PAIR))
    before = (state / FILE).read_bytes()
    names = opened(state)
    assert names.target("docker.io/library/nginx:latest") is None, "a planted pair is not used"
    names.record("docker.io/library/a:1", "r.example.com/library/a:1")
    assert names.target("docker.io/library/a:1") == "r.example.com/library/a:1"
    assert (state / FILE).read_bytes() == before
    assert not (state / LOCK).exists()


def test_a_state_directory_only_root_may_change_keeps_its_names(tmp_path: Path) -> None:
    state = tmp_path / "state"
    names = opened(state)
    names.record("docker.io/library/a:1", "r.example.com/library/a:1")
    assert (state.stat().st_mode & 0o777, (state / FILE).stat().st_mode & 0o777) == (0o700, 0o600)
    assert opened(state).target("docker.io/library/a:1") == "r.example.com/library/a:1"
