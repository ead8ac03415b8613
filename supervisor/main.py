"""The service entry: check what can be checked up front, then hand over to the master loop."""

from __future__ import annotations

import os
import sys

from setproctitle import setproctitle

from image_cri_shim.startup import StartupError, prepare
from image_cri_shim.supervisor.arbiter import Master


def run(config_path: str) -> int:
    try:
        config, _ = prepare(config_path, "master")
    except StartupError as err:
        print(err, file=sys.stderr)
        return err.code
    setproctitle("image-cri-shim: master")
    return Master(os.path.abspath(config_path), config).run()
