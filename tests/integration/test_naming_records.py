"""Renaming containerd's image records after a rewritten pull, when its images API is slow or out
of reach just then (docs/behaviour.md, "Names a client sees", "Deadlines and timeouts").

The worker talks to the real containerd through `RuntimeProxy`, which holds or refuses the
images API calls on cue; the pull itself goes through untouched.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

import pytest

from tests.harness import Containerd
from tests.harness.containerd import SUITES
from tests.harness.cri import CriClient
from tests.harness.node import Shim, Stack, entry, repo
from tests.harness.processes import wait_for
from tests.harness.registry import Registry
from tests.harness.runtimeproxy import RuntimeProxy
from tests.harness.tcpproxy import Gate, TcpProxy
from tests.harness.worker import tags


@pytest.fixture
def proxy_of(stack: Stack) -> Iterator[Callable[[Containerd], RuntimeProxy]]:
    made: list[RuntimeProxy] = []

    def make(daemon: Containerd) -> RuntimeProxy:
        made.append(RuntimeProxy(stack.dir / f"proxy{len(made)}.sock", daemon.address))
        return made[-1]

    yield make
    for proxy in made:
        proxy.stop()


def started(stack: Stack, proxy: RuntimeProxy, direct: CriClient, **settings: str) -> tuple[Shim, Registry]:
    """A worker in front of `proxy` with one mirror, that has renamed one pull already (so it
    knows the runtime keeps image records before the images API is held up)."""
    mirror = stack.registries()
    shim = stack.start_on(proxy.address, [entry(mirror)], None, **settings)
    warm = repo()
    stack.images(mirror, warm, "1")
    stack.cri(shim.socket).pull(f"{warm}:1")
    assert tags(direct, f"docker.io/{warm}:1") == [f"docker.io/{warm}:1"], shim.log()
    return shim, mirror


@pytest.mark.parametrize(
    ("bound", "suite"),
    [("caller's deadline", "host"), ("timeout", "host")] + [("caller's deadline", suite) for suite in SUITES],
    ids=["caller's deadline", "timeout", *SUITES],
)
def test_a_slow_images_api_never_holds_a_pull_past_its_deadline(
    bound: str,
    suite: str,
    stack: Stack,
    proxy_of: Callable[[Containerd], RuntimeProxy],
    containerd_of: Callable[[str], Containerd],
) -> None:
    daemon = stack.containerd if suite == "host" else containerd_of(suite)
    proxy, direct = proxy_of(daemon), stack.cri(daemon.socket)
    shim, mirror = started(stack, proxy, direct, **({"timeout": "4s"} if bound == "timeout" else {}))
    name = repo()
    stack.images(mirror, name, "1")
    proxy.delay = 8.0
    began = time.monotonic()
    stack.cri(shim.socket).pull(f"{name}:1", timeout=4.0 if bound == "caller's deadline" else None)
    seconds = time.monotonic() - began
    assert seconds < 4.0, f"{seconds:.2f} s"
    assert proxy.held >= 1
    log = shim.log()
    assert log.count("no time left to name the image as asked") == 1, log
    proxy.delay = 0.0
    caller = f"docker.io/{name}:1"
    assert tags(stack.cri(shim.socket), f"{name}:1") == [caller], "named as asked on the next lookup"
    assert direct.status(f"{mirror.host}/{name}:1") is None, "the pulled record is gone"


@pytest.mark.parametrize(
    ("held", "lookup", "suite"),
    [(False, "status", "host"), (True, "status", "host"), (False, "list", "host")]
    + [(False, "status", suite) for suite in SUITES],
    ids=["pulled by the shim", "held before", "a full listing first", *SUITES],
)
def test_a_renaming_owed_while_the_images_api_was_out_of_reach_is_done_on_the_next_lookup(
    held: bool,
    lookup: str,
    suite: str,
    stack: Stack,
    proxy_of: Callable[[Containerd], RuntimeProxy],
    containerd_of: Callable[[str], Containerd],
) -> None:
    """The images API answers UNAVAILABLE from the worker's start until after the pull: the
    pull succeeds unnamed, and once the API is back (after a restart of the worker here, so
    what is owed must be kept under stateDir) ImageStatus by the caller's name, or a ListImages
    without a filter, renames it."""
    daemon = stack.containerd if suite == "host" else containerd_of(suite)
    proxy, direct = proxy_of(daemon), stack.cri(daemon.socket)
    mirror = stack.registries()
    name = repo()
    stack.images(mirror, name, "1")
    pulled, caller = f"{mirror.host}/{name}:1", f"docker.io/{name}:1"
    if held:
        direct.pull(pulled)
    proxy.refuse = True
    shim = stack.start_on(proxy.address, [entry(mirror)])
    stack.cri(shim.socket).pull(f"{name}:1")
    assert proxy.held >= 1
    assert direct.status(caller) is None, "not renamed while the images API is out of reach"
    shim.process.stop()
    proxy.refuse = False

    again = stack.start_on(proxy.address, [entry(mirror)])
    client = stack.cri(again.socket)
    expected = sorted([caller, *([pulled] if held else [])])  # a name the node held before stays
    if lookup == "status":
        assert sorted(tags(client, f"{name}:1")) == expected, again.log()
    listed = [sorted(i.repo_tags) for i in client.list() if {caller, pulled} & set(i.repo_tags)]
    assert listed == [expected], "listed once, under the caller's name and no pulled one of its own"
    assert sorted(tags(client, f"{name}:1")) == expected, again.log()
    assert sorted(tags(direct, caller)) == expected, "containerd's own records say so"
    assert client.pulled_as(f"{name}:1") == pulled


def test_a_renaming_waits_for_the_pulls_around_it_and_answers_name_the_caller_meanwhile(
    stack: Stack,
) -> None:
    """While a pull of another image is still running, an answered pull's records are renamed
    after it (each record written or removed is a write concurrent pulls would queue behind), at
    most about a second later; through the shim the image has the caller's name alone all along,
    and afterwards containerd's own records say so too."""
    fast, slow_registry = stack.registries(), stack.registries()
    quick, long = repo(), repo()
    stack.images(fast, quick, "1")
    stack.images(slow_registry, long, "1")
    held = Gate(count=1000, timeout=4.0)  # the slow registry's blobs each wait 4 s
    slow = TcpProxy(slow_registry.port, gate=held)
    try:
        shim = stack.start([entry(fast, 600), entry(f"http://{slow.host}", 500)])
        client, direct = stack.cri(shim.socket), stack.direct()
        running = threading.Thread(target=lambda: client.pull(f"{long}:1", timeout=60))
        running.start()
        wait_for(lambda: held.arrived > 0, 10, "the long pull waits for its blobs")
        client.pull(f"{quick}:1")
        answered = time.monotonic()
        caller, pulled = f"docker.io/{quick}:1", f"{fast.host}/{quick}:1"
        assert direct.status(pulled) is not None, "the renaming waits for the running pull"
        assert direct.status(caller) is None
        assert tags(client, f"{quick}:1") == [caller]
        listed = [sorted(i.repo_tags) for i in client.list() if {caller, pulled} & set(i.repo_tags)]
        assert listed == [[caller]], "the pulled name is never listed"
        wait_for(lambda: direct.status(pulled) is None, 10, "the records renamed")
        waited = time.monotonic() - answered
        assert running.is_alive(), "renamed while the other pull still runs: it waits at most about 1 s"
        assert waited < 3.0, f"{waited:.2f} s"
        assert tags(direct, caller) == [caller], "containerd's own records say so"
        running.join(60)
        assert tags(client, f"{long}:1") == [f"docker.io/{long}:1"]
        assert direct.status(f"{slow.host}/{long}:1") is None
    finally:
        slow.stop()
