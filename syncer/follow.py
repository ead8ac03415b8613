"""Follow the one ConfigMap: list it, then watch it from the list's resourceVersion.

Why a watch and not polling: a node costs the API server two or three requests an hour in
steady state (one long watch, re-opened when the server ends it), and a change reaches the node
as soon as the server sends the event. The list and the watch select the one object with
`metadata.name=<name>`, so other ConfigMaps in the namespace cost nothing either.

- The watch asks for bookmarks, so the resourceVersion to resume from stays recent even while
  the ConfigMap does not change, and a re-watch after the server ends the stream rarely needs a
  new list.
- 410 Gone (the version to resume from was compacted away): list again, watch from there.
- A broken watch (API server restarted, network gone) is re-opened from the last version seen,
  after a backoff that doubles up to 30 s with jitter, so a restarted API server is not hit by
  every node at the same instant. Events missed meanwhile are replayed by the server, or the
  410 path lists again. After many failures in a row the credentials are chosen afresh.
- 401/403 mid-stream: the credentials are chosen afresh (a rotated kubelet certificate, a
  removed RoleBinding).

Everything here runs in one daemon thread. It publishes `Snapshot`s and does no file I/O; the
process decides what a snapshot means for the config file. `stop()` unblocks a pending read at
once by shutting the socket down.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from image_cri_shim import logs
from image_cri_shim.config import ConfigMapRef
from image_cri_shim.metrics import SYNCER_OFF, SyncerMetrics
from image_cri_shim.syncer import cluster, kube
from image_cri_shim.syncer.snapshot import ABSENT, Snapshot, from_object

WATCH_SECONDS = (1800, 2700)  # server-side length of one watch; jittered so nodes spread out
READ_MARGIN = 30  # the client's read timeout is the watch's length plus this
CONNECT_TIMEOUT = 10
LIST_READ_TIMEOUT = 30
BACKOFF_FIRST, BACKOFF_CAP = 0.5, 30.0
MAX_WATCH_FAILURES = 6  # about a minute of backoff before the credentials are chosen again
SHORTEST_WATCH = 1.0  # a watch the server ends sooner, without an event, counts as a failure

log = logs.get("syncer")


def backoff(attempt: int, rng: random.Random) -> float:
    """Seconds to wait before retry `attempt` (1, 2, ...): between half and all of a ceiling
    that doubles from 0.5 s to 30 s."""
    ceiling = min(BACKOFF_CAP, BACKOFF_FIRST * 2 ** min(max(attempt, 1) - 1, 16))
    return rng.uniform(ceiling / 2, ceiling)


@dataclass(frozen=True)
class Listing:
    version: str  # the list's resourceVersion: where the watch starts
    snapshot: Snapshot


class _Stopped(Exception):
    """stop() was called: leave the thread."""


class _Gone(Exception):
    """410: the resourceVersion to resume from is too old; list again."""


class _Lost(Exception):
    """These credentials stopped working (denied, or the server unreachable for long)."""


class Follower:
    """A thread that publishes every state of the ConfigMap `ref` as a Snapshot."""

    def __init__(
        self,
        ref: ConfigMapRef,
        publish: Callable[[Snapshot], None],
        retry_every: Callable[[], float],
        env: Mapping[str, str] | None = None,
        metrics: SyncerMetrics = SYNCER_OFF,
    ) -> None:
        self._ref = ref
        self._watch_up = metrics.watch_up
        self._publish = publish
        self._retry_every = retry_every
        self._env = dict(os.environ if env is None else env)
        self._selector = _field_selector(ref)
        self._stopped = threading.Event()
        self._response: Any = None
        self._rng = random.Random()  # noqa: S311 - jitter, not cryptography
        self._resume_from = ""
        self._worked = False  # the current session's watch delivered something
        self._lost_streak = 0
        self._announced_none = False
        self._source: str | None = None
        self._thread = threading.Thread(target=self._run, name="configmap-follower", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Ask the thread to leave; a read blocked on the watch returns at once."""
        self._stopped.set()
        response = self._response
        if response is not None:
            try:
                response.shutdown()
            except Exception as err:  # already released or closed: nothing is blocked on it
                log.debug("watch already closed", error=type(err).__name__)

    def join(self, timeout: float) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ----------------------------------------------------------------- the thread

    def _run(self) -> None:
        crashes = 0
        while not self._stopped.is_set():
            try:
                self._session()
                crashes = 0
            except _Stopped:
                return
            except Exception as err:  # a bug here must not end syncing for good, nor flood the log
                crashes += 1
                say = log.error if crashes == 1 else log.debug
                say("ConfigMap follower failed, starting over", error=type(err).__name__)
                with contextlib.suppress(_Stopped):
                    self._sleep(backoff(crashes, self._rng))

    def _session(self) -> None:
        """Choose credentials, then list and watch until they stop working."""
        found = cluster.connect(cluster.sources(self._env), self._list, self._env)
        if isinstance(found, cluster.NoCluster):
            interval = self._retry_every()
            if not self._announced_none:
                log.info(
                    "no cluster access, retrying quietly",
                    every=f"{interval:g}s",
                    tried="; ".join(found.tried),
                )
                self._announced_none = True
            else:
                log.debug("still no cluster access", tried="; ".join(found.tried))
            self._source = None
            self._watch_up.set(0)
            self._sleep(interval)
            return
        self._announced_none = False
        if found.source.label != self._source or self._lost_streak == 0:
            log.info("cluster access", source=found.source.label, server=found.server)
        self._source = found.source.label
        self._worked = False
        try:
            self._follow(found.api, found.first)
        except _Lost as lost:
            self._watch_up.set(0)
            self._lost_streak = 0 if self._worked else self._lost_streak + 1
            say = log.info if self._lost_streak <= 1 else log.debug
            say("lost cluster access, choosing credentials again", source=self._source, error=str(lost))
            self._sleep(backoff(self._lost_streak, self._rng) if self._lost_streak else 0)
        finally:
            found.api.close()

    def _follow(self, api: Any, listing: Listing) -> None:
        self._take(listing)
        self._watch_up.set(1)
        failures = 0
        while True:
            self._check()
            try:
                if self._watch(api, broken=failures > 0):
                    failures = 0
                    continue
                failure: BaseException | str = "the server ended the watch at once"
            except _Gone:
                log.debug("resourceVersion expired, listing again", version=self._resume_from)
                try:
                    self._take(self._list(api))
                except Exception as err:
                    self._check()
                    raise _Lost(cluster.describe(err)) from None
                continue
            except Exception as err:
                self._check()
                if cluster.is_denied(err):
                    raise _Lost(cluster.describe(err)) from None
                failure = err
            failures += 1
            what = failure if isinstance(failure, str) else cluster.describe(failure)
            say = log.info if failures == 1 else log.debug
            say("watch interrupted, reconnecting", error=what, attempt=failures)
            if failures > MAX_WATCH_FAILURES:
                raise _Lost(what)
            self._sleep(backoff(failures, self._rng))

    def _list(self, api: Any) -> Listing:
        """One LIST of the ConfigMap (also the probe that says a source works)."""
        return list_configmap(api, self._ref)

    def _take(self, listing: Listing) -> None:
        self._resume_from = listing.version
        self._emit(listing.snapshot)

    def _watch(self, api: Any, *, broken: bool) -> bool:
        """One watch from the last version seen, until the server ends it.

        True when it delivered an event or lasted its course (a healthy watch), False when the
        server ended it at once with nothing (retried with backoff, never in a tight loop).
        """
        seconds = self._rng.randint(*WATCH_SECONDS)
        started = time.monotonic()
        query = (
            ("fieldSelector", self._selector),
            ("resourceVersion", self._resume_from),
            ("allowWatchBookmarks", "true"),
            ("timeoutSeconds", seconds),
            ("watch", "true"),
        )
        response = kube.configmaps(api, self._ref.namespace, query, (CONNECT_TIMEOUT, seconds + READ_MARGIN))
        self._response = response
        try:
            self._check()
            if broken:
                log.info("watch resumed", version=self._resume_from)
            delivered = False
            for event in _events(response):
                self._on_event(event)
                delivered = self._worked = True
            healthy = delivered or time.monotonic() - started >= SHORTEST_WATCH
            self._worked = self._worked or healthy
            return healthy
        finally:
            self._response = None
            response.release_conn()

    def _on_event(self, event: Any) -> None:
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            if code == 410:
                raise _Gone()
            raise kube.ApiException(status=code if isinstance(code, int) else 500, reason="watch error")
        version = _version_of(obj)
        if version is None:
            raise ValueError(f"a {kind} event without a resourceVersion")
        if kind in ("ADDED", "MODIFIED") and _name_of(obj) == self._ref.name:
            self._emit(from_object(obj))
        elif kind == "DELETED" and _name_of(obj) == self._ref.name:
            self._emit(ABSENT)
        self._resume_from = version  # BOOKMARK: only this

    def _emit(self, snapshot: Snapshot) -> None:
        self._check()
        self._publish(snapshot)

    def _check(self) -> None:
        if self._stopped.is_set():
            raise _Stopped()

    def _sleep(self, seconds: float) -> None:
        if self._stopped.wait(seconds):
            raise _Stopped()


def _events(response: Any) -> Iterator[Any]:
    """The JSON events of a watch stream: one object per line, lines split across chunks."""
    pending = b""
    for chunk in response.stream(amt=None, decode_content=True):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line.strip():
                yield json.loads(line)
    if pending.strip():
        yield json.loads(pending)


def list_configmap(
    api: Any, ref: ConfigMapRef, timeout: tuple[float, float] = (CONNECT_TIMEOUT, LIST_READ_TIMEOUT)
) -> Listing:
    """One LIST of the ConfigMap `ref`, by a field selector on its name (all the RBAC grants)."""
    response = kube.configmaps(api, ref.namespace, (("fieldSelector", _field_selector(ref)),), timeout)
    try:
        body = json.loads(response.data)
    finally:
        response.release_conn()
    version = body.get("metadata", {}).get("resourceVersion") if isinstance(body, dict) else None
    if not isinstance(version, str) or not isinstance(body.get("items"), list):
        raise ValueError("the list response has no resourceVersion or items")
    snapshot = ABSENT
    for item in body["items"]:
        if _name_of(item) == ref.name:
            snapshot = from_object(item)
    return Listing(version, snapshot)


def _field_selector(ref: ConfigMapRef) -> str:
    """Only this ConfigMap: list and watch by name, which a Role with `resourceNames` allows."""
    return f"metadata.name={ref.name}"


def _name_of(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    name = metadata.get("name") if isinstance(metadata, dict) else None
    return name if isinstance(name, str) else None


def _version_of(obj: Any) -> str | None:
    metadata = obj.get("metadata") if isinstance(obj, dict) else None
    version = metadata.get("resourceVersion") if isinstance(metadata, dict) else None
    return version if isinstance(version, str) and version else None
