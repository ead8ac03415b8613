"""runc for runtimes that ask a negative oom_score_adj: this machine refuses negative values, and
neither Docker nor CRI-O has a setting like containerd's `restrict_oom_score_adj`, so their runc is
this wrapper, which raises a negative `oomScoreAdj` in the bundle to 0 before runc creates it."""

from __future__ import annotations

import shutil
from pathlib import Path

from .processes import HarnessError

_WRAPPER = """\
#!/usr/bin/python3
import json, os, sys
args = sys.argv[1:]
if "create" in args and "--bundle" in args:
    path = os.path.join(args[args.index("--bundle") + 1], "config.json")
    with open(path) as f:
        spec = json.load(f)
    if spec.get("process", {}).get("oomScoreAdj", 0) < 0:
        spec["process"]["oomScoreAdj"] = 0
        with open(path, "w") as f:
            json.dump(spec, f)
os.execv(RUNC, ["runc", *args])
"""


def runc_path() -> str:
    path = shutil.which("runc") or ("/usr/sbin/runc" if Path("/usr/sbin/runc").exists() else None)
    if path is None:
        raise HarnessError("runc is not on PATH (Debian: apt-get install runc)")
    return path


def oom_safe_runc(path: Path) -> Path:
    """Write the wrapper at `path` (executable) and return it."""
    path.write_text(_WRAPPER.replace("RUNC", repr(runc_path())))
    path.chmod(0o755)
    return path
