"""Routing rules (docs/routing.md) through the shim socket, with real containerd and docker-registry.

A Harbor-style registry keeps images under per-source projects (`dockerhub/library/nginx`,
`quay/org/app`), a registry without `mirrors` stands beside it, and `upstream: false` stands for
an air-gapped node. The last tests drive the master (a config change without a restart) and
`--resolve`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from image_cri_shim import reference
from image_cri_shim.config import parse
from image_cri_shim.workers.diagnose import registry_lines
from image_cri_shim.workers.lookup.decisions import Answer, Decision, Probe
from image_cri_shim.workers.lookup.plan import explain, plan
from image_cri_shim.workers.serve.server import CONNECTION_AGE
from tests.harness import (
    Blackhole,
    Containerd,
    ImageBuilder,
    RegistryFactory,
)
from tests.harness.cri import CriClient
from tests.harness.node import Stack, entry, repo
from tests.harness.processes import ManagedProcess, wait_for
from tests.harness.service import Load, NotifySocket, Service
from tests.harness.worker import failure, tags

REFUSAL_BUDGET = 2.0  # seconds: a refused pull asks the registries (fast here) and nothing else
# An old worker hands its client connections over within its connection age
# (docs/architecture.md, "A config change, step by step").
HANDOVER = CONNECTION_AGE * 1.2 + 3.0


HARBOR_RULES = {"docker.io": "dockerhub", "quay.io": "quay"}


# -- rewriting through prefixes ----------------------------------------------------------------------


def test_a_harbor_style_registry_serves_images_under_its_prefixes(stack: Stack) -> None:
    harbor, plain = stack.registries(), stack.registries()
    stack.images(harbor, "dockerhub/library/nginx", "latest")
    app = stack.images(harbor, "quay/org/app", "v1")
    # The registry without rules holds nginx too, at a lower priority: harbor must win it.
    stack.images(plain, "library/nginx", "latest")
    own = repo()
    stack.images(plain, own, "1")
    stack.images(plain, "org/only-plain", "v1")
    shim = stack.start([entry(harbor, 800, mirrors=HARBOR_RULES), entry(plain, 100)])
    client, direct = stack.cri(shim.socket), stack.direct()

    client.pull("nginx:latest")
    at_harbor = f"{harbor.host}/dockerhub/library/nginx:latest"
    assert tags(client, "nginx:latest") == ["docker.io/library/nginx:latest"]
    assert client.pulled_as("nginx:latest") == at_harbor
    assert direct.status(f"{plain.host}/library/nginx:latest") is None, "the lower priority was not pulled"

    client.pull("quay.io/org/app:v1")
    assert client.pulled_as("quay.io/org/app:v1") == f"{harbor.host}/quay/org/app:v1"
    client.pull(f"quay.io/org/app@{app.digest}")
    status = client.status(f"quay.io/org/app@{app.digest}")
    assert status is not None
    assert list(status.repo_digests) == [f"quay.io/org/app@{app.digest}"]
    assert client.pulled_as(f"quay.io/org/app@{app.digest}") == f"{harbor.host}/quay/org/app@{app.digest}"

    # The registry without rules keeps its behaviour: every image, at the image's own path.
    client.pull(f"{own}:1")
    assert client.pulled_as(f"{own}:1") == f"{plain.host}/{own}:1"
    client.pull("quay.io/org/only-plain:v1")
    assert client.pulled_as("quay.io/org/only-plain:v1") == f"{plain.host}/org/only-plain:v1"

    assert any("docker.io/library/nginx:latest" in i.repo_tags for i in client.list("nginx:latest"))
    assert f"target={at_harbor}" in shim.log()
    for caller in ("nginx:latest", "quay.io/org/app:v1", f"quay.io/org/app@{app.digest}"):
        client.remove(caller)
        assert client.status(caller) is None, caller
    assert direct.status(at_harbor) is None, "RemoveImage by the caller's name removed the pulled image"


# -- upstream: false ------------------------------------------------------------------------------------


def test_upstream_false_refuses_at_once_naming_every_candidate(stack: Stack, blackhole: Blackhole) -> None:
    """The image's own registry is a black hole: any attempt to reach it would hang."""
    harbor, down = stack.registries(), stack.registries()
    down.stop()
    rules = {blackhole.host: "elsewhere", "quay.io": "quay"}
    shim = stack.start([entry(harbor, 800, mirrors=rules), entry(down, 100)], upstream=False)
    client = stack.cri(shim.socket)
    image = f"{blackhole.host}/team/app:v1"

    started = time.monotonic()
    code, message = failure(lambda: client.pull(image, timeout=30))
    took = time.monotonic() - started
    print(f"NOT_FOUND under upstream: false after {took * 1000:.0f} ms: {message}")
    assert code == grpc.StatusCode.NOT_FOUND, message
    assert f"{harbor.host}/elsewhere/team/app:v1: not found" in message
    assert f"{down.host}/team/app:v1: unreachable" in message
    assert "upstream: false" in message
    assert took < REFUSAL_BUDGET
    started = time.monotonic()
    assert failure(lambda: client.pull(image, timeout=30))[0] == grpc.StatusCode.NOT_FOUND
    assert time.monotonic() - started < REFUSAL_BUDGET, "the cached decision refuses as fast"

    decisions = shim.log().count("rewrite decision")
    assert client.status(image) is None, "absent, as the runtime answers"
    # containerd 1.6 ignores ListImages filters: check the image is not among the answers.
    assert not any(image in i.repo_tags for i in client.list(image))
    assert shim.log().count("rewrite decision") == decisions, "ImageStatus never probes"
    assert blackhole.accepted == 0, "nobody contacted the image's own registry"


def test_upstream_false_without_any_candidate_says_so(stack: Stack, blackhole: Blackhole) -> None:
    harbor = stack.registries()
    stack.images(harbor, "quay/org/app", "v1")
    shim = stack.start([entry(harbor, mirrors={"quay.io": "quay"})], upstream=False)
    client = stack.cri(shim.socket)
    code, message = failure(lambda: client.pull(f"{blackhole.host}/team/app:v1", timeout=30))
    assert code == grpc.StatusCode.NOT_FOUND
    assert message.endswith("no registry is a candidate for it (no mirrors entry matches)"), message
    assert blackhole.accepted == 0
    # A configured registry is no upstream: its images are pulled by their own name.
    own = f"{harbor.host}/quay/org/app:v1"
    client.pull(own)
    assert own in tags(client, own)
    client.remove(own)


# -- ImageStatus for the caller's name -----------------------------------------------------------------


def test_status_by_the_caller_name_after_a_restart_with_every_registry_down(stack: Stack) -> None:
    harbor = stack.registries()
    name = repo()
    stack.images(harbor, f"dockerhub/{name}", "1")
    registries = [entry(harbor, mirrors={"docker.io": "dockerhub"})]
    shim = stack.start(registries, upstream=False)
    caller = f"docker.io/{name}:1"
    stack.cri(shim.socket).pull(caller)
    shim.process.stop()
    harbor.stop()

    again = stack.start(registries, upstream=False)
    client = stack.cri(again.socket)
    assert caller in tags(client, caller)
    assert any(caller in i.repo_tags for i in client.list(caller))

    # With no remembered names either, the computed reference finds it, with no registry asked.
    again.process.stop()
    shutil.rmtree(stack.dir / "state")
    third = stack.start(registries, upstream=False)
    client = stack.cri(third.socket)
    started = time.monotonic()
    assert caller in tags(client, f"{name.removeprefix('library/')}:1")
    assert time.monotonic() - started < 1.0
    assert "rewrite decision" not in third.log()
    client.remove(caller)
    assert stack.direct().status(f"{harbor.host}/dockerhub/{name}:1") is None


# -- a config change through the master ------------------------------------------------------------------


@pytest.fixture
def master(containerd: Containerd) -> Iterator[Callable[[dict[str, Any]], Service]]:
    """Start the service as systemd does (see tests/integration/test_supervisor.py), no cluster around it."""
    directory = Path(tempfile.mkdtemp(prefix="route-svc-"))
    started: list[Service] = []

    def start(config: dict[str, Any]) -> Service:
        path = directory / "config.yaml"
        base = {"shim": str(directory / "shim.sock"), "stateDir": str(directory / "state")}
        path.write_text(yaml.safe_dump({**base, "cri": containerd.address, **config}))
        notify = NotifySocket(directory / "notify.sock")
        env = {
            **os.environ,
            "NOTIFY_SOCKET": str(notify.path),
            "HOME": str(directory),
            "KUBECONFIG": str(directory / "no-kubeconfig"),
        }
        argv = [sys.executable, "-m", "image_cri_shim", "-f", str(path)]
        service = Service(directory, ManagedProcess(argv, directory / "master.log", env=env), notify, path)
        started.append(service)
        service.notify.wait("READY", timeout=10)
        return service

    yield start
    for service in started:
        service.process.stop(timeout=20)
        service.notify.close()
        print(service.process.describe(lines=40))
    shutil.rmtree(directory, ignore_errors=True)


def test_a_new_mirrors_entry_takes_effect_without_a_restart(
    master: Callable[[dict[str, Any]], Service],
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
) -> None:
    """Like kubelet, one client keeps its connection across the reload: the old worker hands it
    over within the connection age, and no call fails meanwhile."""
    harbor = registry_factory()
    name = repo()
    image_factory(harbor, f"dockerhub/{name}", "1")
    service = master({"registries": [entry(harbor, mirrors={"quay.io": "quay"})], "upstream": False})
    caller = f"docker.io/{name}:1"
    master_pid = service.process.pid
    load = Load(service.socket)
    try:
        with CriClient(service.socket) as client:
            code, message = failure(lambda: client.pull(caller))
            assert code == grpc.StatusCode.NOT_FOUND and "no mirrors entry matches" in message

            def add_rule(config: dict[str, Any]) -> None:
                config["registries"][0]["mirrors"]["docker.io"] = "dockerhub"

            ready = service.reload_and_wait(lambda: service.edit(add_rule))
            assert "serving gen=2" in ready["STATUS"], ready
            after_ready = time.monotonic()

            def pulled() -> bool:
                try:
                    client.pull(caller)
                except grpc.RpcError as err:  # the old worker, with the old rules, until handed over
                    assert err.code() == grpc.StatusCode.NOT_FOUND, err.details()
                    return False
                return True

            wait_for(
                pulled,
                HANDOVER,
                "the new rule to serve the pull",
                interval=0.2,
                detail=service.process.describe,
            )
            print(
                f"the new rule served a pull {(time.monotonic() - after_ready) * 1000:.0f} ms after READY=1"
            )
            assert client.pulled_as(caller) == f"{harbor.host}/dockerhub/{name}:1"
            client.remove(caller)
    finally:
        load.stop()
    assert not load.failures, load.failures[:5]
    assert load.calls > 0
    assert service.process.pid == master_pid and service.process.alive(), "no restart"


# -- --resolve ------------------------------------------------------------------------------------------


def run_cli(config: dict[str, Any], directory: Path, *args: str) -> str:
    """stdout of `image-cri-shim -f CONFIG ARGS...`, which must exit 0."""
    path = directory / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    done = subprocess.run(
        [sys.executable, "-m", "image_cri_shim", "-f", str(path), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    print(done.stdout)
    return done.stdout


def test_resolve_lines_show_rules_answers_and_registries_left_out() -> None:
    cfg = parse(
        "address: http://offline.io\nmirrors: {quay.io: quay}\nregistries:\n"
        "  - {address: harbor.io, priority: 2000, mirrors: {docker.io: dockerhub, docker.io/library: ''}}\n"
        "  - {address: backup.io, priority: 100}\n",
        "test.yaml",
    )
    ref = reference.parse("nginx:1.27")
    harbor, _ = plan(ref, cfg.registries)
    decision = Decision(ref, harbor, ((harbor, Probe(Answer.FOUND)),), degraded=False)
    assert registry_lines(decision, explain(ref, cfg.registries)) == [
        '1. harbor.io/nginx:1.27  found  [mirrors docker.io/library: ""]',
        "2. offline.io  no candidate: no mirrors entry matches docker.io/library/nginx",
        "3. backup.io/library/nginx:1.27  not asked",
    ]


def test_resolve_shows_every_registry_with_its_computed_reference(
    containerd: Containerd, registry_factory: RegistryFactory, image_factory: ImageBuilder, tmp_path: Path
) -> None:
    offline, harbor, backup = registry_factory(), registry_factory(auth=True), registry_factory()
    assert harbor.auth is not None and harbor.password is not None
    image_factory(harbor, "dockerhub/library/nginx", "1.27")
    image_factory(backup, "library/nginx", "1.27")
    config = {
        "address": offline.url,
        "mirrors": {"quay.io": "quay"},
        "upstream": False,
        "registries": [
            {"address": harbor.url, "auth": harbor.auth, "priority": 800, "mirrors": HARBOR_RULES},
            {"address": backup.url, "priority": 100},
        ],
    }
    summary = run_cli({**config, "cri": containerd.address}, tmp_path, "--dry-run")
    assert "       mirrors docker.io -> dockerhub, quay.io -> quay\n" in summary
    assert (
        "  upstream     false: an image no configured registry holds is refused with NOT_FOUND\n" in summary
    )
    out = run_cli(config, tmp_path, "--resolve", "nginx:1.27")
    assert f"target    {harbor.host}/dockerhub/library/nginx:1.27\n" in out
    assert f"user      {harbor.username}\n" in out
    assert f"1. {offline.host}  no candidate: no mirrors entry matches docker.io/library/nginx\n" in out
    assert (
        f"{harbor.host}/dockerhub/library/nginx:1.27  found" in out
        and "[mirrors docker.io: dockerhub]" in out
    )
    assert f"3. {backup.host}/library/nginx:1.27  found" in out, "every candidate's answer is shown"
    assert harbor.password not in out

    backup.stop()
    refused = run_cli(config, tmp_path, "--resolve", "quay.io/org/missing:v1")
    assert "target    none: PullImage fails with NOT_FOUND (upstream: false)" in refused
    assert f"{offline.host}/quay/org/missing:v1  not found  [mirrors quay.io: quay]" in refused
    assert f"{backup.host}/org/missing:v1  unreachable" in refused
    assert "message   quay.io/org/missing:v1: no configured registry holds it" in refused
