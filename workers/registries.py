"""Registry I/O on its own event loop: the resolver, its registry clients, the decision cache.

The gRPC server's threads never do registry I/O themselves. A PullImage that needs a fresh
decision hands the lookup to this loop and waits for the answer; concurrent lookups of one
image share one probe there, and every registry keeps one pooled HTTP client and one health
record for the life of the worker.

The loop, the HTTP client and the TLS contexts are set up only after the worker serves
(`start`): none of it is on the path to serving, which is the path every reload waits for.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

from image_cri_shim import logs
from image_cri_shim.config import Config
from image_cri_shim.metrics import WORKER_OFF, WorkerMetrics
from image_cri_shim.reference import Reference
from image_cri_shim.workers.plan import Planner

if TYPE_CHECKING:
    import asyncio

    from image_cri_shim.workers.decisions import Decision
    from image_cri_shim.workers.failures import Verdict
    from image_cri_shim.workers.plan import Candidate
    from image_cri_shim.workers.registry import RegistryClient
    from image_cri_shim.workers.resolver import Resolver

log = logs.get("worker")

RESOLVE_TIMEOUT = 60.0  # probes are bounded far below this; it only guards against a stuck loop
T = TypeVar("T")


class Registries:
    def __init__(self, config: Config, metrics: WorkerMetrics = WORKER_OFF) -> None:
        self._config = config
        self._metrics = metrics
        self.planner = Planner(config.registries)  # the worker's one plan cache
        self._clients: dict[str, RegistryClient] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._resolver: concurrent.futures.Future[Resolver] = concurrent.futures.Future()
        self._thread = threading.Thread(target=self._run, name="registries", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        import asyncio  # imported here: off the path to serving

        from image_cri_shim.workers.registry import RegistryClient, node_platform
        from image_cri_shim.workers.resolver import Resolver
        from image_cri_shim.workers.transport import PROBE_TIMEOUT, TLSSetupError

        config = self._config
        loop = self._loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        try:
            node = node_platform()
            # A probe may use at most half of `timeout`: the pull it decides for needs the rest.
            probe = min(PROBE_TIMEOUT, config.timeout / 2)
            metrics = self._metrics
            clients = self._clients = {
                r.domain: RegistryClient(r, node, timeout=probe, metrics=metrics) for r in config.registries
            }
            self._resolver.set_result(
                Resolver(self.planner, clients, config.cache, upstream=config.upstream, metrics=metrics)
            )
        except TLSSetupError as err:  # the node's TLS settings: said once, and by every pull
            log.error("registries cannot be asked", error=str(err))
            self._resolver.set_exception(err)
            return
        except BaseException as err:  # surfaces in resolve(), where a pull can report it
            self._resolver.set_exception(err)
            raise
        loop.run_forever()

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        import asyncio

        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def resolve(self, ref: Reference) -> Decision:
        """The decision for `ref` (cached, or made afresh by probing); blocks the calling thread."""
        resolver = self._resolver.result(RESOLVE_TIMEOUT)
        return self._submit(resolver.resolve(ref)).result(RESOLVE_TIMEOUT)

    def failover(
        self, ref: Reference, failed: Candidate, tried: frozenset[str], verdict: Verdict, within: float
    ) -> Decision:
        """The next decision after a pull through `failed` failed (`Resolver.failover`); blocks for
        at most `within` seconds (TimeoutError), what the pull has left. The probes go on, so
        the pulls that wait for the same failover still get its answer."""
        resolver = self._resolver.result(RESOLVE_TIMEOUT)
        future = self._submit(resolver.failover(ref, failed, tried, verdict))
        return future.result(min(within, RESOLVE_TIMEOUT))

    def forget(self, ref: Reference, failed: Candidate) -> None:
        """Drop the decision through `failed` (`Resolver.forget`); blocks."""
        resolver = self._resolver.result(RESOLVE_TIMEOUT)
        self._submit(resolver.forget(ref, failed)).result(RESOLVE_TIMEOUT)

    def log_stats_every(self, interval: float) -> None:
        self._resolver.add_done_callback(lambda _: self._submit(self._log_stats(interval)))

    async def _log_stats(self, interval: float) -> None:
        """One line per interval, and only when something happened since the last one."""
        import asyncio

        resolver = self._resolver.result()
        last = (resolver.hits, resolver.misses)
        while True:
            await asyncio.sleep(interval)
            now = (resolver.hits, resolver.misses)
            if now != last:
                log.info(
                    "decision cache",
                    hits=now[0] - last[0],
                    misses=now[1] - last[1],
                    size=resolver.cache_size(),
                )
                last = now

    def close(self) -> None:
        if self._loop is None or not self._resolver.done() or self._resolver.exception() is not None:
            return
        loop = self._loop

        async def shutdown() -> None:
            import asyncio

            for client in self._clients.values():
                await client.aclose()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._submit(shutdown()).result(5)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(5)
