"""The ConfigMap syncer process: keep the config file merged with the ConfigMap until SIGTERM.

Two threads. The follower (network only) publishes each state of the ConfigMap into a queue;
the main thread merges it into the file. The main thread also wakes every `reloadInterval`:
a local edit that dropped a ConfigMap setting is merged again, a write that failed (full disk)
is retried, and the node's own settings (`configMap`, `debug`, `reloadInterval`) are re-read
from the file, so turning the syncer off or pointing it elsewhere needs no restart.

A problem is logged once per ConfigMap version (a re-list or a reconnect that sees the same
version says nothing new) and always leaves the file as it was.

SIGTERM/SIGINT reach the main thread's inbox (`inbox.py`), which leaves after the step it
is in: a step is local and short, and the file is only ever replaced by rename.
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING

from image_cri_shim import logs
from image_cri_shim.atomic import remove_stale_temp_files
from image_cri_shim.config import Config, ConfigError, ConfigMapRef, parse_bytes, read
from image_cri_shim.inbox import Inbox
from image_cri_shim.lifecycle import trim_heap
from image_cri_shim.metrics import SyncerMetrics, active
from image_cri_shim.startup import StartupError, configure, use_config
from image_cri_shim.syncer.apply import NotApplied, apply
from image_cri_shim.syncer.snapshot import Snapshot

if TYPE_CHECKING:
    from image_cri_shim.syncer.follow import Follower

log = logs.get("syncer")


class _StopAsked:
    """SIGTERM or SIGINT: leave after the step in progress."""


_STOP = _StopAsked()


def run(config_path: str) -> int:
    """The syncer's main: 0 after SIGTERM/SIGINT, 78 when the local config is invalid at start."""
    try:
        config = configure(config_path, "syncer")
    except StartupError as err:
        print(err, file=sys.stderr)
        return err.code
    syncer = _Syncer(config_path)
    try:
        syncer.run(config)
    finally:
        syncer.close()
    log.info("syncer stopped")
    return 0


class _Syncer:
    def __init__(self, path: str) -> None:
        self._path = path
        self._inbox: Inbox[tuple[int, Snapshot] | _StopAsked] = Inbox(
            {signal.SIGTERM: _STOP, signal.SIGINT: _STOP}
        )  # snapshots by follower generation, and stop requests
        self._generation = 0  # snapshots of an earlier follower are dropped
        self._follower: Follower | None = None
        self._ref: ConfigMapRef | None = None  # what is followed; None: sync disabled
        self._interval = 15.0
        self._local: bytes | None = None  # the file content whose settings are in force
        self._seen: Snapshot | None = None  # the latest ConfigMap state
        self._settled: tuple[str, bytes] | None = None  # (ConfigMap state, file) already handled
        self._reported: tuple[str, str] | None = None  # (ConfigMap state, problem) already logged
        self._metrics = SyncerMetrics(False)  # recording once the config asks for metrics

    def run(self, config: Config) -> None:
        removed = remove_stale_temp_files(self._path)
        if removed:
            log.info("removed temp files left by an interrupted write", count=removed)
        self._use(config, config.source or None, first=True)  # the bytes it was parsed from
        while True:
            arrived = self._inbox.get(timeout=self._interval)
            if _STOP in arrived:
                return
            for item in arrived:  # a burst of changes: only the latest matters
                if isinstance(item, tuple) and item[0] == self._generation:
                    self._seen = item[1]
            self._step()

    def close(self) -> None:
        if self._follower is not None:
            self._follower.stop()  # the inbox stays, as the master's does: a late signal kills no one

    # ----------------------------------------------------------------- one step

    def _step(self) -> None:
        try:
            local = read(self._path)  # the same bounded read as every process
        except ConfigError as err:
            self._report(f"{err}: not merged")
            return
        if local != self._local:
            self._reread(local)
        seen = self._seen
        if seen is None or self._ref is None or self._settled == (seen.identity, local):
            return
        outcome = apply(seen, self._ref, self._path, local)
        logs.register_secret(*outcome.passwords)
        self._metrics.syncs.labels(outcome.result.value).inc()
        if isinstance(outcome, NotApplied):
            self._report(outcome.problem)
            if not outcome.retry:
                self._settled = (seen.identity, local)
            return
        self._reported = None
        fields: dict[str, object] = {"version": seen.version, "file": self._path}
        if outcome.notes:
            fields["ignored"] = "; ".join(outcome.notes)
        log.info(outcome.message, **fields)
        self._metrics.last_sync.set(time.time())
        self._settled = (seen.identity, outcome.text)
        self._use(outcome.config, outcome.text)
        trim_heap()  # the client's imports and the first list are done

    def _report(self, problem: str) -> None:
        """Log `problem` once for the current ConfigMap state."""
        state = self._seen.identity if self._seen is not None else "unknown"
        if self._reported != (state, problem):
            self._reported = (state, problem)
            log.warning(problem, configmap=state)

    # ----------------------------------------------------------------- the node's own settings

    def _reread(self, local: bytes) -> None:
        """The file changed (an edit, or our write): take its settings if it is valid."""
        try:
            config = parse_bytes(local, self._path)
        except ConfigError:
            self._local = local  # the master reports an invalid file; keep what is in force
            return
        self._use(config, local)

    def _use(self, config: Config, local: bytes | None, *, first: bool = False) -> None:
        self._local = local
        use_config(config)
        self._interval = config.reload_interval
        ref = config.config_map if config.config_map.enabled else None
        if not self._metrics.recording and active(config.metrics_address):
            self._metrics = SyncerMetrics(True)
            first = True  # a new follower, reporting to the metrics
        if first or ref != self._ref:
            self._follow(ref)

    def _follow(self, ref: ConfigMapRef | None) -> None:
        if self._follower is not None:
            self._follower.stop()
        self._follower = None
        self._generation += 1
        self._ref, self._seen, self._settled, self._reported = ref, None, None, None
        if ref is None:
            log.info("ConfigMap sync is off (configMap.enabled: false): idle", file=self._path)
            return
        # Imported here: a syncer that is off never loads the kubernetes client.
        from image_cri_shim.syncer.follow import Follower

        generation = self._generation
        self._follower = Follower(
            ref,
            lambda snapshot: self._inbox.put((generation, snapshot)),
            lambda: self._interval,
            metrics=self._metrics,
        )
        log.info(
            "following ConfigMap",
            configmap=f"{ref.namespace}/{ref.name}",
            key=ref.key,
            file=self._path,
        )
        self._follower.start()
