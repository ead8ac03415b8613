"""Pull-time failover: a rewritten PullImage that the target registry fails goes on to the next
source, in the same call.

The resolver's part (drop the decision, count, one failover for pulls that fail together) is
tested against tiny registries; the rest end to end, with the worker in front of the real
containerd and real docker-registry instances that lose blobs, answer 5xx or die mid-pull.
"""

from __future__ import annotations

import asyncio
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import cast

import grpc
import prometheus_client
import pytest

from image_cri_shim import config, reference
from image_cri_shim.metrics import WorkerMetrics
from image_cri_shim.workers.lookup.client import Platform, RegistryClient
from image_cri_shim.workers.lookup.decisions import Answer
from image_cri_shim.workers.lookup.plan import Candidate, Planner
from image_cri_shim.workers.lookup.resolver import Resolver
from image_cri_shim.workers.pull.failures import Cause, Verdict
from tests.harness import Blackhole, Containerd
from tests.harness.clock import Clock
from tests.harness.containerd import SMALL_DISK, SUITES
from tests.harness.evidence import record
from tests.harness.faultproxy import FaultProxy
from tests.harness.images import push
from tests.harness.node import Shim, Stack, entry, repo
from tests.harness.processes import wait_for
from tests.harness.pullfaults import MIB, big_content, corrupt_layer, delete_layer
from tests.harness.registry import Registry
from tests.harness.tinyregistry import MANIFEST, TinyRegistry
from tests.harness.worker import failure, tags

AMD64 = Platform("linux", "amd64")

RUNTIMES = ("host", *SUITES)  # this machine's containerd (1.6), and Debian's 1.7 and 2.x
MISSING = Verdict(Cause.NOT_FOUND, "not found")
RESET = Verdict(Cause.CONNECTION, "connection reset")

# -- the resolver's part ---------------------------------------------------------------------------


class Three:
    """A resolver over three tiny registries (priorities 900, 500, 100) that all hold nginx:1.27."""

    def __init__(self) -> None:
        self.servers = [TinyRegistry() for _ in range(3)]
        for server in self.servers:
            server.add_manifest("library/nginx", "1.27", MANIFEST)
        priorities = zip(self.servers, (900, 500, 100), strict=True)
        text = "registries:\n" + "".join(f"  - {{address: {s.url}, priority: {p}}}\n" for s, p in priorities)
        cfg = config.parse(text, "t.yaml")
        self.clock = Clock()
        self.metrics = WorkerMetrics(recording=True)
        self.clients = {
            r.domain: RegistryClient(r, AMD64, clock=self.clock, metrics=self.metrics) for r in cfg.registries
        }
        self.resolver = Resolver(
            Planner(cfg.registries), self.clients, cfg.cache, clock=self.clock, metrics=self.metrics
        )
        self.ref = reference.parse("nginx:1.27")
        self.loop = asyncio.new_event_loop()

    def run(self, coroutine: object) -> object:
        return self.loop.run_until_complete(coroutine)  # type: ignore[arg-type]

    def target(self) -> Candidate:
        decision = self.loop.run_until_complete(self.resolver.resolve(self.ref))
        assert decision.target is not None
        return decision.target

    def failed_over(self, registry: str, cause: Cause) -> float:
        family = cast(prometheus_client.Counter, self.metrics.failovers)
        wanted = {"registry": registry, "cause": cause.value}
        counted = [
            s.value
            for metric in family.collect()
            for s in metric.samples
            if s.name.endswith("_total") and s.labels == wanted
        ]
        return counted[0] if counted else 0.0

    def close(self) -> None:
        for client in self.clients.values():
            self.loop.run_until_complete(client.aclose())
        self.loop.close()
        for server in self.servers:
            server.stop()


@pytest.fixture
def three() -> Iterator[Three]:
    resolver = Three()
    yield resolver
    resolver.close()


def test_failover_drops_the_decision_and_names_the_next_holder(three: Three) -> None:
    first = three.target()
    assert first.registry.domain == three.servers[0].host
    decision = three.loop.run_until_complete(
        three.resolver.failover(three.ref, first, frozenset({first.registry.domain}), MISSING)
    )
    assert decision.target is not None and decision.target.registry.domain == three.servers[1].host
    assert decision.answers[0][0] == first and decision.answers[0][1].answer is Answer.NOT_FOUND
    assert three.target() == decision.target, "the decision through the failed registry is gone"
    assert three.clients[first.registry.domain].available(), "a missing blob does not back it off"
    assert three.failed_over(first.registry.domain, Cause.NOT_FOUND) == 1

    second = decision.target
    tried = frozenset({first.registry.domain, second.registry.domain})
    last = three.loop.run_until_complete(three.resolver.failover(three.ref, second, tried, RESET))
    assert last.target is not None and last.target.registry.domain == three.servers[2].host
    assert not three.clients[second.registry.domain].available(), "a connection failure backs it off"
    tried |= {last.target.registry.domain}
    nothing = three.loop.run_until_complete(three.resolver.failover(three.ref, last.target, tried, MISSING))
    assert nothing.target is None
    assert [c.registry.domain for c, _ in nothing.answers] == [three.servers[2].host]


def test_pulls_that_fail_together_fail_over_once(three: Three) -> None:
    first = three.target()
    tried = frozenset({first.registry.domain})
    asked = three.servers[1].count()

    async def eight() -> list[object]:
        return await asyncio.gather(
            *(three.resolver.failover(three.ref, first, tried, MISSING) for _ in range(8))
        )

    decisions = three.loop.run_until_complete(eight())
    assert len({id(d) for d in decisions}) == 1, "one shared decision"
    late = three.loop.run_until_complete(three.resolver.failover(three.ref, first, tried, MISSING))
    assert late is decisions[0], "a pull that fails later takes the decision already made"
    assert three.failed_over(first.registry.domain, Cause.NOT_FOUND) == 1
    probes = three.servers[1].count() - asked
    assert probes == 1, f"the next registry was asked {probes} times"


# -- end to end ------------------------------------------------------------------------------------

FAILOVER = re.compile(r'msg="pull failover".*')


def failovers(shim: Shim) -> list[str]:
    return FAILOVER.findall(shim.log())


def pair(stack: Stack, size: int = 0) -> tuple[str, Registry, Registry]:
    """A primary and a backup registry that both hold the same new image (`size`: hex digits of
    content that does not compress, for a layer of `size / 2` bytes)."""
    primary, backup = stack.registries(), stack.registries()
    name = repo()
    content = big_content(size) if size else uuid.uuid4().hex
    for registry in (primary, backup):
        stack.images(registry, name, "1", content=content)
    return name, primary, backup


def runtime(suite: str, stack: Stack, containerd_of: Callable[[str], Containerd]) -> Containerd:
    return stack.containerd if suite == "host" else containerd_of(suite)


@pytest.mark.parametrize("suite", RUNTIMES)
def test_partial_mirror_fails_over_in_the_same_pull(
    suite: str, stack: Stack, containerd_of: Callable[[str], Containerd]
) -> None:
    daemon = runtime(suite, stack, containerd_of)
    name, primary, backup = pair(stack)
    delete_layer(primary, name, "1")
    shim = stack.start_on(daemon.address, [entry(primary, 900), entry(backup, 100)])
    client = stack.cri(shim.socket)
    started = time.monotonic()
    client.pull(f"{name}:1")
    seconds = time.monotonic() - started
    caller = f"docker.io/{name}:1"
    assert client.pulled_as(caller) == f"{backup.host}/{name}:1"
    lines = failovers(shim)
    assert len(lines) == 1, shim.log()
    assert f"from={primary.host}/{name}:1" in lines[0] and f"to={backup.host}/{name}:1" in lines[0]
    assert 'why="not found"' in lines[0], lines[0]
    again = time.monotonic()
    client.pull(f"{name}:1")
    cached = time.monotonic() - again
    assert len(failovers(shim)) == 1, "the next pull goes to the backup at once"
    record(
        f"partial mirror: the primary lost a layer blob (worker, containerd {daemon.release})",
        load="2 PullImage",
        faults="layer blob deleted from the primary's storage; manifest still served",
        failed=0,
        lost="none",
        result=f"first pull succeeded from the backup in {seconds:.2f} s (one failover); next {cached:.2f} s",
    )


@pytest.mark.parametrize("suite", RUNTIMES)
def test_primary_killed_mid_pull_fails_over_in_the_same_pull(
    suite: str, stack: Stack, containerd_of: Callable[[str], Containerd]
) -> None:
    daemon = runtime(suite, stack, containerd_of)
    name, primary, backup = pair(stack, 16 * MIB)
    proxy = FaultProxy(primary.port)
    proxy.fault.rate = 2 * MIB
    try:
        shim = stack.start_on(daemon.address, [entry(f"http://{proxy.host}", 900), entry(backup, 100)])
        client = stack.cri(shim.socket)
        killed: list[float] = []

        def kill() -> None:
            # Mid-pull is when the layer flows, not a time: on a busy machine the pull may not
            # have reached its blobs 1.5 s in. Manifest and config are a few KiB; 1 MiB is the layer.
            wait_for(lambda: proxy.relayed >= MIB, 30, "the layer to flow through the proxy")
            primary.kill()
            killed.append(time.monotonic())

        killer = threading.Thread(target=kill, daemon=True)
        started = time.monotonic()
        killer.start()
        client.pull(f"{name}:1", timeout=60)
        done = time.monotonic()
        killer.join(30)
    finally:
        proxy.stop()
    assert killed, "the pull ended before the primary was killed"
    assert proxy.cuts, "the primary's answer was cut short"
    assert client.pulled_as(f"{name}:1") == f"{backup.host}/{name}:1"
    lines = failovers(shim)
    assert len(lines) == 1 and f"to={backup.host}/{name}:1" in lines[0], shim.log()
    assert "registry unreachable" in shim.log(), "the primary is backed off"
    record(
        f"primary registry SIGKILLed in the middle of a pull (worker, containerd {daemon.release})",
        load="1 PullImage of an 8 MiB layer at 2 MiB/s",
        faults="primary docker-registry SIGKILLed once 1 MiB of the layer had arrived",
        failed=0,
        lost="none",
        result=(
            f"the same PullImage succeeded from the backup {done - proxy.cuts[0]:.2f} s after the"
            f" connection broke ({done - killed[0]:.2f} s after the kill, what the killed registry had"
            f" sent still arriving; {done - started:.2f} s in all); primary backed off"
        ),
    )


@pytest.mark.parametrize(
    ("status", "why", "backs_off"),
    [(500, "HTTP 500", True), (503, "HTTP 503", True), (429, "HTTP 429", True), (403, "HTTP 403", False)],
)
def test_blob_errors_fail_over_and_back_off_only_for_connection_level_causes(
    status: int, why: str, backs_off: bool, stack: Stack
) -> None:
    name, primary, backup = pair(stack)
    proxy = FaultProxy(primary.port)
    proxy.fault.status = status
    try:
        shim = stack.start([entry(f"http://{proxy.host}", 900), entry(backup, 100)])
        client = stack.cri(shim.socket)
        client.pull(f"{name}:1")
    finally:
        proxy.stop()
    assert client.pulled_as(f"{name}:1") == f"{backup.host}/{name}:1"
    lines = failovers(shim)
    assert len(lines) == 1 and f'why="{why}"' in lines[0], lines
    backed_off = f'error="pull failed: {why}"' in shim.log()
    assert backed_off == backs_off, shim.log()


def test_each_attempt_carries_its_own_registrys_credentials(stack: Stack) -> None:
    """Two private registries with different accounts: the backup accepts only its own, so the
    failover succeeds only if the primary's credentials stayed behind."""
    primary = stack.registries(auth=("primary-user", "primary:secret"))
    backup = stack.registries(auth=("backup-user", "backup:secret"))
    name = repo()
    content = uuid.uuid4().hex
    for registry in (primary, backup):
        stack.images(registry, name, "1", content=content)
    delete_layer(primary, name, "1")
    shim = stack.start([entry(primary, 900), entry(backup, 100)])
    client = stack.cri(shim.socket)
    client.pull(f"{name}:1", username="caller", password="caller-secret")
    assert client.pulled_as(f"{name}:1") == f"{backup.host}/{name}:1"
    assert len(failovers(shim)) == 1, shim.log()
    for secret in ("primary:secret", "backup:secret", "caller-secret"):
        assert secret not in shim.log()


def test_every_source_failing_is_one_error_naming_each_attempt(stack: Stack) -> None:
    name, primary, backup = pair(stack)
    delete_layer(primary, name, "1")
    proxy = FaultProxy(backup.port)
    proxy.fault.status = 500
    try:
        shim = stack.start([entry(primary, 900), entry(f"http://{proxy.host}", 100)], upstream=False)
        code, message = failure(lambda: stack.cri(shim.socket).pull(f"{name}:1"))
    finally:
        proxy.stop()
    assert message.startswith(f"docker.io/{name}:1: every source tried failed: "), message
    assert f"{primary.host}/{name}:1: not found (" in message
    assert f"{proxy.host}/{name}:1: HTTP 500 (" in message
    assert code == grpc.StatusCode.UNKNOWN
    assert len(failovers(shim)) == 2
    record(
        "every registry fails the pull (worker, containerd, upstream: false)",
        load="1 PullImage",
        faults="primary lost a layer blob; backup answers 500 on blobs",
        failed="1 (expected)",
        lost="none",
        result=f"one {code.name} error naming both attempts: {message[:150]}...",
    )


def test_after_the_last_candidate_the_callers_reference_is_pulled(stack: Stack) -> None:
    name, mirror, own = pair(stack)
    delete_layer(mirror, name, "1")
    shim = stack.start([entry(mirror)])
    client = stack.cri(shim.socket)
    caller = f"{own.host}/{name}:1"
    client.pull(caller)
    assert caller in tags(stack.direct(), caller), "pulled as the caller asked"
    lines = failovers(shim)
    assert len(lines) == 1 and f'to="{caller} (unchanged)"' in lines[0], lines

    # and when that fails too, the error names both attempts
    other = repo()
    stack.images(mirror, other, "1")
    delete_layer(mirror, other, "1")
    _, message = failure(lambda: client.pull(f"{own.host}/{other}:1"))
    assert f"{mirror.host}/{other}:1: not found (" in message
    assert f"{own.host}/{other}:1: not found (" in message, message


def test_a_deadline_is_not_failed_over(stack: Stack) -> None:
    name, primary, backup = pair(stack, 8 * MIB)
    slow, watched = FaultProxy(primary.port), FaultProxy(backup.port)
    slow.fault.rate = MIB
    try:
        shim = stack.start([entry(f"http://{slow.host}", 900), entry(f"http://{watched.host}", 100)])
        started = time.monotonic()
        code, _ = failure(lambda: stack.cri(shim.socket).pull(f"{name}:1", timeout=2))
        seconds = time.monotonic() - started
    finally:
        slow.stop()
        watched.stop()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED
    assert watched.count("/blobs/") == 0 and not failovers(shim), shim.log()
    record(
        "caller's deadline ends during a slow pull (worker, containerd)",
        load="1 PullImage with a 2 s deadline",
        faults="primary sends at 1 MiB/s a 4 MiB layer; a backup holds the image",
        failed="1 (DEADLINE_EXCEEDED, expected)",
        lost="none",
        result=f"returned after {seconds:.1f} s, no second attempt (backup sent no blob)",
    )


def test_a_failover_that_would_outlast_the_deadline_gives_the_runtimes_answer_in_time(
    blackhole: Blackhole, stack: Stack
) -> None:
    """The next candidate never answers its probe (bound: half of `timeout`, 3 s): with 2 s left
    the pull gives up waiting for it and returns the first attempt's answer before the deadline."""
    name, primary, _ = pair(stack)
    delete_layer(primary, name, "1")
    shim = stack.start([entry(primary, 900), entry(blackhole.url, 100)], timeout="6s")
    started = time.monotonic()
    code, message = failure(lambda: stack.cri(shim.socket).pull(f"{name}:1", timeout=2.0))
    seconds = time.monotonic() - started
    assert code == grpc.StatusCode.NOT_FOUND and "not found" in message, (code, message)
    assert seconds < 2.0, f"{seconds:.2f} s"
    assert "no time left to fail over" in shim.log()


def test_a_full_disk_is_not_failed_over(stack: Stack, small_disk_of: Callable[[str], Containerd]) -> None:
    small = small_disk_of("host")
    name, primary, backup = pair(stack, 16 * MIB)
    watched = FaultProxy(backup.port)
    try:
        shim = stack.start_on(small.address, [entry(primary, 900), entry(f"http://{watched.host}", 100)])
        started = time.monotonic()
        code, message = failure(lambda: stack.cri(shim.socket).pull(f"{name}:1"))
        seconds = time.monotonic() - started
    finally:
        watched.stop()
    assert "no space left on device" in message and code == grpc.StatusCode.UNKNOWN, message
    assert watched.count("/blobs/") == 0 and not failovers(shim), shim.log()
    assert not message.startswith(f"docker.io/{name}:1: every"), "the runtime's answer, unchanged"
    record(
        "disk full during a pull (worker, containerd)",
        load="1 PullImage of an 8 MiB layer",
        faults=f"containerd's root is a {SMALL_DISK} tmpfs; a backup holds the image",
        failed="1 (no space left on device, expected)",
        lost="none",
        result=f"returned after {seconds:.1f} s with the runtime's message, no second attempt",
    )


def test_an_unpack_error_is_not_failed_over(stack: Stack) -> None:
    primary, backup = stack.registries(), stack.registries()
    name = repo()
    layout = corrupt_layer(stack.images.layout(uuid.uuid4().hex))
    push(layout, primary, name, "1", tmpdir=stack.dir)
    stack.images(backup, name, "1")
    shim = stack.start([entry(primary, 900), entry(backup, 100)])
    code, message = failure(lambda: stack.cri(shim.socket).pull(f"{name}:1"))
    assert "failed to extract layer" in message and not failovers(shim), message
    assert not message.startswith(f"docker.io/{name}:1: every"), "the runtime's answer, unchanged"
    assert code == grpc.StatusCode.UNKNOWN
    failure(lambda: stack.cri(shim.socket).pull(f"{name}:1"))
    assert shim.log().count('msg="rewrite decision"') == 2, "the decision did not outlive the failed pull"


def test_a_failed_pull_from_the_images_own_registry_drops_its_decision(stack: Stack) -> None:
    """The image's own registry is configured and holds the manifest: the pull goes as asked, is
    not failed over, and its failure drops the decision all the same."""
    own = stack.registries()
    name = repo()
    stack.images(own, name, "1")
    delete_layer(own, name, "1")
    shim = stack.start([entry(own)])
    client = stack.cri(shim.socket)
    for _ in range(2):
        code, message = failure(lambda: client.pull(f"{own.host}/{name}:1"))
        assert code == grpc.StatusCode.NOT_FOUND and not message.startswith(f"{own.host}/{name}:1: every")
    assert "target=unchanged" in shim.log() and not failovers(shim), shim.log()
    assert shim.log().count('msg="rewrite decision"') == 2, "the decision did not outlive the failed pull"


def test_eight_pulls_meeting_the_failure_together_fail_over_once(stack: Stack) -> None:
    name, primary, backup = pair(stack)
    delete_layer(primary, name, "1")
    shim = stack.start([entry(primary, 900), entry(backup, 100)])
    client = stack.cri(shim.socket)
    errors: list[BaseException] = []
    seconds: list[float] = []

    def pull() -> None:
        started = time.monotonic()
        try:
            client.pull(f"{name}:1", timeout=60)
            seconds.append(time.monotonic() - started)
        except BaseException as err:
            errors.append(err)

    threads = [threading.Thread(target=pull) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(90)
    assert not errors, errors[:2]
    assert len(seconds) == 8
    lines = failovers(shim)
    assert len(lines) == 1, lines
    assert client.pulled_as(f"{name}:1") == f"{backup.host}/{name}:1"
    record(
        "8 concurrent pulls of one image meet a partial mirror (worker, containerd)",
        load="8 concurrent PullImage of the same image",
        faults="layer blob deleted from the primary's storage",
        failed=0,
        lost="none",
        result=f"one failover, all 8 succeeded from the backup, slowest in {max(seconds):.2f} s",
    )
