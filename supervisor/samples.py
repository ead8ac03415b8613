"""The metrics samples of all three processes: files in one directory that every process
writes (prometheus-client's multiprocess mode), served by the master (`endpoint.py`). This
module owns that directory. It lives next to the shim socket (a tmpfs on every systemd host),
is emptied when the master starts (one master per shim socket, start-up checks that), and is
removed when it stops.

A child that exits leaves counter and histogram files behind: that is what keeps totals across
worker swaps. So that hundreds of reloads do not leave hundreds of files for every scrape to
read, `retire` folds a dead child's files into one file per kind and removes its gauges.
"""

from __future__ import annotations

import contextlib
import glob
import os
import threading
from typing import Any

from image_cri_shim.metrics import DIR_ENV

# A scrape and a fold never overlap: a scrape must not read a file twice (once folded) or
# open one that is being removed.
FILES = threading.Lock()


def prepare_dir(shim: str) -> str | None:
    """An empty samples directory next to the shim socket, announced to the children through
    the environment; None (metrics off) if it cannot be made."""
    directory = os.path.join(os.path.dirname(shim), f".{os.path.basename(shim)}.metrics")
    try:
        os.makedirs(os.path.dirname(directory), mode=0o755, exist_ok=True)
        remove_dir(directory)
        os.mkdir(directory, 0o700)
    except OSError:
        return None
    os.environ[DIR_ENV] = directory
    return directory


def remove_dir(directory: str) -> None:
    """The directory holds sample files only (shutil would cost the master bz2 and lzma)."""
    with contextlib.suppress(OSError):
        for name in os.listdir(directory):
            with contextlib.suppress(OSError):
                os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


def open_samples(path: str, read_mode: bool = False) -> Any:
    """One sample file, as prometheus-client's multiprocess mode writes it. The library has no
    public API for it, so this is the one use of its private (and untyped) `mmap_dict.MmapedDict`;
    pyproject.toml bounds prometheus-client below its next minor and tests/unit/test_private_apis.py
    fails on a release without it."""
    from prometheus_client import mmap_dict  # loaded only when a child's samples are folded

    mmaped: Any = mmap_dict.MmapedDict  # untyped in prometheus-client
    return mmaped(path, read_mode=read_mode)


def retire(directory: str, pid: int) -> None:
    """After child `pid` exited: drop its live gauges, fold its counters and histograms into
    the retired totals (same keys add up, exactly what a scrape would have summed)."""
    files = {kind: os.path.join(directory, f"{kind}_{pid}.db") for kind in ("counter", "histogram")}
    gauges = glob.glob(os.path.join(directory, f"gauge_live*_{pid}.db"))
    if not gauges and not any(os.path.exists(path) for path in files.values()):
        return
    with FILES:
        for path in gauges:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
        for kind, path in files.items():
            if not os.path.exists(path):
                continue
            source = open_samples(path, read_mode=True)
            totals = open_samples(os.path.join(directory, f"{kind}_retired.db"))
            try:
                for key, value, timestamp in source.read_all_values():
                    old, _ = totals.read_value(key)
                    totals.write_value(key, old + value, timestamp)
            finally:
                source.close()
                totals.close()
            os.unlink(path)
