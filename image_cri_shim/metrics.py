"""The Prometheus metrics of all three processes, in one catalog.

Every process writes its samples to files in one directory (prometheus-client's multiprocess
mode, `$PROMETHEUS_MULTIPROC_DIR`, set by the master for its children); the master alone serves
them at `metricsAddress`, so the endpoint needs no grpc and stays up while workers come and go.
The counters of a worker that exited stay in the directory, so totals survive swaps and
crashes; its gauges leave with it.

A process without `metricsAddress` in its config, or started without the directory, gets
`OFF` for every metric: the call sites stay the same and prometheus-client is never imported.
Labels are bounded: registries are the configured domains, methods the CRI method table.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Literal

from image_cri_shim import __version__

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "image_cri_shim_"
# Registry probes and CRI calls: from a cached ImageStatus (~1 ms) to a long PullImage.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
GaugeMode = Literal["livemostrecent", "livesum", "livemax"]


class _Off:
    """Accepts every metric call and does nothing; also stands for a whole catalog that records
    nothing (`OFF.cache_hits.inc()`), the default of code that takes a catalog."""

    def __getattr__(self, _name: str) -> _Off:
        return self

    def labels(self, *_values: str, **_labels: str) -> _Off:
        return self

    def inc(self, _amount: float = 1) -> None:
        pass

    def set(self, _value: float) -> None:
        pass

    def observe(self, _value: float) -> None:
        pass


OFF: Any = _Off()


def active(metrics_address: str | None) -> bool:
    """Whether this process should record: the config asks for metrics and the master made the
    directory the samples go to."""
    return bool(metrics_address) and bool(os.environ.get(DIR_ENV))


class _Catalog:
    """Creates each metric for real when recording, as `OFF` otherwise."""

    def __init__(self, recording: bool) -> None:
        self.recording = recording

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
        if not self.recording:
            return OFF
        from prometheus_client import Counter

        return Counter(PREFIX + name, doc, labels, registry=None)

    def gauge(
        self, name: str, doc: str, labels: tuple[str, ...] = (), mode: GaugeMode = "livemostrecent"
    ) -> Any:
        if not self.recording:
            return OFF
        from prometheus_client import Gauge

        return Gauge(PREFIX + name, doc, labels, registry=None, multiprocess_mode=mode)

    def histogram(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Any:
        if not self.recording:
            return OFF
        from prometheus_client import Histogram

        return Histogram(PREFIX + name, doc, labels, registry=None, buckets=LATENCY_BUCKETS)


class MasterMetrics(_Catalog):
    def __init__(self, recording: bool) -> None:
        super().__init__(recording)
        self.build_info = self.gauge(
            "build_info", "Always 1; the labels say which build runs.", ("version", "python"), mode="livemax"
        )
        self.build_info.labels(__version__, ".".join(map(str, sys.version_info[:3]))).set(1)
        self.reloads = self.counter(
            "reloads_total",
            "Reloads by what triggered them (signal, file, poll, command) and how they ended.",
            ("trigger", "result"),
        )
        self.last_reload_ok = self.gauge(
            "config_last_reload_successful",
            "1 if the last reload served the new config, 0 if it was refused.",
        )
        self.last_reload_ok.set(1)
        self.generation = self.gauge("worker_generation", "Generation number of the worker serving now.")
        self.restarts = self.counter(
            "child_restarts_total", "Children that exited unasked and were started again.", ("process",)
        )


class WorkerMetrics(_Catalog):
    def __init__(self, recording: bool) -> None:
        super().__init__(recording)
        self.decisions = self.counter(
            "rewrite_decisions_total",
            "PullImage decisions: rewritten to a registry, unchanged (pulled as asked; `registry` set "
            "when the image's own registry is a configured one that holds it), refused (upstream: false) "
            "or error.",
            ("result", "registry"),
        )
        self.cache_hits = self.counter("cache_hits_total", "Rewrite decisions answered from the cache.")
        self.cache_misses = self.counter(
            "cache_misses_total", "Rewrite decisions that needed registry probes."
        )
        self.cache_evictions = self.counter(
            "cache_evictions_total", "Cached decisions dropped to make room (imageCacheSize)."
        )
        self.probe_seconds = self.histogram(
            "registry_probe_duration_seconds",
            "Manifest probes by registry and answer (found, not_found, denied, unreachable...).",
            ("registry", "answer"),
        )
        self.registry_up = self.gauge(
            "registry_up",
            "0 from a failed probe until one succeeds (skipped while backing off), else 1.",
            ("registry",),
        )
        self.failovers = self.counter(
            "pull_failovers_total",
            "Rewritten pulls that failed for a cause of the registry they went to, and were tried "
            "at the next source; by that registry and cause (not_found, denied, connection...).",
            ("registry", "cause"),
        )
        self.cri_seconds = self.histogram(
            "cri_call_duration_seconds",
            "Unary calls forwarded to the container runtime, by method and gRPC status code.",
            ("method", "code"),
        )


class SyncerMetrics(_Catalog):
    def __init__(self, recording: bool) -> None:
        super().__init__(recording)
        self.watch_up = self.gauge("configmap_watch_up", "1 while a watch on the ConfigMap is open.")
        self.last_sync = self.gauge(
            "configmap_last_sync_timestamp_seconds", "Unix time the ConfigMap was last read and applied."
        )
        self.syncs = self.counter(
            "configmap_syncs_total",
            "ConfigMap states handled: written, unchanged, absent (no ConfigMap or key), rejected (invalid)"
            " or failed (write error).",
            ("result",),
        )
