"""The worker process: load the config, take the title, serve until SIGTERM, drain, exit."""

from __future__ import annotations

import asyncio
import os
import sys

from setproctitle import setproctitle

from image_cri_shim import logs
from image_cri_shim.config import ConfigError, load, resolve_cri
from image_cri_shim.workers.server import StartError, serve, write_report

EX_CONFIG = 78  # sysexits' "configuration error": the unit does not restart-loop on it


def run(config_path: str, generation: int = 1, ready_fd: int | None = None) -> int:
    try:
        config = load(config_path)
        cri_socket = resolve_cri(config)
    except ConfigError as err:
        print(err, file=sys.stderr)
        return EX_CONFIG
    logs.setup("worker", config.debug, gen=generation)
    logs.register_config_secrets(r.password for r in config.registries)
    log = logs.get("worker")
    for warning in config.warnings:
        log.warning(warning)
    setproctitle(f"image-cri-shim: worker gen={generation}")
    if not config.force and not os.path.exists(cri_socket):
        print(
            f"image-cri-shim: CRI socket {cri_socket} does not exist (set force: true to wait for it)",
            file=sys.stderr,
        )
        return 1
    try:
        asyncio.run(serve(config, cri_socket, write_report(ready_fd)))
    except StartError as err:
        print(f"image-cri-shim: {err}", file=sys.stderr)
        return 1
    return 0
