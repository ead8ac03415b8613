"""The proxy worker through its socket, with a real containerd, real registries and a CRI client.

Every scenario starts `python -m image_cri_shim worker` as a child process and talks to it
the way kubelet does. Repositories are unique per test so the session's containerd never
answers one test with another's image.
"""

from __future__ import annotations

import base64
import contextlib
import functools
import os
import shutil
import signal
import stat
import threading
import time
import uuid
from collections.abc import Callable

import grpc
import pytest
import yaml

from tests.harness import (
    Blackhole,
    Containerd,
    CriClientFactory,
    ImageBuilder,
    RegistryFactory,
    ShimFactory,
    foreign_platform,
    node_platform,
)
from tests.harness.containerd import SUITES
from tests.harness.cri import VERSIONS, CriVersion
from tests.harness.evidence import record
from tests.harness.node import Stack, entry, repo, stack_of
from tests.harness.registry import free_port
from tests.harness.streaming_runtime import (
    EVENTS,
    SLOW_METHOD,
    SLOW_SECONDS,
    UNKNOWN_METHOD,
    StreamingRuntime,
)
from tests.harness.tcpproxy import Gate, TcpProxy
from tests.harness.worker import failure, tags

PROBE_TIMEOUT = 5.0


# -- rewriting ----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_pull_goes_to_the_highest_priority_registry_that_holds_it(version: CriVersion, stack: Stack) -> None:
    top, tied_address, tied_other = stack.registries(), stack.registries(), stack.registries()
    name = repo()
    # `top` (priority 900) does not hold it; the address and another registry tie at 500.
    content = uuid.uuid4().hex
    stack.images(tied_address, name, "1", content=content)
    stack.images(tied_other, name, "1", content=content)
    shim = stack.start(
        [entry(top, 900), entry(tied_other, 500)],
        address=entry(tied_address, 500),
    )
    client = stack.cri(shim.socket, version)
    short = name.removeprefix("library/")
    client.pull(f"{short}:1")
    expected = f"{tied_address.host}/{name}:1"
    assert tags(client, f"{short}:1") == [f"docker.io/{name}:1"]
    direct = stack.direct(version)
    assert tags(direct, f"docker.io/{name}:1") == [f"docker.io/{name}:1"], "containerd's own records say so"
    assert direct.status(expected) is None
    assert f"target={expected}" in shim.log()


def test_short_names_are_normalized_like_docker_io(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "latest")
    shim = stack.start([entry(registry)])
    client = stack.cri(shim.socket)
    short = name.removeprefix("library/")
    client.pull(short)
    for spelling in (short, f"{short}:latest", name, f"docker.io/{name}", f"docker.io/{name}:latest"):
        assert f"docker.io/{name}:latest" in tags(client, spelling), spelling


def test_digest_pull_keeps_the_digest(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    pushed = stack.images(registry, name, "1")
    shim = stack.start([entry(registry)])
    client = stack.cri(shim.socket)
    caller = f"{name}@{pushed.digest}"
    client.pull(caller)
    status = client.status(caller)
    assert status is not None
    assert list(status.repo_digests) == [f"docker.io/{name}@{pushed.digest}"]
    # tag and digest together keep both
    client.pull(f"{name}:1@{pushed.digest}")
    assert client.status(f"{name}:1@{pushed.digest}") is not None


def test_image_held_nowhere_goes_upstream_unchanged_and_fails_as_upstream_fails(stack: Stack) -> None:
    registry = stack.registries()
    shim = stack.start([entry(registry)])
    image = f"127.0.0.1:{free_port()}/{repo()}:1"
    direct_code, _ = failure(lambda: stack.direct().pull(image))
    code, message = failure(lambda: stack.cri(shim.socket).pull(image))
    assert code == direct_code
    assert image in message
    assert "target=unchanged" in shim.log()


# -- credentials -------------------------------------------------------------------------------


def test_registry_credentials_are_attached_and_caller_credentials_never_travel(stack: Stack) -> None:
    private = stack.registries(auth=True)
    assert private.username is not None and private.password is not None
    name = repo()
    stack.images(private, name, "1")
    shim = stack.start([entry(private)])
    direct = stack.direct()
    _, denied = failure(lambda: direct.pull(f"{private.host}/{name}:1"))
    assert "401" in denied or "unauthorized" in denied.lower()

    client = stack.cri(shim.socket)
    # The caller's credentials are for docker.io; they must not reach the private registry.
    client.pull(f"{name}:1", username="caller", password="caller-password")
    assert tags(client, f"{name}:1") == [f"docker.io/{name}:1"]
    # Pulled by its own name without credentials, the configured ones are attached.
    client.pull(f"{private.host}/{name}:1")

    log = shim.log()
    secret_forms = [
        private.password,
        private.password.split(":", 1)[1],
        base64.b64encode(f"{private.username}:{private.password}".encode()).decode(),
        "caller-password",
    ]
    for secret in secret_forms:
        assert secret not in log, "a secret reached the log at debug level"
    assert "level=debug" in log, "the shim ran at debug level"


# -- ImageStatus / RemoveImage / ListImages for the caller's name -------------------------------


def test_status_list_and_remove_answer_for_the_caller_name(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "1")
    shim = stack.start([entry(registry)])
    client = stack.cri(shim.socket)
    caller = f"docker.io/{name}:1"
    client.pull(caller)
    # containerd 1.6 ignores ListImages filters (others honour them): either way the image is there.
    assert any(caller in image.repo_tags for image in client.list(caller))
    assert any(caller in image.repo_tags for image in client.list())
    client.remove(caller)
    assert client.status(caller) is None
    assert stack.direct().status(f"{registry.host}/{name}:1") is None


def test_caller_names_survive_a_restart_with_every_registry_down(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "1")
    shim = stack.start([entry(registry)])
    caller = f"docker.io/{name}:1"
    stack.cri(shim.socket).pull(caller)
    shim.process.stop()
    registry.stop()

    again = stack.start([entry(registry)])
    client = stack.cri(again.socket)
    assert caller in tags(client, caller)
    assert any(caller in image.repo_tags for image in client.list())
    assert any(caller in i.repo_tags for i in client.list(caller)), "a filter by the caller's name finds it"

    # Even without the remembered names the image is found on the node, with no registry asked.
    again.process.stop()
    shutil.rmtree(stack.dir / "state")
    third = stack.start([entry(registry)])
    started = time.monotonic()
    assert caller in tags(stack.cri(third.socket), caller)
    took = time.monotonic() - started
    assert "rewrite decision" not in third.log()
    record(
        "caller names after a restart with every registry down",
        load="1 PullImage through the shim, then 4 ImageStatus/ListImages calls over 2 worker restarts",
        faults="worker stopped, its only registry stopped; then the name store deleted too",
        failed=0,
        lost="none",
        result=f"ImageStatus and ListImages (plain and filtered) answer under the caller's name;"
        f" without the name store too ({took * 1000:.0f} ms), no registry asked",
    )


def test_image_ids_pass_through(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "1")
    shim = stack.start([entry(registry)])
    client = stack.cri(shim.socket)
    image_id = client.pull(f"{name}:1")
    for spelling in (image_id, image_id.removeprefix("sha256:")):
        status = client.status(spelling)
        assert status is not None and status.id == image_id
        assert f"docker.io/{name}:1" in status.repo_tags
    client.remove(image_id)
    assert client.status(f"{name}:1") is None


# -- RuntimeService and other methods pass through -------------------------------------------------


@pytest.mark.parametrize("version", VERSIONS)
def test_runtime_service_and_image_fs_info_pass_through(version: CriVersion, stack: Stack) -> None:
    shim = stack.start([entry(stack.registries())])
    direct, through = stack.direct(version), stack.cri(shim.socket, version)
    assert through.version() == direct.version()
    pb = through.pb
    request = pb.ListContainersRequest()
    assert through.runtime.ListContainers(request, timeout=5) == direct.runtime.ListContainers(
        request, timeout=5
    )
    assert through.runtime.Status(pb.StatusRequest(), timeout=5).status.conditions
    assert [f.fs_id.mountpoint for f in through.fs_info()] == [f.fs_id.mountpoint for f in direct.fs_info()]


def test_streaming_and_unknown_methods_are_forwarded(stack: Stack) -> None:
    runtime = StreamingRuntime(stack.dir / "runtime.sock")
    try:
        shim = stack.start_on(str(stack.dir / "runtime.sock"), [entry(stack.registries())])
        client = stack.cri(shim.socket)
        events = client.runtime.GetContainerEvents(client.pb.GetEventsRequest(), timeout=5)
        assert [e.container_id for e in events] == list(EVENTS)
        echo: grpc.StreamStreamMultiCallable[bytes, bytes] = client.channel.stream_stream(UNKNOWN_METHOD)
        assert list(echo(iter([b"a", b"b"]), timeout=5)) == [b"echo:a", b"echo:b"]
        large = b"x" * ((4 << 20) - 64)  # just under the 4 MiB request bound, and back with the prefix
        assert list(echo(iter([large]), timeout=30)) == [b"echo:" + large]
    finally:
        runtime.stop()


@pytest.mark.parametrize(("caller_deadline", "timeout"), [(1.0, "1m"), (30.0, "1s")])
def test_deadline_is_the_callers_capped_by_timeout(
    caller_deadline: float, timeout: str, stack: Stack
) -> None:
    runtime = StreamingRuntime(stack.dir / "runtime.sock")
    try:
        shim = stack.start_on(
            str(stack.dir / "runtime.sock"),
            [entry(stack.registries())],
            timeout=timeout,
        )
        slow: grpc.UnaryUnaryMultiCallable[bytes, bytes]
        slow = stack.cri(shim.socket).channel.unary_unary(SLOW_METHOD)
        started = time.monotonic()
        code, _ = failure(lambda: slow(b"", timeout=caller_deadline))
        assert code == grpc.StatusCode.DEADLINE_EXCEEDED
        assert time.monotonic() - started < SLOW_SECONDS
    finally:
        runtime.stop()


def test_unreachable_runtime_is_unavailable_with_a_readable_message(stack: Stack) -> None:
    missing = stack.dir / "no-runtime.sock"
    shim = stack.start_on(str(missing), [entry(stack.registries())], force=True)
    code, message = failure(lambda: stack.cri(shim.socket).version(timeout=5))
    assert code == grpc.StatusCode.UNAVAILABLE
    assert str(missing) in message


# -- registries that are down -------------------------------------------------------------------


def test_refused_registry_is_skipped_and_used_again_after_it_recovers(stack: Stack) -> None:
    preferred, fallback = stack.registries(), stack.registries()
    name = repo()
    content = uuid.uuid4().hex
    for registry in (preferred, fallback):
        stack.images(registry, name, "1", content=content)
    shim = stack.start(
        [entry(preferred, 900), entry(fallback, 100)],
        cache={"negativeCacheTTL": "1s"},
    )
    client = stack.cri(shim.socket)
    preferred.stop()
    started = time.monotonic()
    client.pull(f"{name}:1")
    assert time.monotonic() - started < PROBE_TIMEOUT, "a refused connection fails over at once"
    assert client.pulled_as(f"{name}:1") == f"{fallback.host}/{name}:1"

    preferred.start()
    deadline = time.monotonic() + 30
    while client.pulled_as(f"{name}:1") != f"{preferred.host}/{name}:1":
        assert time.monotonic() < deadline, f"traffic never returned to the recovered registry\n{shim.log()}"
        time.sleep(1)
        client.pull(f"{name}:1")
    assert "registry is reachable again" in shim.log()


def test_silent_registry_costs_its_timeout_once(blackhole: Blackhole, stack: Stack) -> None:
    fallback = stack.registries()
    first, second = repo(), repo()
    stack.images(fallback, first, "1")
    stack.images(fallback, second, "1")
    shim = stack.start([entry(blackhole.url, 900), entry(fallback, 100)])
    client = stack.cri(shim.socket)
    started = time.monotonic()
    client.pull(f"{first}:1")
    assert time.monotonic() - started < PROBE_TIMEOUT + 5
    accepted = blackhole.accepted
    client.pull(f"{second}:1")
    assert blackhole.accepted == accepted, "during its backoff the silent registry is not contacted"
    assert client.pulled_as(f"{second}:1") == f"{fallback.host}/{second}:1"


def test_tls_registry_with_a_private_ca(stack: Stack) -> None:
    secure = stack.registries(tls=True)
    name = repo()
    stack.images(secure, name, "1")
    shim = stack.start([entry(secure)])
    client = stack.cri(shim.socket)
    client.pull(f"{name}:1")
    assert client.pulled_as(f"{name}:1") == f"{secure.host}/{name}:1"
    shim.process.stop()

    # Without the CA the certificate is not trusted: the registry is no candidate.
    untrusted = dict(entry(secure))
    untrusted.pop("ca")
    other = repo()
    stack.images(secure, other, "1")
    shim = stack.start([untrusted])
    with pytest.raises(grpc.RpcError):
        stack.cri(shim.socket).pull(f"{other}:1")
    assert "certificate" in shim.log().lower()


# -- load and bad input ---------------------------------------------------------------------------


def test_32_pulls_run_at_once(stack: Stack) -> None:
    registry = stack.registries()
    names = [repo() for _ in range(32)]
    for name in names:
        stack.images(registry, name, "1")
    gate = Gate(count=32, timeout=30)
    proxy = TcpProxy(registry.port, gate=gate)
    try:
        shim = stack.start([entry(f"http://{proxy.host}")])
        client = stack.cri(shim.socket)
        failures: list[BaseException] = []

        def pull(name: str) -> None:
            try:
                client.pull(f"{name}:1", timeout=90)
            except BaseException as err:
                failures.append(err)

        threads = [threading.Thread(target=pull, args=(n,)) for n in names]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert not failures, failures[:3]
        assert gate.opened, f"only {gate.arrived} of 32 pulls reached the registry at the same time"
    finally:
        proxy.stop()


def test_malformed_payloads_and_odd_names_get_an_error_and_the_worker_keeps_serving(stack: Stack) -> None:
    shim = stack.start([entry(stack.registries())])
    client = stack.cri(shim.socket)
    garbage = b"\xff\xff\xff\xff\x0f garbage"
    for version in VERSIONS:
        for method in ("PullImage", "ImageStatus", "RemoveImage", "ListImages"):
            call: grpc.UnaryUnaryMultiCallable[bytes, bytes]
            call = client.channel.unary_unary(f"/runtime.{version}.ImageService/{method}")
            code, message = failure(lambda: call(garbage, timeout=5))  # noqa: B023
            assert code == grpc.StatusCode.INVALID_ARGUMENT, method
            assert "malformed" in message
    passthrough: grpc.UnaryUnaryMultiCallable[bytes, bytes]
    passthrough = client.channel.unary_unary("/runtime.v1.RuntimeService/ListContainers")
    failure(lambda: passthrough(garbage, timeout=5))
    for odd in ("UPPER/Case:1", "a b", "::", "x" * 300, "nginx:", "@sha256:abc", "\x00"):
        code, message = failure(lambda: client.pull(odd, timeout=10))  # noqa: B023
        assert "Unexpected <class" not in message, "an exception inside the shim"
        with contextlib.suppress(grpc.RpcError):
            client.status(odd)
    assert shim.process.alive()
    assert client.version().runtime_name == "containerd"
    assert "Traceback" not in shim.log()


def test_an_upper_case_first_component_is_no_host_and_goes_to_the_runtime_unchanged(stack: Stack) -> None:
    """`Foo/bar:1` has no '.' or ':' and is not localhost: a Docker Hub path, invalid in upper case,
    so the shim does not parse it as the host `Foo` but lets containerd answer as it would."""
    shim = stack.start([entry(stack.registries())])
    direct = failure(lambda: stack.direct().pull("Foo/bar:1", timeout=10))
    assert failure(lambda: stack.cri(shim.socket).pull("Foo/bar:1", timeout=10)) == direct
    assert 'msg="passing an unparsable image name through unchanged" image=Foo/bar:1' in shim.log()
    assert "rewrite decision" not in shim.log()


# -- lifecycle ----------------------------------------------------------------------------------


def test_sigterm_lets_an_in_flight_pull_finish(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "1")
    proxy = TcpProxy(registry.port, delay=0.4)  # every answer of the registry takes 0.4 s
    try:
        shim = stack.start([entry(f"http://{proxy.host}")])
        client = stack.cri(shim.socket)
        result: list[object] = []
        thread = threading.Thread(target=lambda: result.append(client.pull(f"{name}:1", timeout=60)))
        thread.start()
        time.sleep(1.0)
        assert thread.is_alive(), "the pull should still be running"
        shim.process.signal(signal.SIGTERM)
        thread.join(60)
        assert result and str(result[0]).startswith("sha256:"), "the in-flight pull completed"
        assert shim.process.stop(timeout=10) == 0
        assert not shim.socket.exists(), "the socket is removed on exit"
        assert "drained" in shim.log()
    finally:
        proxy.stop()


def test_socket_mode_and_directory(stack: Stack) -> None:
    nested = stack.dir / "run" / "sub"
    config = {
        "shim": str(nested / "shim.sock"),
        "cri": stack.containerd.address,
        "stateDir": str(stack.dir / "state"),
        "registries": [entry(stack.registries())],
    }
    path = stack.dir / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    stack.shims(path, nested / "shim.sock")
    assert stat.S_IMODE(os.stat(nested / "shim.sock").st_mode) == 0o660
    assert stat.S_IMODE(os.stat(stack.dir / "state").st_mode) == 0o700


def test_polling_adds_nothing_to_the_log_at_info_level(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "1")
    shim = stack.start([entry(registry)], debug=False)
    client = stack.cri(shim.socket)
    client.pull(f"{name}:1")
    before = shim.log()
    assert before.count("rewrite decision") == 1, "a fresh decision is one info line"
    for _ in range(20):
        client.status(f"{name}:1")
        client.list()
        client.pull(f"{name}:1")  # decided before: cached
        client.version()
    assert shim.log() == before


def test_index_without_the_node_platform_does_not_win_and_docker_manifests_count(stack: Stack) -> None:
    partial, complete = stack.registries(), stack.registries()
    name = repo()
    stack.images(partial, name, "1", platforms=[foreign_platform()])
    stack.images(complete, name, "1", platforms=[node_platform(), foreign_platform()], docker_format=True)
    shim = stack.start([entry(partial, 900), entry(complete, 100)])
    client = stack.cri(shim.socket)
    client.pull(f"{name}:1")
    assert client.pulled_as(f"{name}:1") == f"{complete.host}/{name}:1"
    assert "no manifest for this platform" in shim.log()


def test_cache_statistics_are_logged_only_when_something_happened(stack: Stack) -> None:
    registry = stack.registries()
    name = repo()
    stack.images(registry, name, "1")
    shim = stack.start(
        [entry(registry)],
        debug=False,
        cache={"statsLogInterval": "1s"},
    )
    client = stack.cri(shim.socket)
    client.pull(f"{name}:1")
    client.pull(f"{name}:1")
    deadline = time.monotonic() + 10
    while "decision cache" not in shim.log():
        assert time.monotonic() < deadline, shim.log()
        time.sleep(0.2)
    assert 'msg="decision cache" hits=1 misses=1 size=1' in shim.log()
    time.sleep(2.5)
    assert shim.log().count("decision cache") == 1, "an idle cache logs nothing"


# -- the scenarios above about names and passthrough, against containerd 1.7 (Debian trixie) and
# -- 2.x (sid), each run as the host's 1.6 runs them

SCENARIOS: dict[str, Callable[[Stack], None]] = {
    "priority": functools.partial(test_pull_goes_to_the_highest_priority_registry_that_holds_it, "v1"),
    "short-names": test_short_names_are_normalized_like_docker_io,
    "digest": test_digest_pull_keeps_the_digest,
    "held-nowhere": test_image_held_nowhere_goes_upstream_unchanged_and_fails_as_upstream_fails,
    "status-list-remove": test_status_list_and_remove_answer_for_the_caller_name,
    "image-ids": test_image_ids_pass_through,
    "runtime-passthrough": functools.partial(test_runtime_service_and_image_fs_info_pass_through, "v1"),
}


@pytest.mark.timeout(180)
@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("suite", SUITES)
def test_worker_scenario(
    suite: str,
    scenario: str,
    containerd_of: Callable[[str], Containerd],
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    shim_factory: ShimFactory,
    cri_client: CriClientFactory,
) -> None:
    with stack_of(containerd_of(suite), registry_factory, image_factory, shim_factory, cri_client) as stack:
        SCENARIOS[scenario](stack)
