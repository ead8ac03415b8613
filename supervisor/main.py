"""The service entry: check what can be checked up front, then hand over to the master loop."""

from __future__ import annotations

import os
import sys

from setproctitle import setproctitle

from image_cri_shim.startup import StartupError, prepare
from image_cri_shim.supervisor.arbiter import Master
from image_cri_shim.supervisor.samples import prepare_dir, remove_dir


def run(config_path: str) -> int:
    try:
        config, _ = prepare(config_path, "master")
    except StartupError as err:
        print(err, file=sys.stderr)
        return err.code
    setproctitle("image-cri-shim: master")
    # Made before any child starts, so every process records into it (metricsAddress may be
    # set by a later reload); an endpoint serves it only while metricsAddress is set.
    metrics_dir = prepare_dir(config.shim)
    try:
        return Master(os.path.abspath(config_path), config, metrics_dir).run()
    finally:
        if metrics_dir is not None:
            remove_dir(metrics_dir)
