"""The worker process: load the config, serve until SIGTERM, drain, exit."""

from __future__ import annotations

import sys

from image_cri_shim.startup import StartupError, prepare
from image_cri_shim.workers.server import ReadyPipe, StartError, serve


def run(config_path: str, generation: int = 1, ready_fd: int | None = None) -> int:
    try:
        # Under a master (ready_fd given) the master has logged the config's warnings already.
        config, cri_socket = prepare(config_path, "worker", first=ready_fd is None, gen=generation)
    except StartupError as err:
        print(err, file=sys.stderr)
        return err.code
    try:
        serve(config, cri_socket, ReadyPipe(ready_fd))
    except StartError as err:
        print(f"image-cri-shim: {err}", file=sys.stderr)
        return 1
    return 0
