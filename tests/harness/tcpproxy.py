"""A TCP proxy on 127.0.0.1 in front of a registry, for concurrency and latency tests.

`Gate` holds every client request that carries a marker (e.g. `/blobs/`) until `count` such
requests are waiting at the same time, then lets them all through. A caller that does its
requests one after another never fills the gate: the test sees `gate.opened` stay false
instead of measuring times. `delay` adds a fixed latency to each chunk sent back.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from dataclasses import dataclass, field


@dataclass
class Gate:
    count: int
    marker: bytes = b"/blobs/"
    timeout: float = 30.0
    arrived: int = 0
    opened: bool = False
    _event: asyncio.Event = field(default_factory=asyncio.Event)

    async def wait(self) -> None:
        if self.opened:
            return
        self.arrived += 1
        if self.arrived >= self.count:
            self.opened = True
            self._event.set()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._event.wait(), self.timeout)


class TcpProxy:
    def __init__(self, upstream_port: int, *, delay: float = 0.0, gate: Gate | None = None) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.gate = gate
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._run, name="tcp-proxy", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("tcp proxy did not start within 10s")
        assert self._server is not None
        self.port: int = self._server.sockets[0].getsockname()[1]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            if self.gate is not None:
                self.gate._event = asyncio.Event()
            self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self._ready.set()

        self._loop.run_until_complete(start())
        self._loop.run_forever()

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.close()
            return
        await asyncio.gather(
            self._pump(client_reader, up_writer, upstream=True),
            self._pump(up_reader, client_writer, upstream=False),
            return_exceptions=True,
        )

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, upstream: bool) -> None:
        try:
            while data := await reader.read(65536):
                if upstream and self.gate is not None and self.gate.marker in data:
                    await self.gate.wait()
                if not upstream and self.delay:
                    await asyncio.sleep(self.delay)
                writer.write(data)
                await writer.drain()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    def stop(self) -> None:
        async def close() -> None:
            if self._server is not None:
                self._server.close()
            pending = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()
