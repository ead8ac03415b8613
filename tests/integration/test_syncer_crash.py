"""Crash safety (docs/configmap.md): whatever moment the syncer is killed at, a reader sees a whole config.

The ConfigMap changes hundreds of times while a reader thread keeps loading the config file and
the syncer is killed with SIGKILL at random moments and started again. Every read must be one
of the complete texts the syncer can write (or the original), and must load.
"""

from __future__ import annotations

import os
import random
import sys
import threading
import time
from functools import partial
from pathlib import Path

from image_cri_shim.config import ConfigError, load
from image_cri_shim.syncer.merge import Merged, merge
from tests.harness.evidence import record
from tests.harness.kubeapi import KubeApi
from tests.harness.processes import ManagedProcess, wait_for

NAME, KEY = "image-cri-shim", "registries.yaml"
LOCAL = "address: http://local.hub:5000\nshim: /run/crash-test.sock\nreloadInterval: 1s\n"
CHANGES = 200


def configmap(i: int) -> str:
    # Padding makes each write over a KiB, so a torn write could not pass as a whole file.
    return (
        f"sealos: {{address: http://v{i}.hub, auth: {{username: u, password: pw-{i}}}}}\n"
        f"registries: [{{address: r{i}.io, priority: {i}}}]\n"
        f"padding: {'p' * 1000}{i}\n"
    )


def connected(proc: ManagedProcess) -> bool:
    return "cluster access" in proc.log_text()


def test_sigkill_at_random_moments_never_leaves_a_partial_file(tmp_path: Path) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    config = tmp_path / "etc" / "config.yaml"
    config.parent.mkdir()
    config.write_text(LOCAL)
    expected = {LOCAL.encode()}
    for i in range(CHANGES + 1):
        result = merge(configmap(i), LOCAL, str(config))
        assert isinstance(result, Merged)
        expected.add(result.text.encode())

    bad: list[str] = []
    reads = 0
    done = threading.Event()

    def reader() -> None:
        nonlocal reads
        while not done.is_set():
            data = config.read_bytes()
            if data not in expected:
                bad.append(f"a read of {len(data)} bytes that is not a whole config the syncer writes")
            try:
                load(str(config))
            except ConfigError as err:
                bad.append(str(err))
            reads += 1
            time.sleep(0.001)  # leave the GIL to the stand-in API server in this process

    with KubeApi() as api:
        api.apply_configmap(NAME, {KEY: configmap(0)})
        kubeconfig = api.write_kubeconfig(tmp_path / "kubeconfig")
        env = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path), "KUBECONFIG": str(kubeconfig)}
        argv = [sys.executable, "-m", "image_cri_shim", "syncer", "-f", str(config)]
        procs: list[ManagedProcess] = []

        reading = threading.Thread(target=reader, daemon=True)
        reading.start()
        torn = 0  # kills that left a temp file: the syncer was in the middle of a write
        changed = 0
        try:
            while changed < CHANGES:
                proc = ManagedProcess(argv, tmp_path / f"syncer-{len(procs) + 1}.log", env=env, name="syncer")
                procs.append(proc)
                wait_for(
                    partial(connected, proc),
                    10,
                    "a connected syncer",
                    detail=proc.describe,
                )
                for _ in range(min(rng.randint(20, 60), CHANGES - changed)):  # version after version
                    changed += 1
                    api.apply_configmap(NAME, {KEY: configmap(changed)})
                    time.sleep(rng.uniform(0.003, 0.02))
                time.sleep(rng.uniform(0, 0.03))  # then kill it, likely amid a merge or a write
                proc.kill()
                torn += sum(1 for name in os.listdir(config.parent) if name.endswith(".tmp"))
            last = ManagedProcess(argv, tmp_path / "syncer-last.log", env=env, name="syncer")
            procs.append(last)
            final_version = api.configmap(NAME)["metadata"]["resourceVersion"]  # type: ignore[index]
            wait_for(
                lambda: f'ConfigMap" version={final_version} ' in last.log_text(),
                10,
                "the last syncer to apply the last version",
                detail=last.describe,
            )
            final = merge(configmap(changed), LOCAL, str(config))
            assert isinstance(final, Merged) and config.read_bytes() == final.text.encode()
            assert last.stop() == 0
        finally:
            done.set()
            reading.join(5)
            for proc in procs:
                proc.stop()
    writes = sum(p.log_text().count("config updated from ConfigMap") for p in procs)
    print(
        f"seed {seed}: {len(procs) - 1} SIGKILLs ({torn} left a temp file behind), "
        f"{writes} writes, {reads} reads, {len(bad)} bad"
    )
    assert not bad, bad[:5]
    # bursts of versions are merged into one write, more so on a busy machine
    assert len(procs) > 4 and writes >= CHANGES // 5 and reads > 200
    assert sorted(os.listdir(config.parent)) == ["config.yaml"], "leftover temp files are cleaned up at start"
    for proc in procs:
        assert "pw-" not in proc.log_text()
    record(
        "the syncer killed (SIGKILL) at random moments while the ConfigMap changes",
        load=f"{CHANGES} ConfigMap versions; a reader loading the config file ({reads:,} reads)",
        faults=f"{len(procs) - 1} SIGKILLs of the syncer ({torn} amid a write)",
        failed=len(bad),
        lost="none: every read a whole config; the last version applied after the restarts",
        result=f"{writes} writes, temp files of killed writers removed at start (seed {seed})",
    )
