"""The worker's registry side: the resolver, its registry clients, the decision cache.

Every registry keeps one pooled HTTP client and one health record for the life of the worker,
and concurrent lookups of one image share one probe (`resolver`). All of it runs on the worker's
one event loop, beside the calls it decides for.

The HTTP client and the TLS contexts are set up only after the worker serves (`start`): none of
it is on the path to serving, which is the path every reload waits for. A pull that arrives
before that waits for it.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from image_cri_shim import logs
from image_cri_shim.config import Config
from image_cri_shim.metrics import WORKER_OFF, WorkerMetrics
from image_cri_shim.reference import Reference
from image_cri_shim.workers.lookup.plan import Planner

if TYPE_CHECKING:
    from image_cri_shim.workers.lookup.client import RegistryClient
    from image_cri_shim.workers.lookup.decisions import Decision
    from image_cri_shim.workers.lookup.plan import Candidate
    from image_cri_shim.workers.lookup.resolver import Resolver
    from image_cri_shim.workers.pull.failures import Verdict

log = logs.get("worker")


class Registries:
    def __init__(self, config: Config, metrics: WorkerMetrics = WORKER_OFF) -> None:
        self._config = config
        self._metrics = metrics
        self.planner = Planner(config.registries)  # the worker's one plan cache
        self._clients: dict[str, RegistryClient] = {}
        self._resolver: asyncio.Future[Resolver] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def _ready(self) -> asyncio.Future[Resolver]:
        if self._resolver is None:
            self._resolver = asyncio.get_running_loop().create_future()
        return self._resolver

    def start(self) -> None:
        """Set up the clients and the resolver, once the worker serves. Loading the TLS
        settings (CA bundles, client certificates) reads files: it runs in a thread, off the loop."""
        task = asyncio.get_running_loop().create_task(self._set_up(self._ready()))
        self._tasks.add(task)

    async def _set_up(self, ready: asyncio.Future[Resolver]) -> None:
        from image_cri_shim.workers.lookup.resolver import Resolver
        from image_cri_shim.workers.lookup.transport import TLSSetupError

        config = self._config
        try:
            clients = self._clients = await asyncio.to_thread(self._clients_of, config)
            ready.set_result(
                Resolver(self.planner, clients, config.cache, upstream=config.upstream, metrics=self._metrics)
            )
        except TLSSetupError as err:  # the node's TLS settings: said once, and by every pull
            log.error("registries cannot be asked", error=str(err))
            ready.set_exception(err)
        except Exception as err:  # surfaces in resolve(), where a pull can report it
            ready.set_exception(err)
            raise

    def _clients_of(self, config: Config) -> dict[str, RegistryClient]:
        from image_cri_shim.workers.lookup.client import RegistryClient, node_platform
        from image_cri_shim.workers.lookup.transport import PROBE_TIMEOUT

        node = node_platform()
        # A probe may use at most half of `timeout`: the pull it decides for needs the rest.
        probe = min(PROBE_TIMEOUT, config.timeout / 2)
        return {
            r.domain: RegistryClient(r, node, timeout=probe, metrics=self._metrics) for r in config.registries
        }

    async def resolve(self, ref: Reference) -> Decision:
        """The decision for `ref` (cached, or made afresh by probing)."""
        resolver = await self._ready()
        return await resolver.resolve(ref)

    async def failover(
        self, ref: Reference, failed: Candidate, tried: frozenset[str], verdict: Verdict, within: float
    ) -> Decision:
        """The next decision after a pull through `failed` failed (`Resolver.failover`), within
        `within` seconds (TimeoutError), what the pull has left. The probes go on, so the pulls
        that wait for the same failover still get its answer."""
        resolver = await self._ready()
        return await asyncio.wait_for(asyncio.shield(resolver.failover(ref, failed, tried, verdict)), within)

    async def forget(self, ref: Reference, failed: Candidate) -> None:
        """Drop the decision through `failed` (`Resolver.forget`)."""
        resolver = await self._ready()
        await resolver.forget(ref, failed)

    def log_stats_every(self, interval: float) -> None:
        task = asyncio.get_running_loop().create_task(self._log_stats(interval))
        self._tasks.add(task)

    async def _log_stats(self, interval: float) -> None:
        """One line per interval, and only when something happened since the last one."""
        resolver = await self._ready()
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

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.aclose()
