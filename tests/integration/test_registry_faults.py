"""Registries that misbehave never hurt the shim.

Each scenario puts a misbehaving server on loopback (the tiny registry, a socket that never
answers, a TLS server with an unknown CA) in front of a registry that holds the image, and
checks that the decision ends in bounded time with failover, or with a clear reason. The
end-to-end ones run the real worker in front of containerd with a small `timeout`.
Every scenario records what it measured (`tests.harness.evidence`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import threading
import time
import tracemalloc
from collections.abc import Iterator
from dataclasses import dataclass

import grpc
import pytest

from image_cri_shim import config, reference
from image_cri_shim.workers.lookup import health
from image_cri_shim.workers.lookup import transport as wire
from image_cri_shim.workers.lookup.client import Platform, RegistryClient
from image_cri_shim.workers.lookup.decisions import Answer, Decision, Probe
from image_cri_shim.workers.lookup.plan import Planner
from image_cri_shim.workers.lookup.resolver import Resolver
from tests.harness import Blackhole, CertAuthority, free_port
from tests.harness.clock import Clock
from tests.harness.evidence import record
from tests.harness.node import Stack, entry, repo
from tests.harness.tcpproxy import Gate, TcpProxy
from tests.harness.tinyregistry import MANIFEST, OCI_INDEX, TinyRegistry
from tests.harness.worker import failure

AMD64 = Platform("linux", "amd64")
IMAGE = "nginx:1.27"
PASSWORD = "pa:ss-do-not-log"
MIB = 1 << 20


# -- the parts ----------------------------------------------------------------------------------


@pytest.fixture
def fallback() -> Iterator[TinyRegistry]:
    """The lower-priority registry that holds the image: where a failover lands."""
    server = TinyRegistry()
    server.add_manifest("library/nginx", "1.27", MANIFEST)
    yield server
    server.stop()


@pytest.fixture
def broken() -> Iterator[TinyRegistry]:
    """The preferred registry; each test makes it misbehave."""
    server = TinyRegistry()
    server.add_manifest("library/nginx", "1.27", MANIFEST)
    yield server
    server.stop()


class _Lines(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.getMessage()} {getattr(record, 'fields', {})!r}")


@pytest.fixture(autouse=True)
def no_secret_logged() -> Iterator[None]:
    """Whatever the registry did, no password, token or Authorization value was logged.

    The fields are checked as the code passed them, before the log module's redaction.
    """
    logger = logging.getLogger("image_cri_shim")
    lines = _Lines()
    level = logger.level
    logger.addHandler(lines)
    logger.setLevel(logging.DEBUG)
    yield
    logger.removeHandler(lines)
    logger.setLevel(level)
    for line in lines.lines:
        assert PASSWORD not in line and "tok-" not in line and "Basic " not in line, line


@dataclass
class Outcome:
    decision: Decision
    seconds: float

    def answer(self, host: str) -> Probe:
        return next(p for c, p in self.decision.answers if c.registry.domain == host)

    @property
    def target(self) -> str:
        assert self.decision.target is not None, self.decision.reason()
        return self.decision.target.registry.domain


class Pair:
    """A resolver over a preferred registry (priority 900) and a fallback (100)."""

    def __init__(self, preferred: str, fallback: str, extra: str = "") -> None:
        text = (
            f"registries:\n  - address: {preferred}\n    priority: 900\n{extra}"
            f"  - address: {fallback}\n    priority: 100\n"
        )
        cfg = config.parse(text, "test.yaml")
        self.clock = Clock()
        self.clients = {r.domain: RegistryClient(r, AMD64, clock=self.clock) for r in cfg.registries}
        self.preferred = self.clients[cfg.registries[0].domain]
        self.resolver = Resolver(Planner(cfg.registries), self.clients, cfg.cache)
        self.loop = asyncio.new_event_loop()

    async def _decide(self, image: str) -> Outcome:
        started = time.monotonic()
        decision = await self.resolver.probe(reference.parse(image), everyone=True)
        outcome = Outcome(decision, time.monotonic() - started)
        for _, probe in decision.answers:
            assert "tok-" not in str(probe) and PASSWORD not in str(probe), probe
        return outcome

    def decide(self, image: str = IMAGE) -> Outcome:
        """A fresh decision (no cache), every candidate's answer included."""
        return self.loop.run_until_complete(self._decide(image))

    def close(self) -> None:
        for client in self.clients.values():
            self.loop.run_until_complete(client.aclose())
        self.loop.close()


@contextlib.contextmanager
def pair(preferred: str, fallback: TinyRegistry, extra: str = "") -> Iterator[Pair]:
    resolver = Pair(preferred, fallback.url, extra)
    try:
        yield resolver
    finally:
        resolver.close()


def index(*platforms: dict[str, str]) -> dict[str, object]:
    return {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{"digest": "sha256:" + "0" * 64, "platform": p} for p in platforms],
    }


# -- HTTP errors and throttling ------------------------------------------------------------------


def test_5xx_fails_over_backs_off_and_recovers(broken: TinyRegistry, fallback: TinyRegistry) -> None:
    broken.behaviour.status = 500
    with pair(broken.url, fallback) as p:
        first = p.decide()
        assert first.target == fallback.host
        assert first.answer(broken.host) == Probe(Answer.UNREACHABLE, "HTTP 500")
        asked = broken.count()
        during = [p.decide() for _ in range(10)]
        assert all(o.answer(broken.host).answer is Answer.SKIPPED for o in during)
        assert broken.count() == asked, "a registry in backoff is not contacted"

        p.clock.now += health.BACKOFF_FIRST
        assert p.decide().answer(broken.host).answer is Answer.UNREACHABLE
        p.clock.now += health.BACKOFF_FIRST  # the second period is twice as long
        assert p.decide().answer(broken.host).answer is Answer.SKIPPED
        broken.behaviour.status = None
        p.clock.now += health.BACKOFF_FIRST
        recovered = p.decide()
        assert recovered.target == broken.host
    record(
        "registry answers HTTP 500",
        load="14 decisions",
        faults="HTTP 500 on every request until recovery",
        failed="0 decisions; registry skipped 5 s, then 10 s",
        lost="none",
        result=(
            f"failover in {first.seconds:.2f} s; 0 requests in 10 decisions during backoff, "
            "1 per period after; used again on recovery"
        ),
    )


def test_429_is_skipped_for_retry_after(broken: TinyRegistry, fallback: TinyRegistry) -> None:
    broken.behaviour.status = 429
    broken.behaviour.retry_after = "120"
    with pair(broken.url, fallback) as p:
        first = p.decide()
        assert first.target == fallback.host
        throttled = first.answer(broken.host)
        assert throttled.answer is Answer.THROTTLED and "120" in throttled.detail
        asked = broken.count()
        p.clock.now += 100
        assert p.decide().answer(broken.host).answer is Answer.SKIPPED
        assert broken.count() == asked
        broken.behaviour.status = None
        p.clock.now += 21
        assert p.decide().target == broken.host
    record(
        "registry throttles (HTTP 429, Retry-After: 120)",
        load="3 decisions",
        faults="HTTP 429 with Retry-After: 120",
        failed="0 decisions",
        lost="none",
        result=f"failover in {first.seconds:.2f} s; skipped 120 s with 0 requests; used again after",
    )


# -- registries that do not answer ----------------------------------------------------------------


def test_refused_connection_fails_over_at_once(fallback: TinyRegistry) -> None:
    with pair(f"http://127.0.0.1:{free_port()}", fallback) as p:
        outcome = p.decide()
        assert outcome.target == fallback.host
        assert outcome.answer(p.preferred.registry.domain).answer is Answer.UNREACHABLE
        assert outcome.seconds < 2
    record(
        "registry port closed (connection refused)",
        load="1 decision",
        faults="nothing listens on the port",
        failed=0,
        lost="none",
        result=f"failover in {outcome.seconds:.2f} s",
    )


def test_silent_registry_costs_its_timeout_once(fallback: TinyRegistry) -> None:
    with Blackhole() as hole, pair(hole.url, fallback) as p:
        first = p.decide()
        assert first.target == fallback.host
        assert first.answer(hole.host) == Probe(
            Answer.UNREACHABLE, f"no answer within {wire.PROBE_TIMEOUT:g}s"
        )
        assert first.seconds < wire.PROBE_TIMEOUT + 2
        during = [p.decide() for _ in range(10)]
        assert all(o.answer(hole.host).answer is Answer.SKIPPED for o in during)
        assert max(o.seconds for o in during) < 1
        assert hole.accepted == 1
    record(
        "registry accepts connections and never answers",
        load="11 decisions",
        faults="TCP accept, then silence",
        failed=0,
        lost="none",
        result=(
            f"first decision {first.seconds:.1f} s (bound {wire.PROBE_TIMEOUT:g} s), next 10 "
            f"<{max(o.seconds for o in during) * 1000:.0f} ms; {hole.accepted} connection in all"
        ),
    )


def test_concurrent_probes_of_a_dead_registry_are_one_failure() -> None:
    """Pulls that meet a dead registry together wait for it once, and grow its backoff once."""
    bound = 2.0
    clock = Clock()
    with Blackhole() as hole:
        client = RegistryClient(
            config.parse(f"address: {hole.url}\n", "t.yaml").registries[0], AMD64, clock=clock, timeout=bound
        )

        async def timed(image: str, after: float = 0.0) -> tuple[Probe, float]:
            await asyncio.sleep(after)
            started = time.monotonic()
            probe = await client.holds(reference.parse(image))
            return probe, time.monotonic() - started

        async def run() -> list[tuple[Probe, float]]:
            try:
                early = [timed(f"image{i}:1") for i in range(8)]
                return await asyncio.gather(*early, timed("late:1", after=bound / 2))
            finally:
                await client.aclose()

        results = asyncio.run(run())
    late, late_seconds = results[-1]
    assert [p.answer for p, _ in results].count(Answer.UNREACHABLE) == 1
    assert late == Probe(Answer.SKIPPED, "another probe found it down")
    assert late_seconds < bound * 0.85, "the late probe stopped when the registry was found down"
    assert max(s for _, s in results) < bound + 1.5
    clock.now += health.BACKOFF_FIRST - 0.1
    assert not client.available()
    clock.now += 0.1
    assert client.available(), "9 concurrent failures are one failure: the first backoff period"
    record(
        "9 pulls meet a silent registry at once",
        load="9 concurrent probes of different images (one starts 1 s late)",
        faults="TCP accept, then silence",
        failed="0 (each answered unreachable/skipped)",
        lost="none",
        result=(
            f"all done by {max(s for _, s in results):.1f} s (bound {bound:g} s); late one waited "
            f"{late_seconds:.1f} s; backoff {health.BACKOFF_FIRST:g} s, not 8 steps; "
            f"{hole.accepted} connections"
        ),
    )


def test_headers_trickling_in_are_cut_at_the_probe_deadline(
    broken: TinyRegistry, fallback: TinyRegistry
) -> None:
    """httpx's read timeout restarts with every byte: only the probe's own deadline stops this."""
    broken.behaviour.trickle = 1.0
    with pair(broken.url, fallback) as p:
        outcome = p.decide()
        assert outcome.target == fallback.host
        assert outcome.answer(broken.host) == Probe(
            Answer.UNREACHABLE, f"no answer within {wire.PROBE_TIMEOUT:g}s"
        )
        assert wire.PROBE_TIMEOUT - 0.5 < outcome.seconds < wire.PROBE_TIMEOUT + 2
        assert 2 <= broken.trickled <= wire.PROBE_TIMEOUT + 2
    record(
        "registry sends its response headers one byte a second",
        load="1 decision",
        faults="status line and headers at 1 byte/s (each read is within the read timeout)",
        failed=0,
        lost="none",
        result=(
            f"probe gave up at {outcome.seconds:.1f} s (bound {wire.PROBE_TIMEOUT:g} s) after "
            f"{broken.trickled} bytes; failover to the next registry"
        ),
    )


# -- auth that goes wrong --------------------------------------------------------------------------


def test_token_endpoint_with_invalid_json_is_denied_not_a_crash(
    broken: TinyRegistry, fallback: TinyRegistry
) -> None:
    broken.behaviour.bearer = True
    broken.behaviour.token_body = b"{not json"
    with pair(broken.url, fallback) as p:
        outcome = p.decide()
        assert outcome.target == fallback.host
        assert outcome.answer(broken.host) == Probe(Answer.DENIED, "HTTP 401")
    assert broken.tokens_issued == 1
    record(
        "token endpoint returns invalid JSON",
        load="1 decision",
        faults='token body "{not json"',
        failed=0,
        lost="none",
        result=f"denied, failover in {outcome.seconds:.2f} s; 1 token request",
    )


def test_token_that_is_always_rejected_does_not_loop(broken: TinyRegistry, fallback: TinyRegistry) -> None:
    broken.behaviour.bearer = True
    broken.behaviour.reject_tokens = True
    decisions = 10
    with pair(broken.url, fallback, extra="    auth: 'user:pa:ss-do-not-log'\n") as p:
        outcomes = [p.decide() for _ in range(decisions)]
    assert all(o.target == fallback.host for o in outcomes)
    assert all(o.answer(broken.host) == Probe(Answer.DENIED, "HTTP 401") for o in outcomes)
    assert broken.tokens_issued == decisions, "one fresh token per probe, then it gives up"
    assert broken.count(lambda m, path: path.startswith("/v2/")) == 2 * decisions
    record(
        "registry rejects every token (401 after a fresh token)",
        load=f"{decisions} decisions",
        faults="401 with a new Bearer challenge for any token",
        failed=f"0 decisions; {decisions} denied answers",
        lost="none",
        result=(
            f"{broken.tokens_issued} token fetches, {2 * decisions} manifest requests; "
            f"slowest decision {max(o.seconds for o in outcomes):.2f} s"
        ),
    )


def test_bearer_realm_on_a_dead_host(broken: TinyRegistry, fallback: TinyRegistry) -> None:
    broken.behaviour.bearer = True
    dead = free_port()
    broken.behaviour.realm = f"http://127.0.0.1:{dead}/token"
    with pair(broken.url, fallback) as p:
        refused = p.decide()
        assert refused.target == fallback.host
        answer = refused.answer(broken.host)
        assert answer.answer is Answer.UNREACHABLE
        assert answer.detail.startswith(f"token endpoint 127.0.0.1:{dead}: "), answer.detail
        assert refused.seconds < 2
        assert p.decide().answer(broken.host).answer is Answer.SKIPPED
    with Blackhole() as hole, pair(broken.url, fallback) as p:
        broken.behaviour.realm = f"{hole.url}/token"
        silent = p.decide()
        assert silent.target == fallback.host
        assert silent.answer(broken.host) == Probe(
            Answer.UNREACHABLE, f"no answer within {wire.PROBE_TIMEOUT:g}s"
        )
        assert silent.seconds < wire.PROBE_TIMEOUT + 2
        assert hole.accepted == 1
    record(
        "Bearer realm on a dead host",
        load="3 decisions",
        faults="token endpoint refuses connections / accepts and never answers",
        failed=0,
        lost="none",
        result=(
            f"refused: failover in {refused.seconds:.2f} s, then skipped; "
            f"silent: failover in {silent.seconds:.1f} s (bound {wire.PROBE_TIMEOUT:g} s)"
        ),
    )


def test_an_https_registrys_credentials_never_go_to_a_plain_http_realm(
    cert_authority: CertAuthority, broken: TinyRegistry, fallback: TinyRegistry
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_authority.server_cert, cert_authority.server_key)
    hostile = TinyRegistry(tls=context)
    hostile.add_manifest("library/nginx", "1.27", MANIFEST)
    hostile.behaviour.bearer = True
    listener = broken  # plain http: whatever reaches it crossed the network in clear
    listener.behaviour.bearer = True
    hostile.behaviour.realm = f"{listener.url}/token"
    credentials = f"    auth: 'user:{PASSWORD}'\n    ca: {cert_authority.ca_cert}\n"
    try:
        with pair(hostile.url, fallback, extra=credentials) as p:
            outcome = p.decide()
            assert outcome.target == fallback.host
            answer = outcome.answer(hostile.host)
            reason = f"token realm http://{listener.host} is plain http for an https registry"
            assert answer == Probe(Answer.DENIED, f"{reason}: credentials not sent")
    finally:
        hostile.stop()
    assert listener.requests == [], "nothing reached the plain-http realm"
    # A plain-http registry's own plain-http realm still gets its credentials.
    listener.behaviour.realm = None
    with pair(listener.url, fallback, extra=f"    auth: 'user:{PASSWORD}'\n") as p:
        assert p.decide().target == listener.host
    assert any(path.startswith("/token") and auth.startswith("Basic ") for _, path, auth in listener.requests)
    record(
        "an https registry names a plain-http token realm",
        load="2 decisions",
        faults='401 Bearer realm="http://…/token" from an https registry configured with a password',
        failed="0 decisions",
        lost="none",
        result=f'nothing sent to the realm; the registry is "denied" ({answer.detail[:40]}…), failover',
    )


def test_redirects_in_a_loop_end_and_credentials_never_follow_to_another_host(
    broken: TinyRegistry, fallback: TinyRegistry
) -> None:
    broken.behaviour.redirect = broken.url
    with pair(broken.url, fallback) as p:
        loop = p.decide()
        assert loop.target == fallback.host
        assert loop.answer(broken.host) == Probe(
            Answer.UNREACHABLE, f"redirect loop (more than {wire.MAX_REDIRECTS} redirects)"
        )
    assert broken.count() == wire.MAX_REDIRECTS + 1
    loop_requests = broken.count()

    # A redirect to another host is followed, without the registry's credentials.
    broken.behaviour.redirect = fallback.url
    broken.behaviour.basic = ("user", PASSWORD)
    with pair(broken.url, fallback, extra=f"    auth: 'user:{PASSWORD}'\n") as p:
        assert p.decide().target == broken.host
    assert broken.requests[-1][2].startswith("Basic ")
    assert {auth for _, _, auth in fallback.requests} == {""}
    record(
        "registry redirects in a loop",
        load="2 decisions",
        faults="302 to the same URL on every manifest request",
        failed="0 decisions",
        lost="none",
        result=(
            f"gave up after {loop_requests} requests in {loop.seconds:.2f} s, failover; "
            "a cross-host redirect carries no credentials"
        ),
    )


def test_tls_certificate_from_an_unknown_ca(cert_authority: CertAuthority, fallback: TinyRegistry) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_authority.server_cert, cert_authority.server_key)
    secure = TinyRegistry(tls=context)
    secure.add_manifest("library/nginx", "1.27", MANIFEST)
    try:
        with pair(secure.url, fallback) as p:
            untrusted = p.decide()
            assert untrusted.target == fallback.host
            answer = untrusted.answer(secure.host)
            assert answer.answer is Answer.UNREACHABLE
            assert "certificate verify failed" in answer.detail, answer.detail
        with pair(secure.url, fallback, extra=f"    ca: {cert_authority.ca_cert}\n") as p:
            assert p.decide().target == secure.host
    finally:
        secure.stop()
    record(
        "registry certificate from an unknown CA",
        load="2 decisions",
        faults="TLS server certificate signed by a CA the client does not trust",
        failed=0,
        lost="none",
        result=f'failover in {untrusted.seconds:.2f} s: "{answer.detail[:60]}"; trusted with `ca`',
    )


# -- bodies ----------------------------------------------------------------------------------------


def peak_memory(p: Pair) -> tuple[Outcome, int]:
    """A decision and the most memory the process held on top of what it held before."""
    tracemalloc.start()
    try:
        outcome = p.decide()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return outcome, peak


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_10_mib_index_is_refused_without_reading_it_whole(
    chunked: bool, broken: TinyRegistry, fallback: TinyRegistry
) -> None:
    broken.add_manifest("library/nginx", "1.27", index({"os": "linux", "architecture": "amd64"}), OCI_INDEX)
    broken.behaviour.padding = 10 * MIB
    broken.behaviour.chunked = chunked
    with pair(broken.url, fallback) as p:
        outcome, peak = peak_memory(p)
    assert outcome.target == fallback.host
    assert outcome.answer(broken.host) == Probe(
        Answer.NOT_FOUND, f"index larger than {wire.MAX_BODY >> 20} MiB"
    )
    limit = wire.MAX_BODY + 2 * MIB if chunked else MIB  # a known length is refused before reading
    assert peak < limit, f"{peak} bytes held"
    record(
        f"10 MiB index ({'chunked' if chunked else 'with Content-Length'})",
        load="1 decision",
        faults="index body padded to 10 MiB",
        failed=0,
        lost="none",
        result=(
            f"refused as larger than {wire.MAX_BODY >> 20} MiB in {outcome.seconds:.2f} s, "
            f"peak memory {peak / MIB:.1f} MiB; failover"
        ),
    )


def test_a_10_mib_manifest_is_found_from_its_headers(broken: TinyRegistry, fallback: TinyRegistry) -> None:
    broken.behaviour.padding = 10 * MIB
    broken.behaviour.no_head = True  # GET instead of HEAD: the body is there, and never read
    with pair(broken.url, fallback) as p:
        outcome, peak = peak_memory(p)
    assert outcome.target == broken.host
    assert peak < MIB, f"{peak} bytes held"
    record(
        "10 MiB image manifest from a registry without HEAD",
        load="1 decision",
        faults="GET answers with a 10 MiB body",
        failed=0,
        lost="none",
        result=f"found from status and headers in {outcome.seconds:.2f} s, peak memory {peak / MIB:.1f} MiB",
    )


def test_an_index_without_the_node_platform_does_not_win(
    broken: TinyRegistry, fallback: TinyRegistry
) -> None:
    broken.add_manifest("library/nginx", "1.27", index({"os": "linux", "architecture": "s390x"}), OCI_INDEX)
    fallback.add_manifest("library/nginx", "1.27", index({"os": "linux", "architecture": "amd64"}), OCI_INDEX)
    arm = index({"os": "linux", "architecture": "arm", "variant": "v6"})
    broken.add_manifest("library/arm", "1", arm, OCI_INDEX)
    with pair(broken.url, fallback) as p:
        outcome = p.decide()
        assert outcome.target == fallback.host
        assert outcome.answer(broken.host) == Probe(Answer.NO_PLATFORM, "index does not list linux/amd64")
        assert p.decide("arm:1").answer(broken.host).answer is Answer.NO_PLATFORM
    arm7 = RegistryClient(
        config.parse(f"address: {broken.url}\n", "t.yaml").registries[0], Platform("linux", "arm", "v7")
    )

    async def probe_arm7() -> Probe:
        try:
            return await arm7.holds(reference.parse("arm:1"))
        finally:
            await arm7.aclose()

    assert asyncio.run(probe_arm7()).answer is Answer.NO_PLATFORM
    record(
        "mirror holds an index without the node's platform",
        load="3 decisions",
        faults="index lists only linux/s390x (or arm/v6 for an arm/v7 node)",
        failed=0,
        lost="none",
        result=f"not holding: failover in {outcome.seconds:.2f} s to the registry that lists linux/amd64",
    )


# -- end to end: the worker in front of containerd -------------------------------------------------

TIMEOUT = 3.0  # the config's `timeout` in these tests
SLACK = 2.0  # scheduling on a loaded machine


def test_pull_with_a_silent_preferred_registry_ends_within_timeout(
    blackhole: Blackhole, stack: Stack
) -> None:
    fallback = stack.registries()
    name = repo()
    stack.images(fallback, name, "1")
    shim = stack.start([entry(blackhole.url, 900), entry(fallback, 100)], timeout=f"{TIMEOUT:g}s")
    client = stack.cri(shim.socket)
    started = time.monotonic()
    client.pull(f"{name}:1")
    seconds = time.monotonic() - started
    assert seconds < TIMEOUT + SLACK, f"{seconds:.1f}s\n{shim.log()}"
    assert client.pulled_as(f"{name}:1") == f"{fallback.host}/{name}:1"
    record(
        "PullImage with a silent preferred registry (worker, containerd)",
        load="1 PullImage",
        faults=f"preferred registry accepts and never answers; timeout {TIMEOUT:g}s",
        failed=0,
        lost="none",
        result=f"pulled from the next registry in {seconds:.1f} s (probe bound {TIMEOUT / 2:g} s)",
    )


def test_pull_from_a_registry_that_stalls_mid_pull_ends_at_timeout(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "1")
    stall = Gate(count=1_000_000, timeout=120)  # holds every blob request: manifests answer, blobs never
    proxy = TcpProxy(registry.port, gate=stall)
    try:
        shim = stack.start([entry(f"http://{proxy.host}")], timeout=f"{TIMEOUT:g}s")
        client = stack.cri(shim.socket)
        started = time.monotonic()
        code, message = failure(lambda: client.pull(f"{name}:1", timeout=60))
        seconds = time.monotonic() - started
    finally:
        proxy.stop()
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, message
    assert stall.arrived >= 1, "the pull reached the blobs"
    assert seconds < TIMEOUT + SLACK, f"{seconds:.1f}s"
    record(
        "PullImage from a registry that stalls on blobs (worker, containerd)",
        load="1 PullImage, caller deadline 60 s",
        faults=f"manifests answered, blob downloads never; timeout {TIMEOUT:g}s",
        failed="1 (DEADLINE_EXCEEDED, expected)",
        lost="none",
        result=f"ended after {seconds:.1f} s",
    )


def test_pull_of_an_image_on_a_silent_registry_ends_within_timeout(
    blackhole: Blackhole, stack: Stack
) -> None:
    """The registry probe takes at most half of `timeout`; the pull after it is bounded too."""
    timeout = 6.0  # probe (3 s) and pull share it: the call ends after 6 s, not 9 s
    shim = stack.start([entry(blackhole.url)], timeout=f"{timeout:g}s")
    client = stack.cri(shim.socket)
    started = time.monotonic()
    code, message = failure(lambda: client.pull(f"{blackhole.host}/{repo()}:1", timeout=60))
    seconds = time.monotonic() - started
    record(
        "PullImage of an image whose only registry never answers (worker, containerd)",
        load="1 PullImage, caller deadline 60 s",
        faults=f"registry accepts and never answers; timeout {timeout:g}s",
        failed=f"1 ({code.name}, expected)",
        lost="none",
        result=f"ended after {seconds:.1f} s",
    )
    assert code == grpc.StatusCode.DEADLINE_EXCEEDED, message
    assert seconds < timeout + SLACK, f"{seconds:.1f}s: the probe's time was not counted against timeout"


def test_dead_registry_costs_its_timeout_once_per_backoff_period(blackhole: Blackhole, stack: Stack) -> None:
    fallback = stack.registries()
    names = [repo() for _ in range(8)]
    for name in names:
        stack.images(fallback, name, "1")
    probe = wire.PROBE_TIMEOUT  # with the default-like `timeout` below
    shim = stack.start(
        [entry(blackhole.url, 900), entry(fallback, 100)],
        timeout="1m",
        cache={"imageCacheSize": 0},  # every pull is a fresh decision
    )
    client = stack.cri(shim.socket)

    # 8 pulls of different images at once: one wait, one backoff step.
    seconds: dict[str, float] = {}

    def pull(name: str) -> None:
        started = time.monotonic()
        client.pull(f"{name}:1", timeout=30)
        seconds[name] = time.monotonic() - started

    threads = [threading.Thread(target=pull, args=(n,)) for n in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(seconds) == len(names), "every concurrent pull succeeded"
    burst = blackhole.accepted
    assert max(seconds.values()) < probe + 5 * SLACK

    # Then pulls and ImageStatus calls, one after another, across more than one backoff period.
    pulls = statuses = slow = 0
    started = time.monotonic()
    while time.monotonic() - started < 15:
        before = time.monotonic()
        client.pull(f"{names[pulls % len(names)]}:1", timeout=30)
        slow += time.monotonic() - before > probe
        pulls += 1
        for name in names[:2]:
            assert client.status(f"{name}:1") is not None
            statuses += 1
    elapsed = time.monotonic() - started
    later = blackhole.accepted - burst
    # Backoff 5 s after the burst, then 10 s: at most two retries in 15 s, and at least one.
    assert 1 <= later <= 2, f"{later} connections in {elapsed:.0f}s\n{shim.log()}"
    assert slow <= later + 2, "only a pull that retries the registry waits for it"
    assert client.pulled_as(f"{names[0]}:1") == f"{fallback.host}/{names[0]}:1"
    record(
        "dead registry under steady pulls (worker, containerd, no decision cache)",
        load=f"8 concurrent pulls, then {pulls} pulls + {statuses} ImageStatus in {elapsed:.0f} s",
        faults=f"preferred registry accepts and never answers; probe bound {probe:g}s",
        failed=0,
        lost="none",
        result=(
            f"burst: {burst} connections, slowest pull {max(seconds.values()):.1f} s; then {later} "
            f"connections, {slow} pulls paid the {probe:g} s probe bound"
        ),
    )
