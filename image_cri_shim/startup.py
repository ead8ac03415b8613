"""What the master and a worker both check before they serve, with the same one-line errors."""

from __future__ import annotations

import os

from image_cri_shim import logs
from image_cri_shim.config import Config, ConfigError, load, resolve_cri

EX_CONFIG = 78  # sysexits' "configuration error"; the unit does not restart-loop on it


class StartupError(Exception):
    """An expected start-up failure: one line for the operator and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def prepare(path: str, role: str, warn: bool = True, **log_fields: object) -> tuple[Config, str]:
    """Load the config, find the CRI socket, and set up this process's log lines."""
    try:
        config = load(path)
        cri_socket = resolve_cri(config)
    except ConfigError as err:
        raise StartupError(str(err), EX_CONFIG) from None
    if not config.force and not os.path.exists(cri_socket):
        raise StartupError(
            f"image-cri-shim: CRI socket {cri_socket} does not exist (set force: true to wait for it)", 1
        )
    logs.setup(role, config.debug, **log_fields)
    logs.register_config_secrets(r.password for r in config.registries)
    if warn:
        for warning in config.warnings:
            logs.get(role).warning(warning)
    return config, cri_socket
