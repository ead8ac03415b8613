"""`make soak`: the whole service for ten minutes under mixed load and faults; what fails, what grows.

The real stack: a private containerd, two docker-registry instances (one plain, one with Basic
auth, each holding images only it has), the stand-in API server with the ConfigMap, and the
service started as `image-cri-shim -f CONFIG` (master, worker, syncer). Client threads call
ImageStatus, ListImages, PullImage and RemoveImage through the shim with kubelet's reconnect
settings, while a controller reloads every few seconds (SIGHUP, config edits, ConfigMap
changes, alternating), sends malformed ConfigMap versions, and now and then kills the worker or
the syncer with SIGKILL. A sampler reads RSS, open descriptors and threads of the master, the
serving worker (across generations) and the syncer.

A failed call is allowed only when the SIGKILL of a worker caused it: it was in flight when the
worker died, or was issued before the replacement served. Every other failure counts. After the
run nothing may be lost: the config file holds the last ConfigMap version and every image pulled
through the shim is still present under the name it was pulled as, after one more reload.

`SOAK_SECONDS` shortens the run (tests/integration/test_soak.py runs about a minute of it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import signal
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from image_cri_shim.config import load
from tests.harness.cri import CriClient
from tests.harness.evidence import record
from tests.harness.node import Stack
from tests.harness.processes import HarnessError, cri_socket_answers, wait_for
from tests.harness.registry import Registry
from tests.harness.service import Service, Usage, alive, start_service, usage

DEFAULT_SECONDS = 600.0
CLIENTS = 4
STEP = 3.0  # seconds between two faults (reloads every few seconds)
PULL_EVERY = 10  # a client pulls every this many iterations (and removes first every other time)
PAUSE = 0.02  # between two iterations of a client: a busy node, not a benchmark
READY_TIMEOUT = 20.0
# The master backs off restarting a syncer that ran less than a minute (a crash loop, to it);
# the full soak kills only syncers older than that, so each comes back at once.
SYNCER_MIN_AGE = 65.0
CONFIGMAP = "image-cri-shim"
KEY = "registries.yaml"
# One cycle of faults, one every STEP seconds.
CYCLE = (
    "sighup",
    "edit",
    "configmap",
    "sighup",
    "malformed-configmap",
    "edit",
    "kill-worker",
    "configmap",
    "sighup",
    "kill-syncer",
)


@dataclass(frozen=True)
class Failure:
    method: str
    started: float
    ended: float
    error: str


@dataclass(frozen=True)
class Kill:
    """A worker SIGKILL: from the kill until a new connection to the shim socket succeeds."""

    pid: int
    killed: float
    back: float


@dataclass
class Report:
    seconds: float
    warmup: float
    calls: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    kills: list[Kill] = field(default_factory=list)
    faults: Counter[str] = field(default_factory=Counter)
    reload_times: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # what went wrong besides failed calls
    samples: dict[str, list[tuple[float, Usage]]] = field(default_factory=dict)
    lost: list[str] = field(default_factory=list)
    present: dict[str, bool] = field(default_factory=dict)  # image -> pulled last (True) or removed
    log_tail: str = ""  # the service's last log lines, shown when the soak fails

    def classify(self) -> tuple[list[Failure], list[Failure], list[Failure]]:
        """(in flight when a worker was killed, issued before its replacement served, all others)."""
        in_flight, gap, others = [], [], []
        for failure in self.failures:
            kill = next(
                (k for k in self.kills if failure.started <= k.back and failure.ended >= k.killed), None
            )
            if kill is None:
                others.append(failure)
            elif failure.started < kill.killed:
                in_flight.append(failure)
            else:
                gap.append(failure)
        return in_flight, gap, others

    def growth(self, role: str) -> tuple[Usage, Usage] | None:
        """Median usage in the first and the last quarter after the warm-up."""
        samples = [(t, u) for t, u in self.samples.get(role, []) if t >= self.warmup]
        if len(samples) < 4:
            return None
        end = max(t for t, _ in samples)
        quarter = (end - self.warmup) / 4
        first = [u for t, u in samples if t <= self.warmup + quarter]
        last = [u for t, u in samples if t >= end - quarter]
        if not first or not last:
            return None
        return median_usage(first), median_usage(last)

    def summary(self) -> str:
        in_flight, gap, others = self.classify()
        lines = [
            f"soak: {self.seconds:.0f} s (warm-up {self.warmup:.0f} s), {CLIENTS} client threads",
            f"calls: {sum(self.calls.values())} ("
            + ", ".join(f"{m} {n}" for m, n in sorted(self.calls.items()))
            + ")",
            f"failed: {len(others)} outside killed workers; {len(in_flight) + len(gap)} caused by "
            f"{len(self.kills)} worker SIGKILLs ({len(in_flight)} in flight at the kill, "
            f"{len(gap)} issued before the replacement served)",
            "faults: " + ", ".join(f"{k} {n}" for k, n in sorted(self.faults.items())),
        ]
        if self.reload_times:
            lines.append(
                f"reload to READY=1: p50 {statistics.median(self.reload_times) * 1000:.0f} ms, "
                f"max {max(self.reload_times) * 1000:.0f} ms over {len(self.reload_times)}"
            )
        if self.kills:
            recovery = [k.back - k.killed for k in self.kills]
            lines.append(
                f"worker SIGKILL to a serving replacement: p50 {statistics.median(recovery) * 1000:.0f} ms, "
                f"max {max(recovery) * 1000:.0f} ms"
            )
        lines.append("resources (median of the first quarter after the warm-up -> of the last quarter):")
        for role in ("master", "worker", "syncer"):
            grown = self.growth(role)
            if grown is None:
                lines.append(f"  {role:7} too few samples")
                continue
            a, b = grown
            lines.append(
                f"  {role:7} RSS {a.rss_kib / 1024:.1f} -> {b.rss_kib / 1024:.1f} MiB "
                f"({rss_growth(a, b) * 100:+.1f} %), fds {a.fds} -> {b.fds}, "
                f"threads {a.threads} -> {b.threads}"
            )
        kinds = Counter(f"{f.method}: {f.error[:200]}" for f in others)
        for kind, count in kinds.most_common(10):
            lines.append(f"  FAILED {count} x {kind}")
        if others:
            lines.append(f"  first failure at {others[0].started:.1f} s, last at {others[-1].started:.1f} s")
        lines.extend(f"  PROBLEM {p}" for p in self.problems[:10])
        lines.extend(f"  LOST {item}" for item in self.lost)
        return "\n".join(lines)

    def verdict(self, rss_limit: float = 0.10, fd_slack: int = 3, thread_slack: int = 3) -> list[str]:
        """What fails the soak (empty: it passed)."""
        bad = []
        _, _, others = self.classify()
        if others:
            bad.append(f"{len(others)} failed calls outside killed workers, e.g. {others[0]}")
        bad.extend(self.problems)
        bad.extend(f"lost: {item}" for item in self.lost)
        for role in ("master", "worker", "syncer"):
            grown = self.growth(role)
            if grown is None:
                bad.append(f"{role}: too few samples after the warm-up")
                continue
            a, b = grown
            if rss_growth(a, b) >= rss_limit:
                bad.append(
                    f"{role}: RSS grew {rss_growth(a, b) * 100:.1f} % ({a.rss_kib} -> {b.rss_kib} KiB)"
                )
            if b.fds > a.fds + fd_slack:
                bad.append(f"{role}: open fds grew {a.fds} -> {b.fds}")
            if b.threads > a.threads + thread_slack:
                bad.append(f"{role}: threads grew {a.threads} -> {b.threads}")
        return bad


def median_usage(values: list[Usage]) -> Usage:
    return Usage(
        int(statistics.median(u.rss_kib for u in values)),
        int(statistics.median(u.fds for u in values)),
        int(statistics.median(u.threads for u in values)),
    )


def rss_growth(a: Usage, b: Usage) -> float:
    return (b.rss_kib - a.rss_kib) / a.rss_kib


def age(pid: int) -> float:
    """Seconds since `pid` started (0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            start_ticks = int(f.read().rsplit(")", 1)[1].split()[19])
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    return uptime - start_ticks / os.sysconf("SC_CLK_TCK")


# -- load ------------------------------------------------------------------------------------------


class Load:
    """Client threads, each with its own channel and image, as kubelet's image manager calls."""

    def __init__(self, socket: Path, images: list[str], report: Report, clock: Callable[[], float]) -> None:
        self._socket = socket
        self._images = images
        self._report = report
        self._clock = clock
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"client-{i}", daemon=True)
            for i in range(CLIENTS)
        ]
        for thread in self._threads:
            thread.start()

    def _call(self, counts: Counter[str], method: str, action: Callable[[], object]) -> bool:
        started = self._clock()
        try:
            action()
        except grpc.RpcError as err:
            failure = Failure(method, started, self._clock(), f"{err.code()}: {err.details()}")
            with self._lock:
                self._report.failures.append(failure)
            return False
        counts[method] += 1
        return True

    def _run(self, index: int) -> None:
        image = self._images[index % len(self._images)]
        shared = self._images[0]
        counts: Counter[str] = Counter()
        with CriClient(self._socket, timeout=10, pull_timeout=60) as client:
            for i in itertools.count(1):
                if self._stop.is_set():
                    break
                ok = self._call(counts, "ImageStatus", lambda: client.status(image))
                ok = ok and self._call(counts, "ImageStatus", lambda: client.status(shared))
                ok = ok and self._call(counts, "ListImages", client.list)
                if ok and i % PULL_EVERY == 0:
                    self._set_present(image, None)  # unknown until the calls below succeed
                    if i % (2 * PULL_EVERY) == 0:
                        ok = self._call(counts, "RemoveImage", lambda: client.remove(image))
                    ok = ok and self._call(counts, "PullImage", lambda: client.pull(image))
                    self._set_present(image, True if ok else None)
                if not ok:
                    # as kubelet does: the next attempt comes later, once the socket answers again
                    with contextlib.suppress(grpc.FutureTimeoutError):
                        grpc.channel_ready_future(client.channel).result(timeout=10)
                self._stop.wait(PAUSE)
        with self._lock:
            self._report.calls.update(counts)

    def _set_present(self, image: str, present: bool | None) -> None:
        with self._lock:
            if present is None:
                self._report.present.pop(image, None)
            else:
                self._report.present[image] = present

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(70)
            if thread.is_alive():
                self._report.problems.append(f"{thread.name} did not finish its last call within 70 s")


class Sampler:
    """RSS, fds and threads of the master, the serving worker and the syncer, once a second.

    A worker or syncer younger than 2 s is skipped: a process still importing is not comparable."""

    def __init__(self, service: Service, report: Report, clock: Callable[[], float]) -> None:
        self._service = service
        self._report = report
        self._clock = clock
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            with contextlib.suppress(OSError, AssertionError):
                for role, pid in self._service.pids().items():
                    if role != "master" and age(pid) < 2.0:
                        continue
                    sample = usage(pid)
                    if sample is not None:
                        self._report.samples.setdefault(role, []).append((self._clock(), sample))

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


# -- faults ------------------------------------------------------------------------------------------


class Controller:
    """One fault every STEP seconds, in the order of CYCLE; waits for each reload to finish."""

    def __init__(
        self,
        service: Service,
        node: Stack,
        report: Report,
        clock: Callable[[], float],
        syncer_min_age: float = SYNCER_MIN_AGE,
    ) -> None:
        self.service = service
        self.node = node
        self.report = report
        self.clock = clock
        self.syncer_min_age = syncer_min_age
        self.version = 0  # of the ConfigMap content, not the resourceVersion

    def configmap_text(self) -> str:
        return f"version: v1\ncache: {{imageCacheSize: {1000 + self.version}}}\n"

    def run(self, until: float) -> None:
        for step in itertools.count():
            if self.clock() >= until:
                return
            fault = CYCLE[step % len(CYCLE)]
            try:
                self.inject(fault, step)
            except HarnessError as err:
                self.report.problems.append(f"{fault} at {self.clock():.1f}s: {err}".splitlines()[0])
            time.sleep(max(0.0, min(STEP, until - self.clock())))

    def inject(self, fault: str, step: int) -> None:
        service = self.service
        if fault == "sighup":
            self.reload(lambda: service.process.signal(signal.SIGHUP))
        elif fault == "edit":
            ttl = f"{20 + step % 30}s"
            self.reload(
                lambda: service.edit(lambda c: c.setdefault("cache", {}).update(negativeCacheTTL=ttl))
            )
        elif fault == "configmap":
            self.version += 1
            self.reload(lambda: self.node.cluster().apply_configmap(CONFIGMAP, {KEY: self.configmap_text()}))
        elif fault == "malformed-configmap":
            said = self.service.process.log_text().count(" not applied: ")
            version = self.node.cluster().apply_configmap(CONFIGMAP, {KEY: "cache: {imageCacheSize: [\n"})
            wait_for(
                lambda: self.service.process.log_text().count(" not applied: ") > said,
                10,
                f"the syncer to refuse ConfigMap version {version}",
            )
        elif fault == "kill-worker":
            self.kill_worker()
        elif fault == "kill-syncer":
            pid = wait_for(self.service.syncer, 10, "a running syncer")
            if age(pid) < self.syncer_min_age:
                return  # too young: skipped, not counted
            self.kill_syncer(pid)
        self.report.faults[fault] += 1

    def reload(self, trigger: Callable[[], object]) -> None:
        started = time.monotonic()
        ready = self.service.reload_and_wait(trigger, timeout=READY_TIMEOUT)
        self.report.reload_times.append(time.monotonic() - started)
        if "last reload: ok" not in ready.get("STATUS", ""):
            self.report.problems.append(f"reload did not succeed: {ready.get('STATUS')}")

    def kill_worker(self) -> None:
        workers = self.service.workers()
        generation = max(workers)
        pid = workers[generation]
        os.kill(pid, signal.SIGKILL)
        killed = self.clock()

        def replaced() -> bool:
            return self.service.generation() > generation and cri_socket_answers(self.service.socket, 0.2)

        wait_for(replaced, 10, "a serving replacement for the killed worker", interval=0.01)
        self.report.kills.append(Kill(pid, killed, self.clock()))

    def kill_syncer(self, pid: int) -> None:
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: (new := self.service.syncer()) is not None and new != pid, 10, "a restarted syncer")


# -- the run ------------------------------------------------------------------------------------------


def push_images(node: Stack, plain: Registry, private: Registry) -> list[str]:
    """One image per client, alternating between the two registries; each exists in one only."""
    names = []
    for i in range(CLIENTS):
        registry = plain if i % 2 == 0 else private
        node.images(registry, f"library/soak{i}", "1")
        names.append(f"soak{i}:1")
    return names


def check_nothing_lost(service: Service, node: Stack, controller: Controller, report: Report) -> None:
    """The last ConfigMap version is in the file; every pulled image is present under its name."""
    wanted = f"imageCacheSize: {1000 + controller.version}"
    try:
        wait_for(lambda: wanted in service.config.read_text(), 10, "the last ConfigMap version in the file")
        load(str(service.config))
    except Exception as err:
        report.lost.append(f"config file: {err}".splitlines()[0])
    service.reload_and_wait(lambda: service.process.signal(signal.SIGHUP), timeout=READY_TIMEOUT)
    with CriClient(service.socket) as client:
        for image, present in sorted(report.present.items()):
            if present and client.status(image) is None:
                report.lost.append(f"{image}: pulled through the shim, ImageStatus says absent")


def run(
    seconds: float, work: Path, warmup: float | None = None, syncer_min_age: float = SYNCER_MIN_AGE
) -> Report:
    """The soak in `work` for `seconds` of load; the report says what failed and what grew."""
    warmup = warmup if warmup is not None else max(10.0, seconds * 0.1)
    report = Report(seconds=seconds, warmup=warmup)
    with ExitStack() as resources:
        node = Stack.started(work, resources)
        plain = node.registries()
        private = node.registries(auth=True)
        images = push_images(node, plain, private)
        node.cluster().apply_configmap(CONFIGMAP, {KEY: "version: v1\ncache: {imageCacheSize: 1000}\n"})
        config = {
            "cri": node.containerd.address,
            "address": plain.url,
            "registries": [{"address": private.url, "auth": private.auth, "priority": 500}],
            "reloadInterval": "15s",
        }
        service = start_service(work / "service", config, api=node.cluster())
        resources.callback(service.stop)
        wait_for(lambda: "imageCacheSize: 1000" in service.config.read_text(), 10, "the first sync")
        origin = time.monotonic()

        def clock() -> float:
            return time.monotonic() - origin

        sampler = Sampler(service, report, clock)
        load = Load(service.socket, images, report, clock)
        controller = Controller(service, node, report, clock, syncer_min_age)
        try:
            controller.run(until=seconds)
        finally:
            load.stop()
            sampler.stop()
        check_nothing_lost(service, node, controller, report)
        kids = service.children()
        code = service.stop()
        report.log_tail = service.process.log_tail(60)
        if code != 0:
            report.problems.append(f"the master exited with {code} on SIGTERM")
        if any(alive(pid) for pid in kids):
            report.problems.append("children outlived the master")
    return report


def evidence(report: Report, reduced: bool) -> None:
    in_flight, gap, others = report.classify()
    grown = {role: report.growth(role) for role in ("master", "worker", "syncer")}
    resources = "; ".join(
        f"{role} RSS {rss_growth(*g) * 100:+.1f} %, fds {g[1].fds - g[0].fds:+d}, "
        f"threads {g[1].threads - g[0].threads:+d}"
        for role, g in grown.items()
        if g is not None
    )
    reloads = sum(report.faults[k] for k in ("sighup", "edit", "configmap"))
    record(
        f"soak{' (reduced)' if reduced else ''}: {report.seconds:.0f} s of mixed load with reloads, "
        "SIGKILLs and ConfigMap churn",
        load=f"{CLIENTS} clients, {sum(report.calls.values()):,} calls ("
        + ", ".join(f"{m} {n:,}" for m, n in sorted(report.calls.items()))
        + ")",
        faults=f"{reloads} reloads (SIGHUP {report.faults['sighup']}, edits {report.faults['edit']}, "
        f"ConfigMap {report.faults['configmap']}), {report.faults['malformed-configmap']} malformed "
        f"ConfigMap versions, worker SIGKILL {len(report.kills)}, "
        f"syncer SIGKILL {report.faults['kill-syncer']}",
        failed=f"{len(others)} (+{len(in_flight) + len(gap)} on killed workers: {len(in_flight)} in flight, "
        f"{len(gap)} issued before the replacement served)",
        lost="none" if not report.lost else "; ".join(report.lost),
        result=f"{'pass' if not report.verdict() else 'FAIL'}; {resources}",
    )


def main() -> int:
    seconds = float(os.environ.get("SOAK_SECONDS", DEFAULT_SECONDS))
    work = Path(tempfile.mkdtemp(prefix="soak-"))  # short: unix socket paths are limited
    report = run(seconds, work)
    if report.verdict():
        print(f"logs kept in {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    evidence(report, reduced=seconds < DEFAULT_SECONDS)
    bad = report.verdict()
    if bad:
        print(report.log_tail)
    print("soak: PASS" if not bad else "soak: FAIL\n" + "\n".join(f"  {b}" for b in bad))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
