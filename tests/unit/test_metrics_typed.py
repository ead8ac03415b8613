"""The metrics catalogs are typed: a misspelled metric, or a call a metric does not have, fails
mypy instead of raising inside PullImage on a node with `metricsAddress`."""

from __future__ import annotations

from pathlib import Path

from mypy import api

MISUSE = """\
from image_cri_shim.metrics import WORKER_OFF, SyncerMetrics

WORKER_OFF.cache_hits.inc()
WORKER_OFF.decisions.labels("rewritten", "r.io").inc()
WORKER_OFF.cache_hitz.inc()
WORKER_OFF.decisions.inc()
WORKER_OFF.cache_hits.observe(1.0)
SyncerMetrics(False).watch_up.labels("x")
"""


def test_a_misspelled_metric_or_a_wrong_call_fails_mypy(tmp_path: Path) -> None:
    source = tmp_path / "misuse.py"
    source.write_text(MISUSE)
    out, err, status = api.run(["--strict", "--no-error-summary", "--hide-error-context", str(source)])
    assert status == 1, out + err
    lines = sorted({int(line.split(":")[1]) for line in out.splitlines() if ": error:" in line})
    assert lines == [5, 6, 7, 8], out
    assert '"WorkerMetrics" has no attribute "cache_hitz"' in out
