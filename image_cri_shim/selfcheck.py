"""`image-cri-shim selfcheck`: load every native library the service will load, then exit.

install.sh runs it before it installs anything: `--version` loads libpython and little else, so
a node whose libstdc++, OpenSSL or glibc is too old for grpc would pass that check and fail only
when the service's first worker starts. This imports what the master, the worker and the syncer
import, and makes a TLS context, in one process that starts nothing.
"""

from __future__ import annotations

import importlib
import re
import sys
from collections.abc import Callable, Iterable

# What each process of the service imports, and the native code that brings in.
MODULES = (
    "image_cri_shim.supervisor.main",  # the master: setproctitle, sdnotify, watchdog (ctypes, libffi)
    "image_cri_shim.supervisor.endpoint",  # the metrics endpoint
    "prometheus_client",
    "image_cri_shim.workers.process",  # the worker: grpc (libstdc++), protobuf, httpx
    "image_cri_shim.syncer.process",  # the syncer: the kubernetes client, urllib3, yaml
    "ssl",  # libssl, libcrypto
    "hashlib",
    "zlib",
    "bz2",
    "lzma",
)

# What the dynamic loader says about a library the node lacks, or has in too old a version.
_LOADER = re.compile(r"[^\s:']+: (?:version `[^']+' not found|cannot open shared object file)")


def failure(module: str, error: BaseException) -> str:
    """One line naming the module and, when the loader said it, the library version missing."""
    text = " ".join(str(error).split())
    found = _LOADER.search(text)
    return f"cannot load {module}: {found.group(0) if found else text}"


def check(
    modules: Iterable[str] = MODULES, load: Callable[[str], object] = importlib.import_module
) -> str | None:
    """None when every module loads, else the first failure as one line."""
    for module in modules:
        try:
            load(module)
        except Exception as error:  # an ImportError or OSError from the loader, mostly
            return failure(module, error)
    try:
        import ssl

        ssl.create_default_context()
    except Exception as error:
        return failure("ssl", error)
    return None


def main() -> int:
    problem = check()
    if problem is not None:
        print(f"image-cri-shim: {problem}", file=sys.stderr)
        return 1
    print(f"ok: {len(MODULES)} modules and their native libraries load")
    return 0
