"""The process kit every process starts with: how it starts, how a worker hears a stop, its secrets."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_cri_shim import logs
from image_cri_shim.config import parse
from image_cri_shim.startup import EX_CONFIG, StartupError, configure, use_config
from image_cri_shim.workers.serve.server import Signals


def test_an_invalid_config_is_one_line_and_exit_78(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("address: http://sealos.hub:5000\ntimeout: soon\n")
    with pytest.raises(StartupError) as caught:
        configure(str(path), "syncer")
    assert caught.value.code == EX_CONFIG
    assert str(caught.value).startswith(f"config {path}: timeout: ") and "\n" not in str(caught.value)


def test_secrets_are_kept_for_the_life_of_the_process() -> None:
    """A password a reload removed may still be in a late line about the old settings."""
    use_config(parse("address: http://sealos.hub:5000\nauth: admin:First-pw-1\n", "c"))
    use_config(parse("address: http://sealos.hub:5000\nauth: admin:Second-pw-2\n", "c"))
    assert logs.redact("First-pw-1 Second-pw-2") == "*** ***"


@pytest.fixture
def handlers() -> Iterator[None]:
    """The worker's signal handling replaces SIGTERM's and SIGINT's handlers: put pytest's back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize(
    ("sent", "now"),
    [
        ([signal.SIGTERM], False),  # hand clients over, then drain
        ([signal.SIGTERM, signal.SIGTERM], True),  # a second SIGTERM: drain at once
        ([signal.SIGINT], True),  # the master is gone: no successor to hand over to
    ],
)
def test_a_worker_hears_a_stop_on_its_loop(handlers: None, sent: list[int], now: bool) -> None:
    async def scenario() -> tuple[bool, bool]:
        signals = Signals()
        for signum in sent:  # each read before the next is sent: the kernel merges a pending pair
            os.kill(os.getpid(), signum)
            await asyncio.wait_for(signals.requested.wait(), 5.0)
        if now:
            await asyncio.wait_for(signals.now.wait(), 5.0)
        requested, hurried = signals.requested.is_set(), signals.now.is_set()
        signals.close()
        return requested, hurried

    assert asyncio.run(scenario()) == (True, now)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN, "a late SIGTERM after the drain is ignored"
