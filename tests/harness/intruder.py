"""An unprivileged local user (`nobody`) attacking the service: a script run by the system's
Python under uid/gid 65534, stopped by its pid, its one-line JSON result read back."""

from __future__ import annotations

import json
import subprocess
import textwrap
from typing import Any

NOBODY = 65534
PYTHON = "/usr/bin/python3"  # stdlib only; the test venv may not be readable by nobody

# Keeps `count` connections to `address` that send a request line and never end their headers,
# opening a new one for each the server closes, for `seconds`.
SLOW_HEADERS = """
import json, socket, sys, time
host, port, count, seconds = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
held, opened, refused = [], 0, 0
end = time.monotonic() + seconds
while time.monotonic() < end:
    alive = []
    for s in held:
        try:
            if s.recv(1, socket.MSG_DONTWAIT) == b"":
                s.close()
                continue
        except BlockingIOError:
            pass
        except OSError:
            s.close()
            continue
        alive.append(s)
    held = alive
    while len(held) < count:
        s = socket.socket()
        s.settimeout(1)
        try:
            s.connect((host, port))
            s.sendall(b"GET /metrics HTTP/1.1\\r\\n")
        except OSError:
            refused += 1
            s.close()
            break
        opened += 1
        held.append(s)
    time.sleep(0.05)
print(json.dumps({"opened": opened, "refused": refused}))
"""

# Connects, as fast as it can for `seconds` or until SIGTERM, to every socket in `directory`; a
# connect that succeeds is a win (it needs write permission on the socket file). Reports wins
# by file name.
CONNECTS = """
import json, os, signal, socket, stat, sys, time
directory, seconds = sys.argv[1], float(sys.argv[2])
wins, tries, stop = {}, 0, []
signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
end = time.monotonic() + seconds
while time.monotonic() < end and not stop:
    try:
        names = os.listdir(directory)
    except OSError:
        names = []
    for name in names:
        path = os.path.join(directory, name)
        try:
            if not stat.S_ISSOCK(os.lstat(path).st_mode):
                continue
        except OSError:
            continue
        s = socket.socket(socket.AF_UNIX)
        tries += 1
        try:
            s.connect(path)
            wins[name] = wins.get(name, 0) + 1
        except OSError:
            pass
        finally:
            s.close()
print(json.dumps({"tries": tries, "wins": wins}))
"""


class Intruder:
    """One script running as nobody."""

    def __init__(self, script: str, *args: object) -> None:
        self.process = subprocess.Popen(
            [PYTHON, "-c", textwrap.dedent(script), *map(str, args)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            user=NOBODY,
            group=NOBODY,
            extra_groups=[],
            cwd="/",
        )

    def result(self, timeout: float) -> dict[str, Any]:
        """Its report once it ends by itself (within `timeout`); killed by pid otherwise."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.communicate(timeout=5)
            raise AssertionError(f"the intruder did not end within {timeout:g}s") from None
        assert self.process.returncode == 0, err.decode(errors="replace")
        report: dict[str, Any] = json.loads(out)
        return report

    def finish(self, timeout: float = 10.0) -> dict[str, Any]:
        """Ask it to stop (SIGTERM) and return its report."""
        self.process.terminate()
        return self.result(timeout)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.communicate(timeout=5)
