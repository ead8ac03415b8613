"""docs/metrics.md lists every metric the catalog defines, as `make docs` writes it."""

from __future__ import annotations

from image_cri_shim.metrics import OFF, MasterMetrics, SyncerMetrics, WorkerMetrics
from tools import metricsdoc


def test_the_metrics_table_is_current() -> None:
    text = metricsdoc.TARGET.read_text()
    assert metricsdoc.render(text) == text, "docs/metrics.md is stale: run `make docs`"


def test_names_follow_prometheus_conventions() -> None:
    for catalog in (MasterMetrics, WorkerMetrics, SyncerMetrics):
        for metric in vars(catalog(recording=True)).values():
            if not hasattr(metric, "describe"):
                continue
            family = metric.describe()[0]
            assert family.name.startswith("image_cri_shim_"), family.name
            if family.type == "histogram":
                assert family.name.endswith("_seconds"), family.name
            assert not any(label in ("image", "reference", "repository") for label in metric._labelnames)


def test_without_recording_every_metric_is_a_no_op() -> None:
    for catalog in (MasterMetrics, WorkerMetrics, SyncerMetrics):
        metrics = catalog(recording=False)
        assert all(m is OFF for k, m in vars(metrics).items() if k != "recording")
