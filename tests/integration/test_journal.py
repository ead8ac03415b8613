"""Log lines as a real process writes them: its own time first, except into the journal.

systemd sets $JOURNAL_STREAM to "<device>:<inode>" of the stream it connected to the service's
stdout/stderr; journald stamps every line itself, and takes a leading `<N>` as the line's syslog
priority (sd-daemon(3)). Each test starts a child Python that sets up logging as the shim's
processes do and writes an info and a warning line, with stderr going to a file.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

CHILD = """
from image_cri_shim import logs
logs.setup("worker", gen=3)
logs.get("test").info("rewrite decision", image="docker.io/library/nginx:1.27", why="found")
logs.get("test").warning("registry unreachable", registry="backup.company.com")
"""
LINES = [
    'level=info proc=worker gen=3 msg="rewrite decision" image=docker.io/library/nginx:1.27 why=found',
    'level=warning proc=worker gen=3 msg="registry unreachable" registry=backup.company.com',
]
STAMPED = re.compile(r"time=(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z) (.*)")


def run_child(tmp_path: Path, journal_stream: str | None) -> str:
    """The child's stderr; `journal_stream` is $JOURNAL_STREAM ("match": that of its stderr file)."""
    log = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(log, "w") as stderr:
        if journal_stream == "match":
            info = os.fstat(stderr.fileno())
            journal_stream = f"{info.st_dev}:{info.st_ino}"
        if journal_stream is not None:
            env["JOURNAL_STREAM"] = journal_stream
        subprocess.run([sys.executable, "-c", CHILD], stderr=stderr, env=env, check=True, timeout=30)
    return log.read_text()


def test_own_timestamp_without_journald(tmp_path: Path) -> None:
    before = time.time()
    text = run_child(tmp_path, None)
    after = time.time()
    lines = text.splitlines()
    assert len(lines) == len(LINES), text
    for line, expected in zip(lines, LINES, strict=True):
        found = STAMPED.fullmatch(line)
        assert found is not None, f"no leading RFC 3339 UTC time= field: {line!r}"
        assert found.group(2) == expected
        stamped = datetime.strptime(found.group(1), "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()
        assert before - 0.001 <= stamped <= after, (before, found.group(1), after)


def test_journal_lines_have_no_timestamp_and_a_priority(tmp_path: Path) -> None:
    """Into the journal: no time (journald's own), and the syslog priority journald strips."""
    assert run_child(tmp_path, "match").splitlines() == [f"<6>{LINES[0]}", f"<4>{LINES[1]}"]


@pytest.mark.parametrize("value", ["", "8:1", "not-a-stream"])
def test_inherited_journal_stream_for_another_stream_keeps_the_timestamp(tmp_path: Path, value: str) -> None:
    """A process that inherited $JOURNAL_STREAM but writes elsewhere (redirected) stamps its lines."""
    text = run_child(tmp_path, value)
    found = [STAMPED.fullmatch(line) for line in text.splitlines()]
    assert [match.group(2) if match else None for match in found] == LINES, text
