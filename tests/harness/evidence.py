"""Reliability evidence: every fault scenario records what it did and what it saw.

A scenario test calls `record(...)` once with the numbers it measured (calls made, calls that
failed, what was lost). With `$RELIABILITY_RECORD` set to a file, each record is appended to it
as one JSON line; `make reliability` runs the scenarios that way and turns the lines of that one
run into the table of docs/reliability.md. Without the variable, `record` checks its arguments
and writes nothing, so the suite runs the same scenarios either way.
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass

ENV = "RELIABILITY_RECORD"


@dataclass(frozen=True)
class Evidence:
    scenario: str  # what was done, e.g. "containerd stopped and restarted under load"
    load: str  # the load during it, e.g. "4 clients, ImageStatus + ListImages, 1,912 calls"
    faults: str  # what was injected, e.g. "containerd SIGKILL, 3 s down"
    failed: str  # failed calls, with why they failed where that is expected
    lost: str  # data lost ("none", or what)
    result: str  # the outcome in a few words, e.g. "UNAVAILABLE while down; ok 1.2 s after"
    test: str = ""  # the pytest node id, filled in by `record`


def record(scenario: str, *, load: str, faults: str, failed: str | int, lost: str, result: str) -> Evidence:
    """Record one scenario's outcome; returns it so a test can also assert on what it recorded."""
    evidence = Evidence(
        scenario=scenario,
        load=load,
        faults=faults,
        failed=str(failed),
        lost=lost,
        result=result,
        test=os.environ.get("PYTEST_CURRENT_TEST", "").rsplit(" ", 1)[0],
    )
    path = os.environ.get(ENV)
    if path:
        line = json.dumps(asdict(evidence), ensure_ascii=False) + "\n"
        with open(path, "a", encoding="utf-8") as out:
            fcntl.flock(out, fcntl.LOCK_EX)
            out.write(line)
    return evidence


def read(path: str) -> list[Evidence]:
    """The records of one run, in the order they were made."""
    with open(path, encoding="utf-8") as source:
        return [Evidence(**json.loads(line)) for line in source if line.strip()]
