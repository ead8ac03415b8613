"""The Prometheus metrics of all three processes, in one catalog.

Every process writes its samples to files in one directory (prometheus-client's multiprocess
mode, `$PROMETHEUS_MULTIPROC_DIR`, set by the master for its children); the master alone serves
them at `metricsAddress`, so the endpoint needs no grpc and stays up while workers come and go.
The counters of a worker that exited stay in the directory, so totals survive swaps and
crashes; its gauges leave with it.

A process without `metricsAddress` in its config, or started without the directory, gets
`OFF` for every metric: the call sites stay the same and prometheus-client is never imported.
Each metric is typed by the one small protocol it is used through (`Counter`, `Gauge`,
`Histogram`, and `Family` for one with labels), so a misspelled metric or call fails mypy.
Labels are bounded: registries are the configured domains, methods the CRI method table.
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Literal, Protocol, TypeVar

from image_cri_shim import __version__

if TYPE_CHECKING:
    import prometheus_client

DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
PREFIX = "image_cri_shim_"
# Registry probes and CRI calls: from a cached ImageStatus (~1 ms) to a long PullImage.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
GaugeMode = Literal["livemostrecent", "livesum", "livemax"]


class Counter(Protocol):
    def inc(self, amount: float = 1, /) -> None: ...


class Gauge(Protocol):
    def set(self, value: float, /) -> None: ...


class Histogram(Protocol):
    def observe(self, amount: float, /) -> None: ...


M = TypeVar("M", covariant=True)


class Family(Protocol[M]):
    """A metric with labels: one child per combination of label values."""

    def labels(self, *values: str) -> M: ...


class _Off:
    """Accepts every metric call and does nothing: each metric of a catalog that records nothing."""

    def labels(self, *_values: str) -> _Off:
        return self

    def inc(self, _amount: float = 1, /) -> None:
        pass

    def set(self, _value: float, /) -> None:
        pass

    def observe(self, _value: float, /) -> None:
        pass


OFF = _Off()


def active(metrics_address: str | None) -> bool:
    """Whether this process should record: the config asks for metrics and the master made the
    directory the samples go to."""
    return bool(metrics_address) and bool(os.environ.get(DIR_ENV))


class _Catalog:
    """Creates each metric for real when recording, as `OFF` otherwise."""

    def __init__(self, recording: bool) -> None:
        self.recording = recording

    def counter(self, name: str, doc: str) -> Counter:
        return self._counter(name, doc, ())

    def counters(self, name: str, doc: str, labels: tuple[str, ...]) -> Family[Counter]:
        return self._counter(name, doc, labels)

    def gauge(self, name: str, doc: str) -> Gauge:
        return self._gauge(name, doc, (), "livemostrecent")

    def gauges(
        self, name: str, doc: str, labels: tuple[str, ...], mode: GaugeMode = "livemostrecent"
    ) -> Family[Gauge]:
        return self._gauge(name, doc, labels, mode)

    def histograms(self, name: str, doc: str, labels: tuple[str, ...]) -> Family[Histogram]:
        if not self.recording:
            return OFF
        import prometheus_client

        return prometheus_client.Histogram(PREFIX + name, doc, labels, registry=None, buckets=LATENCY_BUCKETS)

    def _counter(self, name: str, doc: str, labels: tuple[str, ...]) -> _Off | prometheus_client.Counter:
        if not self.recording:
            return OFF
        import prometheus_client

        return prometheus_client.Counter(PREFIX + name, doc, labels, registry=None)

    def _gauge(
        self, name: str, doc: str, labels: tuple[str, ...], mode: GaugeMode
    ) -> _Off | prometheus_client.Gauge:
        if not self.recording:
            return OFF
        import prometheus_client

        return prometheus_client.Gauge(PREFIX + name, doc, labels, registry=None, multiprocess_mode=mode)


class MasterMetrics(_Catalog):
    def __init__(self, recording: bool) -> None:
        super().__init__(recording)
        self.build_info = self.gauges(
            "build_info", "Always 1; the labels say which build runs.", ("version", "python"), mode="livemax"
        )
        self.build_info.labels(__version__, ".".join(map(str, sys.version_info[:3]))).set(1)
        self.reloads = self.counters(
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
        self.restarts = self.counters(
            "child_restarts_total", "Children that exited unasked and were started again.", ("process",)
        )


class WorkerMetrics(_Catalog):
    def __init__(self, recording: bool) -> None:
        super().__init__(recording)
        self.decisions = self.counters(
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
        self.probe_seconds = self.histograms(
            "registry_probe_duration_seconds",
            "Manifest probes by registry and answer (found, not_found, denied, unreachable...).",
            ("registry", "answer"),
        )
        self.registry_up = self.gauges(
            "registry_up",
            "0 from a failed probe until one succeeds (skipped while backing off), else 1.",
            ("registry",),
        )
        self.failovers = self.counters(
            "pull_failovers_total",
            "Rewritten pulls that failed for a cause of the registry they went to, and were tried "
            "at the next source; by that registry and cause (not_found, denied, connection...).",
            ("registry", "cause"),
        )
        self.cri_seconds = self.histograms(
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
        self.syncs = self.counters(
            "configmap_syncs_total",
            "ConfigMap states handled: written, unchanged, absent (no ConfigMap or key), rejected (invalid)"
            " or failed (write error).",
            ("result",),
        )


# The catalogs code that takes one defaults to: every metric a no-op.
WORKER_OFF = WorkerMetrics(recording=False)
SYNCER_OFF = SyncerMetrics(recording=False)
