"""Renaming containerd's image records after a rewritten pull, when its images API is slow or out
of reach just then (docs/behaviour.md, "Names a client sees", "Deadlines and timeouts").

The worker talks to the real containerd through `RuntimeProxy`, which holds or refuses the
images API calls on cue; the pull itself goes through untouched.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.harness.node import Shim, Stack, entry, repo
from tests.harness.registry import Registry
from tests.harness.runtimeproxy import RuntimeProxy
from tests.harness.worker import tags


@pytest.fixture
def proxy(stack: Stack) -> Iterator[RuntimeProxy]:
    runtime = RuntimeProxy(stack.dir / "proxy.sock", stack.containerd.address)
    yield runtime
    runtime.stop()


def started(stack: Stack, proxy: RuntimeProxy, **settings: str) -> tuple[Shim, Registry]:
    """A worker in front of `proxy` with one mirror, that has renamed one pull already (so it
    knows the runtime keeps image records before the images API is held up)."""
    mirror = stack.registries()
    shim = stack.start_on(proxy.address, [entry(mirror)], None, **settings)
    warm = repo()
    stack.images(mirror, warm, "1")
    stack.cri(shim.socket).pull(f"{warm}:1")
    assert tags(stack.direct(), f"docker.io/{warm}:1") == [f"docker.io/{warm}:1"], shim.log()
    return shim, mirror


@pytest.mark.parametrize("bound", ["caller's deadline", "timeout"])
def test_a_slow_images_api_never_holds_a_pull_past_its_deadline(
    bound: str, stack: Stack, proxy: RuntimeProxy
) -> None:
    shim, mirror = started(stack, proxy, **({"timeout": "4s"} if bound == "timeout" else {}))
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
    assert caller in tags(stack.cri(shim.socket), f"{name}:1"), "named as asked on the next lookup"
