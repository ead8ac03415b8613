"""The ConfigMap syncer as the master runs it: a real child process against the stand-in API server.

Every test starts `python -m image_cri_shim syncer -f CONFIG` with KUBECONFIG and HOME set to
test paths, so the machine's own credentials are never used, and stops it by pid. Waits are
bounded; after each test every syncer must have exited 0 on SIGTERM and no password or token
may appear in its log.
"""

from __future__ import annotations

import errno
import os
import signal
import stat
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path

import pytest

from image_cri_shim.config import load
from image_cri_shim.syncer.cluster import NODE_KUBECONFIGS
from tests.harness.evidence import record
from tests.harness.kubeapi import KubeApi
from tests.harness.processes import HarnessError, ManagedProcess, wait_for
from tests.harness.syncer import CM_PASSWORD, KEY, LOCAL, LOCAL_PASSWORD, NAME, TOKEN, SyncerNode

DOCUMENTED_EXAMPLE = f"""\
version: "v1"
sealos:  {{address: "https://registry.company.com", auth: {{username: admin, password: {CM_PASSWORD}}}}}
registries:
  - {{address: "https://backup.company.com", auth: {{username: u, password: {CM_PASSWORD}-b}}, priority: 800}}
offlinePriority: 1000
force: true
timeout: "20m"
cache: {{imageCacheSize: 2048, imageCacheTTL: "1h"}}
"""


def configmap(address: str, password: str = CM_PASSWORD) -> str:
    return f"sealos: {{address: {address}, auth: {{username: admin, password: {password}}}}}\n"


def contains(needle: str, text: str) -> bool:
    return needle in text


def logged_times(proc: ManagedProcess, needle: str, times: int) -> bool:
    return proc.log_text().count(needle) == times


def watches_requested(api: KubeApi, count: int) -> bool:
    return api.requests["watch"] == count


def warnings_for(proc: ManagedProcess, version: str) -> list[str]:
    return [
        line
        for line in proc.log_text().splitlines()
        if " level=warning " in f" {line} " and f'configmap="version {version}"' in line
    ]


@pytest.fixture
def api() -> Iterator[KubeApi]:
    with KubeApi(tokens={TOKEN: "allowed"}) as server:
        yield server


@pytest.fixture
def node(tmp_path: Path, api: KubeApi) -> Iterator[SyncerNode]:
    n = SyncerNode(tmp_path, api)
    yield n
    n.close()


def require_no_node_credentials() -> None:
    """Tests of the fallthrough order must not find a real node's kubeconfig on this machine."""
    present = [p for p in NODE_KUBECONFIGS if os.path.exists(p)]
    if present or os.environ.get("KUBERNETES_SERVICE_HOST"):
        raise HarnessError(f"this machine has cluster credentials ({present}); run these tests elsewhere")


# --------------------------------------------------------------------------- sync


@pytest.mark.parametrize("entry", ["image_cri_shim syncer", "image_cri_shim.syncer"])
def test_initial_sync(node: SyncerNode, entry: str) -> None:
    node.set_configmap(DOCUMENTED_EXAMPLE)
    before = node.config.read_bytes()
    proc = node.start([sys.executable, "-m", *entry.split(), "-f", str(node.config)])
    node.wait_config(lambda t: "registry.company.com" in t, "the initial sync")
    config = load(str(node.config))
    # Registries replaced as a whole; sealos mapped to address/auth.
    assert [(r.domain, r.username, r.priority) for r in config.registries] == [
        ("registry.company.com", "admin", 1000),
        ("backup.company.com", "u", 800),
    ]
    assert config.registries[0].password == CM_PASSWORD
    # Keys the ConfigMap does not set keep their local values; cache merges per sub-key.
    assert config.shim == "/run/test-shim.sock"
    assert (config.cache.image_cache_size, config.cache.image_cache_ttl) == (2048, 3600.0)
    assert config.cache.negative_cache_ttl == 5.0
    assert config.reload_interval == 1.0 and config.force and config.timeout == 1200.0
    assert stat.S_IMODE(node.config.stat().st_mode) == 0o600
    assert before != node.config.read_bytes()
    node.wait_log(proc, f'msg="cluster access" source="$KUBECONFIG ({node.kubeconfig})"')
    title = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")[0]
    assert title == b"image-cri-shim: syncer"  # the process titles of docs/operations.md


def test_changes_reach_the_file_within_2s(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://v0.hub"))
    proc = node.start()
    node.wait_config(lambda t: "v0.hub" in t, "the initial sync")
    timings: list[float] = []
    for i in range(1, 21):
        password = f"{CM_PASSWORD}-{i}"
        node.secrets.append(password)  # each version's password must stay out of the log
        started = time.monotonic()
        version = node.set_configmap(configmap(f"http://v{i}.hub", password))
        node.wait_config(partial(contains, f"v{i}.hub"), f"version {version}", timeout=2.0, interval=0.002)
        timings.append(time.monotonic() - started)
    print(
        f"ConfigMap change -> config file: p50 {statistics.median(timings) * 1000:.1f} ms, "
        f"max {max(timings) * 1000:.1f} ms over {len(timings)} changes"
    )
    assert max(timings) < 2.0
    updates = partial(logged_times, proc, 'msg="config updated from ConfigMap"', 21)
    wait_for(updates, 2, "one log line per version")  # the line follows the write


def test_absent_keys_kept_and_unchanged_content_not_rewritten(node: SyncerNode) -> None:
    node.set_configmap("debug: true\n")
    proc = node.start()
    text = node.wait_config(lambda t: "debug: true" in t, "debug from the ConfigMap")
    config = load(str(node.config))
    assert [r.domain for r in config.registries] == ["local.hub:5000", "mirror-a.local", "mirror-b.local"]
    assert config.registries[0].password == LOCAL_PASSWORD and config.cache.image_cache_ttl == 600.0
    written = node.config.stat()
    version = node.set_configmap("debug: true\n# same settings, new version\n")
    node.wait_log(proc, f'msg="config already matches ConfigMap" version={version}')
    assert node.config.read_text() == text
    assert (node.config.stat().st_ino, node.config.stat().st_mtime_ns) == (
        written.st_ino,
        written.st_mtime_ns,
    )


def test_malformed_versions_leave_the_file_and_are_logged_once(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://good.hub"))
    proc = node.start()
    node.wait_config(lambda t: "good.hub" in t, "the initial sync")
    good = node.config.read_bytes()
    cases = [
        ({KEY: "sealos: {address: [\n"}, "invalid YAML"),
        (
            {KEY: "registries: [{address: a.io, priority: high}]\n"},
            'priority: expected an integer, got \\"high\\"',
        ),
        ({"wrong-key.yaml": "debug: true\n"}, "has no key registries.yaml"),
        ({KEY: "sealos: {auth: {username: u, password: 123}}\n"}, "password: expected a string (quote it)"),
    ]
    versions = []
    for data, reason in cases:
        version = node.api.apply_configmap(NAME, data)
        versions.append(version)
        wait_for(partial(warnings_for, proc, version), 3, f"the warning for version {version}")
        assert reason in warnings_for(proc, version)[0]
        assert node.config.read_bytes() == good
    # The same versions again (a re-list after 410, several re-checks): nothing new is logged.
    lists = node.api.requests["list"]
    node.api.stop()
    node.api.apply_configmap("unrelated", {"x": "1"})
    node.api.compact()
    node.api.start()
    wait_for(lambda: node.api.requests["list"] > lists, 10, "a re-list", detail=node.describe)
    time.sleep(2.2)  # more than two reloadIntervals of re-checks
    assert proc.alive()
    for version in versions:
        assert len(warnings_for(proc, version)) == 1, proc.log_tail()
    assert node.config.read_bytes() == good
    node.set_configmap(configmap("http://fixed.hub"))
    node.wait_config(lambda t: "fixed.hub" in t, "a good version after the bad ones")
    record(
        "malformed ConfigMap versions, then a re-list after the API server restarted",
        load="syncer following the ConfigMap, reloadInterval 1 s",
        faults=f"{len(cases)} bad versions (invalid YAML, bad priority, missing key, non-string password); "
        "API server restart + compaction (410)",
        failed=0,
        lost="none: the config file stayed byte-for-byte until a good version",
        result="each version logged once (also after the re-list); the next good version applied",
    )


def test_deleted_configmap_then_recreated(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://first.hub"))
    proc = node.start()
    node.wait_config(lambda t: "first.hub" in t, "the initial sync")
    synced = node.config.read_bytes()
    node.api.delete_configmap(NAME)
    node.wait_log(proc, 'msg="ConfigMap kube-system/image-cri-shim not found: config file unchanged"')
    time.sleep(1.5)
    assert node.config.read_bytes() == synced
    assert proc.log_text().count("not found: config file unchanged") == 1
    node.set_configmap(configmap("http://again.hub"))
    node.wait_config(lambda t: "again.hub" in t, "the re-created ConfigMap")


# --------------------------------------------------------------------------- the watch


def test_api_server_restart_mid_watch(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://before.hub"))
    proc = node.start()
    node.wait_config(lambda t: "before.hub" in t, "the initial sync")
    node.api.stop()
    node.set_configmap(configmap("http://meanwhile.hub"))  # made while the server is down
    time.sleep(0.5)
    node.api.start()
    node.wait_config(lambda t: "meanwhile.hub" in t, "the change made while the server was down", 10)
    # Resumed from the last version: the server replayed the change, no new list was needed.
    assert node.api.requests["list"] == 1 and node.api.expired_sent == 0
    node.wait_log(proc, 'msg="watch resumed"')
    node.set_configmap(configmap("http://after.hub"))
    node.wait_config(lambda t: "after.hub" in t, "a change after the restart", 2)


def test_gone_410_lists_again(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://before.hub"))
    node.start()
    node.wait_config(lambda t: "before.hub" in t, "the initial sync")
    node.api.stop()
    node.set_configmap(configmap("http://compacted.hub"))
    node.api.apply_configmap("unrelated", {"x": "1"})
    node.api.compact()  # the syncer's resourceVersion is now too old
    node.api.start()
    node.wait_config(lambda t: "compacted.hub" in t, "the change, through a re-list", 10)
    assert node.api.expired_sent >= 1 and node.api.requests["list"] == 2


def test_bookmarks_keep_the_resume_point_fresh(tmp_path: Path) -> None:
    with KubeApi(tokens={TOKEN: "allowed"}, bookmark_interval=0.2) as api:
        node = SyncerNode(tmp_path, api)
        try:
            node.set_configmap(configmap("http://before.hub"))
            node.start()
            node.wait_config(lambda t: "before.hub" in t, "the initial sync")
            for i in range(3):
                api.apply_configmap("unrelated", {"x": str(i)})  # versions move on elsewhere
            time.sleep(0.8)  # bookmarks carry the new version to the syncer
            api.stop()
            api.compact()
            api.start()
            node.set_configmap(configmap("http://after.hub"))
            node.wait_config(lambda t: "after.hub" in t, "the change after compaction", 10)
            assert api.expired_sent == 0 and api.requests["list"] == 1
        finally:
            node.close()


def test_idle_costs_no_requests(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://idle.hub"))
    node.start()
    node.wait_config(lambda t: "idle.hub" in t, "the initial sync")
    wait_for(lambda: node.api.active_watches == 1, 5, "the watch to be open")
    node.api.reset_counts()
    time.sleep(10)  # ten reloadIntervals of local re-checks; the watch asks for 30-45 minutes
    print(f"requests during 10 s idle: {dict(node.api.requests)}; open watches: {node.api.active_watches}")
    assert sum(node.api.requests.values()) == 0
    assert node.api.active_watches == 1


def test_sigterm_and_sigint_exit_0_promptly_while_watching(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://term.hub"))
    procs = {signal.SIGTERM: node.start(), signal.SIGINT: node.start()}
    wait_for(partial(watches_requested, node.api, 2), 5, "both watches to be open", detail=node.describe)
    for signum, proc in procs.items():
        started = time.monotonic()
        proc.signal(signum)
        code = proc.popen.wait(5)
        assert code == 0 and time.monotonic() - started < 2.0, (signum, code)


# --------------------------------------------------------------------------- cluster access


def test_no_cluster_one_line_then_quiet_then_found(node: SyncerNode) -> None:
    require_no_node_credentials()
    proc = node.start(env=node.env(kubeconfig=node.root / "absent-kubeconfig"))
    node.wait_log(proc, 'msg="no cluster access, retrying quietly" every=1s')
    time.sleep(2.5)  # two more reloadIntervals of quiet retries
    assert proc.alive()
    lines = proc.log_text().splitlines()
    assert len(lines) == 2, lines  # "following ConfigMap", "no cluster access"
    assert "no such file" in lines[1] and "not running in a pod" in lines[1]
    node.set_configmap(configmap("http://later.hub"))
    home_config = node.api.write_kubeconfig(node.home / ".kube" / "config", token=TOKEN)
    node.wait_config(lambda t: "later.hub" in t, "the sync once credentials appear", 5)
    node.wait_log(proc, f'msg="cluster access" source={home_config}')


@pytest.mark.parametrize("status", [401, 403])
def test_denied_credentials_move_on_to_the_next_source(tmp_path: Path, status: int) -> None:
    require_no_node_credentials()
    with KubeApi(tokens={TOKEN: "allowed", "forbidden-token": "forbidden"}) as api:
        node = SyncerNode(tmp_path, api)
        try:
            refused = api.write_kubeconfig(
                tmp_path / "refused", token="revoked" if status == 401 else "forbidden-token"
            )
            good = api.write_kubeconfig(node.home / ".kube" / "config", token=TOKEN)
            node.set_configmap(configmap("http://next.hub"))
            proc = node.start(env=node.env(kubeconfig=refused))
            node.wait_config(lambda t: "next.hub" in t, "the sync through $HOME/.kube/config")
            node.wait_log(proc, f'msg="cluster access" source={good}')
            assert [s for _, _, s in api.log if s in (401, 403)] == [status]
        finally:
            node.close()


def test_disabled_is_idle(tmp_path: Path, api: KubeApi) -> None:
    node = SyncerNode(tmp_path, api, local=LOCAL + "configMap: {enabled: false}\n")
    try:
        node.set_configmap(configmap("http://ignored.hub"))
        before = node.config.read_bytes()
        proc = node.start()
        node.wait_log(proc, "ConfigMap sync is off")
        time.sleep(1.5)
        assert proc.alive() and sum(api.requests.values()) == 0
        assert node.config.read_bytes() == before
    finally:
        node.close()


# --------------------------------------------------------------------------- the local file


def test_local_edits_are_merged_again_and_settings_followed(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://cluster.hub"))
    node.api.apply_configmap("other-map", {KEY: configmap("http://other.hub")})
    proc = node.start()
    node.wait_config(lambda t: "cluster.hub" in t, "the initial sync")
    # An edit that drops a ConfigMap setting: merged again at the next re-check.
    node.config.write_text(LOCAL + "debug: false\n")
    node.wait_config(lambda t: "cluster.hub" in t and "debug: false" in t, "the edit merged again", 4)
    # Pointing the syncer at another ConfigMap takes effect without a restart.
    node.config.write_text(LOCAL + "configMap: {name: other-map}\n")
    node.wait_config(lambda t: "other.hub" in t, "the sync from the other ConfigMap", 4)
    node.wait_log(proc, 'msg="following ConfigMap" configmap=kube-system/other-map')
    assert proc.log_text().count('msg="following ConfigMap"') == 2


def test_bad_local_config_exits_78() -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "config.yaml"
        path.write_text("registries: [{address: a.io, priority: high}]\n")
        done = subprocess.run(
            [sys.executable, "-m", "image_cri_shim", "syncer", "-f", str(path)],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    assert done.returncode == 78
    assert done.stderr == f'config {path}: registries[0].priority: expected an integer, got "high"\n'


def launcher(config: Path, prelude: str) -> list[str]:
    """The syncer command, exec'd after `prelude` ran in the same process (same pid)."""
    argv = [sys.executable, "-m", "image_cri_shim", "syncer", "-f", str(config)]
    code = f"import os, resource, sys\n{prelude}\nos.execv({sys.executable!r}, {argv!r})\n"
    return [sys.executable, "-c", code]


def test_write_failure_leaves_the_file_and_is_logged_once(node: SyncerNode) -> None:
    """A write that fails half-way (here EFBIG from a file size limit; a full disk gives ENOSPC)."""
    limit = 64 * 1024
    node.set_configmap(configmap("http://small.hub"))
    proc = node.start(launcher(node.config, f"resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))"))
    node.wait_config(lambda t: "small.hub" in t, "the initial sync")
    synced = node.config.read_bytes()
    version = node.set_configmap(configmap("http://big.hub") + f"note: {'x' * limit}\n")
    wait_for(lambda: warnings_for(proc, version), 5, "the write failure warning", detail=node.describe)
    time.sleep(2.2)  # retried quietly at each reloadInterval
    assert len(warnings_for(proc, version)) == 1
    assert "cannot write config" in warnings_for(proc, version)[0] and "File too large" in proc.log_text()
    assert node.config.read_bytes() == synced
    assert [p.name for p in node.config.parent.iterdir()] == ["config.yaml"]
    node.set_configmap(configmap("http://fits.hub"))
    node.wait_config(lambda t: "fits.hub" in t, "a version that fits")
    record(
        "config write fails midway: file size limit (RLIMIT_FSIZE)",
        load="syncer following the ConfigMap, reloadInterval 1 s",
        faults=f"a ConfigMap version larger than the {limit // 1024} KiB file size limit (EFBIG)",
        failed=0,
        lost="none: old file byte-for-byte, no temp file left",
        result="warned once, retried quietly; the next version that fits is written",
    )


def test_unwritable_config_directory(node: SyncerNode) -> None:
    node.set_configmap(configmap("http://nowhere.hub"))
    before = node.config.read_bytes()
    node.config.parent.chmod(0o555)
    # root writes anywhere: without CAP_DAC_OVERRIDE it obeys the mode like everyone else
    prelude = (
        "import ctypes\nlibc = ctypes.CDLL(None, use_errno=True)\n"
        "assert all(libc.prctl(24, cap, 0, 0, 0) == 0 for cap in (1, 2))  # PR_CAPBSET_DROP DAC_*"
        if os.geteuid() == 0
        else "pass"
    )
    try:
        proc = node.start(launcher(node.config, prelude))
        version = node.api.resource_version
        wait_for(lambda: warnings_for(proc, version), 5, "the write failure warning", detail=node.describe)
        time.sleep(1.5)  # retried quietly at each reloadInterval
        assert len(warnings_for(proc, version)) == 1
        assert "cannot write config" in warnings_for(proc, version)[0]
        assert "Permission denied" in warnings_for(proc, version)[0]
        assert node.config.read_bytes() == before and proc.alive()
    finally:
        node.config.parent.chmod(0o755)
    record(
        "config directory not writable",
        load="syncer following the ConfigMap, reloadInterval 1 s",
        faults="directory mode 0555, the syncer without CAP_DAC_OVERRIDE",
        failed=0,
        lost="none: old file byte-for-byte",
        result="warned once (Permission denied), retried quietly, the syncer keeps running",
    )


def mount_tmpfs(path: Path, size: str) -> None:
    """A tiny tmpfs at `path`; the test fails with the reason when mounting is not permitted."""
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.fail(f"cannot mount a tmpfs for the full-disk test (needs root): {done.stderr.strip()}")


def fill(directory: Path) -> Path:
    """Write a file in `directory` until the filesystem is full; returns it."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as err:
        assert err.errno == errno.ENOSPC, err
    finally:
        os.close(fd)
    return filler


def test_full_filesystem_leaves_the_file_intact(tmp_path: Path, api: KubeApi) -> None:
    """A write that fails on a full filesystem (ENOSPC): the old file stays byte-for-byte, and
    the same version is written once there is room again."""
    etc = tmp_path / "etc"
    mount_tmpfs(etc, "256k")
    try:
        node = SyncerNode(tmp_path, api)
        try:
            node.set_configmap(configmap("http://roomy.hub"))
            proc = node.start()
            node.wait_config(lambda t: "roomy.hub" in t, "the initial sync")
            synced = node.config.read_bytes()
            filler = fill(etc)
            version = node.set_configmap(configmap("http://full.hub"))
            wait_for(
                lambda: warnings_for(proc, version), 5, "the write failure warning", detail=node.describe
            )
            time.sleep(2.2)  # retried quietly at each reloadInterval
            assert len(warnings_for(proc, version)) == 1
            assert "No space left on device" in warnings_for(proc, version)[0]
            assert node.config.read_bytes() == synced
            assert sorted(p.name for p in etc.iterdir()) == ["config.yaml", "filler"]
            filler.unlink()
            node.wait_config(lambda t: "full.hub" in t, "the same version once there is room")
        finally:
            node.close()
    finally:
        done = subprocess.run(["umount", str(etc)], capture_output=True, text=True, timeout=30, check=False)
        assert done.returncode == 0, f"umount {etc}: {done.stderr}"
    record(
        "config write fails midway: full filesystem (256 KiB tmpfs)",
        load="syncer following the ConfigMap, reloadInterval 1 s",
        faults="the filesystem filled up before a new ConfigMap version (ENOSPC)",
        failed=0,
        lost="none: old file byte-for-byte, no temp file left",
        result="warned once, retried quietly; written as soon as there was room",
    )
