"""The systemd notify protocol, from the master only (NotifyAccess=main).

READY=1 once the first worker serves; RELOADING=1 with MONOTONIC_USEC at the start of a reload
and READY=1 at its end (systemd's Type=notify-reload protocol, understood by older systemd as
plain status updates); STATUS= lines for `systemctl status`; WATCHDOG=1 while healthy;
STOPPING=1 on shutdown. Without $NOTIFY_SOCKET every call is a no-op.
"""

from __future__ import annotations

import os
import time

from sdnotify import SystemdNotifier

from image_cri_shim import logs

# Variables that belong to the master alone: children must not inherit them.
MASTER_ONLY_ENV = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")


class Notifier:
    def __init__(self) -> None:
        self._notifier = SystemdNotifier()
        self.enabled = bool(os.environ.get("NOTIFY_SOCKET"))
        self.watchdog_interval = self._watchdog_interval()

    @staticmethod
    def _watchdog_interval() -> float | None:
        """Half the watchdog period systemd asked for, or None when it asked for none."""
        usec = os.environ.get("WATCHDOG_USEC", "")
        pid = os.environ.get("WATCHDOG_PID", "")
        if not usec.isdigit() or int(usec) == 0 or (pid and pid != str(os.getpid())):
            return None
        return int(usec) / 2e6

    def _send(self, *lines: str) -> None:
        if self.enabled:
            self._notifier.notify("\n".join(logs.redact(line) for line in lines))

    def ready(self, status: str) -> None:
        self._send("READY=1", f"STATUS={status}")

    def reloading(self) -> None:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        self._send("RELOADING=1", f"MONOTONIC_USEC={usec}", "STATUS=reloading")

    def status(self, status: str) -> None:
        self._send(f"STATUS={status}")

    def watchdog(self) -> None:
        self._send("WATCHDOG=1")

    def stopping(self) -> None:
        self._send("STOPPING=1", "STATUS=stopping")
