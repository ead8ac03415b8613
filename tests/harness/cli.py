"""The program as an operator runs it: `python -m image_cri_shim ARGS`, and a config file to give it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml


def run(
    *args: str, timeout: float = 30, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "image_cri_shim", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )


def write(directory: Path, config: dict[str, object]) -> Path:
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    return path
