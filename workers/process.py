"""The worker process: load the config, serve until SIGTERM, drain, exit."""

from __future__ import annotations

import sys

import uvloop

from image_cri_shim.heartbeat import Heartbeat
from image_cri_shim.lifecycle import tune_heap
from image_cri_shim.startup import EX_FAILURE, EX_OK, StartupError, prepare
from image_cri_shim.workers.serve.server import ReadyPipe, StartError, serve


def run(
    config_path: str,
    generation: int = 1,
    ready_fd: int | None = None,
    heartbeat_fd: int | None = None,
    heartbeat_every: float | None = None,
) -> int:
    """`heartbeat_fd`: the page the master reads; a worker run alone has no reader, so it keeps
    a page of its own and proves nothing between calls."""
    tune_heap()
    try:
        # Under a master (ready_fd given) the master has logged the config's warnings already.
        config, cri_socket = prepare(config_path, "worker", first=ready_fd is None, gen=generation)
    except StartupError as err:
        print(err, file=sys.stderr)
        return err.code
    try:
        every = heartbeat_every if heartbeat_fd is not None else None
        # On libuv's loop: each call costs about 45 µs less of the loop's thread than on
        # asyncio's own (docs/performance-notes.md).
        uvloop.run(serve(config, cri_socket, ReadyPipe(ready_fd), Heartbeat(heartbeat_fd), every))
    except StartError as err:
        print(f"image-cri-shim: {err}", file=sys.stderr)
        return EX_FAILURE
    return EX_OK
