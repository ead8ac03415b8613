"""The process kit every process starts with: how it hears a stop, how it starts, its secrets."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from image_cri_shim import logs
from image_cri_shim.config import parse
from image_cri_shim.lifecycle import Stop
from image_cri_shim.startup import EX_CONFIG, StartupError, configure, use_config


@pytest.fixture
def handlers() -> Iterator[None]:
    """Stop installs handlers for SIGTERM and SIGINT in this process: put pytest's back."""
    saved = {signum: signal.getsignal(signum) for signum in (signal.SIGTERM, signal.SIGINT)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


def test_sigterm_asks_for_a_stop_and_wakes_the_process(handlers: None) -> None:
    woken: list[int] = []
    stop = Stop(woken.append)
    os.kill(os.getpid(), signal.SIGTERM)  # the handler runs in this (the main) thread
    assert stop.requested.is_set() and not stop.now.is_set()
    assert woken == [signal.SIGTERM]
    stop.wait()  # returns at once
    os.kill(os.getpid(), signal.SIGTERM)
    assert stop.now.is_set(), "a second SIGTERM: stop at once"


def test_sigint_asks_for_a_stop_at_once(handlers: None) -> None:
    stop = Stop()
    os.kill(os.getpid(), signal.SIGINT)
    assert stop.requested.is_set() and stop.now.is_set()


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
