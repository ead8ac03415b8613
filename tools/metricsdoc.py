"""Write the metrics table of docs/metrics.md from the catalog: `make docs`
(or `python -m tools.metricsdoc`). tests/unit/test_metricsdoc.py fails when the table is stale.

The rows are read off the metric objects the catalog really creates, so a metric added to
image_cri_shim/metrics.py shows up here with its type, labels and help text.
"""

from __future__ import annotations

import sys
from pathlib import Path

from image_cri_shim.metrics import MasterMetrics, SyncerMetrics, WorkerMetrics

ROOT = Path(__file__).resolve().parent.parent
TARGET = ROOT / "docs" / "metrics.md"
BEGIN = "<!-- metrics table: written by `make docs` from image_cri_shim/metrics.py -->"
END = "<!-- end of metrics table -->"


def table() -> str:
    rows = ["| metric | type | labels | process | meaning |", "|---|---|---|---|---|"]
    for process, catalog in (("master", MasterMetrics), ("worker", WorkerMetrics), ("syncer", SyncerMetrics)):
        for metric in vars(catalog(recording=True)).values():
            if not hasattr(metric, "describe"):
                continue
            family = metric.describe()[0]
            name = family.name + ("_total" if family.type == "counter" else "")
            labels = ", ".join(f"`{label}`" for label in metric._labelnames) or "—"
            rows.append(f"| `{name}` | {family.type} | {labels} | {process} | {family.documentation} |")
    return "\n".join(rows) + "\n"


def render(text: str) -> str:
    """`text` with the table between the markers replaced by the current one."""
    head, found, rest = text.partition(BEGIN)
    _, found_end, tail = rest.partition(END)
    if not (found and found_end):
        raise SystemExit(f"{TARGET}: the table markers are missing")
    return f"{head}{BEGIN}\n{table()}{END}{tail}"


def main() -> int:
    text = TARGET.read_text()
    new = render(text)
    if new != text:
        TARGET.write_text(new)
        print(f"wrote {TARGET.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
