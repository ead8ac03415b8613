"""One node as the ConfigMap syncer sees it: its config file, HOME and kubeconfig (so the machine's
own credentials are never used), its syncer processes, and the cluster's stand-in API server.
Every syncer is stopped by pid at `close`, which fails if one did not exit 0 on SIGTERM or if a
password or token reached its log."""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from .kubeapi import KubeApi
from .processes import ManagedProcess, wait_for

NAME, KEY = "image-cri-shim", "registries.yaml"
TOKEN = "node-token-4f7a19c2"
LOCAL_PASSWORD = "local-secret-81b"
CM_PASSWORD = "cm-secret-5d2e"

LOCAL = f"""\
shim: /run/test-shim.sock
address: http://local.hub:5000
auth: local:{LOCAL_PASSWORD}
registries:
  - {{address: mirror-a.local, priority: 600}}
  - {{address: mirror-b.local}}
cache: {{imageCacheTTL: 10m, negativeCacheTTL: 5s}}
reloadInterval: 1s
"""


class SyncerNode:
    """One node's config, HOME and kubeconfig, its syncer processes, and the cluster's API server."""

    SECRETS = (TOKEN, LOCAL_PASSWORD, CM_PASSWORD)

    def __init__(self, root: Path, api: KubeApi, local: str = LOCAL) -> None:
        self.root = root
        self.api = api
        self.config = root / "etc" / "config.yaml"
        self.config.parent.mkdir(parents=True, exist_ok=True)
        self.config.write_text(local)
        self.home = root / "home"
        self.home.mkdir(exist_ok=True)
        self.kubeconfig = api.write_kubeconfig(root / "kubeconfig", token=TOKEN)
        self.procs: list[ManagedProcess] = []
        self.secrets: list[str] = list(self.SECRETS)

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.home),
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "LANG": "C.UTF-8",
        }

    def start(self, argv: list[str] | None = None, env: dict[str, str] | None = None) -> ManagedProcess:
        command = argv or [sys.executable, "-m", "image_cri_shim", "syncer", "-f", str(self.config)]
        proc = ManagedProcess(
            command, self.root / f"syncer-{len(self.procs) + 1}.log", env=env or self.env(), name="syncer"
        )
        self.procs.append(proc)
        return proc

    def set_configmap(self, text: str) -> str:
        return self.api.apply_configmap(NAME, {KEY: text})

    def wait_config(
        self, predicate: Callable[[str], bool], what: str, timeout: float = 5.0, interval: float = 0.05
    ) -> str:
        def matching() -> str | None:
            text = self.config.read_text()
            return text if predicate(text) else None

        return wait_for(matching, timeout, what, detail=self.describe, interval=interval)

    def wait_log(self, proc: ManagedProcess, needle: str, timeout: float = 5.0) -> None:
        wait_for(
            lambda: needle in proc.log_text(), timeout, f"{needle!r} in the syncer log", detail=self.describe
        )

    def describe(self) -> str:
        return "\n".join(p.describe() for p in self.procs)

    def close(self) -> None:
        codes = [(p.pid, p.stop()) for p in self.procs]
        for proc in self.procs:
            print(proc.describe(60))
            for secret in self.secrets:
                assert secret not in proc.log_text(), f"a secret reached the log of syncer pid {proc.pid}"
        assert all(code in (0, -signal.SIGKILL) for _, code in codes), f"exit codes on SIGTERM: {codes}"
