"""The soak of `make soak` in its reduced form: about a minute of mixed load and faults.

Zero failed calls outside those a worker SIGKILL caused, nothing lost, and after the warm-up
RSS growth under 10 % and open descriptors and threads flat for the master, the serving worker
(across generations) and the syncer.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from tools import soak

SECONDS = 70.0
WARMUP = 15.0


@pytest.mark.integration
@pytest.mark.timeout(300)
def test_reduced_soak() -> None:
    work = Path(tempfile.mkdtemp(prefix="soak-"))
    try:
        report = soak.run(SECONDS, work, warmup=WARMUP, syncer_min_age=20.0)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    soak.evidence(report, reduced=True)
    bad = report.verdict()
    assert not bad, "\n".join([*bad, report.log_tail])
    assert report.kills and report.faults["kill-syncer"] >= 1, report.faults
    assert sum(report.calls.values()) > 2000 and report.calls["PullImage"] > 20, report.calls
