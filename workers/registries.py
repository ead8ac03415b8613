"""Registry I/O on its own event loop: the resolver, its registry clients, the decision cache.

The gRPC server's threads never do registry I/O themselves. A PullImage that needs a fresh
decision hands the lookup to this loop and waits for the answer; concurrent lookups of one
image share one probe there, and every registry keeps one pooled HTTP client and one health
record for the life of the worker. The clients are built on the loop while the server starts,
so TLS set-up is not on the path to serving.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

from image_cri_shim import logs
from image_cri_shim.config import Config
from image_cri_shim.reference import Reference
from image_cri_shim.workers.registry import RegistryClient, node_platform
from image_cri_shim.workers.resolver import Decision, Resolver

log = logs.get("worker")

RESOLVE_TIMEOUT = 60.0  # probes are bounded far below this; it only guards against a stuck loop
T = TypeVar("T")


class Registries:
    def __init__(self, config: Config) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="registries", daemon=True)
        self._thread.start()
        self._resolver: concurrent.futures.Future[Resolver] = self._submit(self._build(config))

    @staticmethod
    async def _build(config: Config) -> Resolver:
        node = node_platform()
        clients = {r.domain: RegistryClient(r, node) for r in config.registries}
        return Resolver(config.registries, clients, config.cache, upstream=config.upstream)

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def resolve(self, ref: Reference) -> Decision:
        """The decision for `ref` (cached, or made afresh by probing); blocks the calling thread."""
        resolver = self._resolver.result(RESOLVE_TIMEOUT)
        return self._submit(resolver.resolve(ref)).result(RESOLVE_TIMEOUT)

    def log_stats_every(self, interval: float) -> None:
        self._submit(self._log_stats(interval))

    async def _log_stats(self, interval: float) -> None:
        """One line per interval, and only when something happened since the last one."""
        resolver = await asyncio.wrap_future(self._resolver)
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
        async def shutdown() -> None:
            resolver = await asyncio.wrap_future(self._resolver)
            for client in resolver.clients.values():
                await client.aclose()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        with contextlib.suppress(concurrent.futures.TimeoutError, RuntimeError):
            self._submit(shutdown()).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
