"""`make bench` itself works: every figure is measured in the reduced mode (no timing asserted)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_benchmark_runs_every_figure() -> None:
    env = {**os.environ, "BENCH_QUICK": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "tools.bench"],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = [line for line in done.stdout.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    numbers = {row.split("|")[1].strip() for row in rows if row.split("|")[1].strip().isdigit()}
    assert numbers == {str(n) for n in range(1, 12)}, done.stdout
    assert any(row.split("|")[1].strip() == "4b" for row in rows), "the failover figure"
    assert "budget:" in done.stdout
