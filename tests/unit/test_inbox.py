"""The inbox a main thread sleeps on: woken by its signals, whichever thread the kernel chose."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator

import pytest

from image_cri_shim.inbox import Inbox


@pytest.fixture
def inbox() -> Iterator[Inbox[str]]:
    box = Inbox({signal.SIGHUP: "hangup", signal.SIGUSR1: "usr1"})
    yield box
    box.close()


def test_a_signal_taken_by_another_thread_wakes_the_main_thread_at_once(inbox: Inbox[str]) -> None:
    """A Python handler would run only when the main thread runs again: it sleeps in the wait
    for the whole timeout unless the pipe wakes it."""

    def signal_this_thread() -> None:
        time.sleep(0.2)  # the main thread is asleep in get() by then
        signal.pthread_kill(threading.get_ident(), signal.SIGUSR1)

    other = threading.Thread(target=signal_this_thread)
    other.start()
    started = time.monotonic()
    try:
        got = inbox.get(timeout=30.0)
    finally:
        other.join(5.0)
    assert got == ["usr1"]
    assert time.monotonic() - started < 15.0, "woken by the signal, not by the timeout"


def test_signals_and_items_come_back_once_each_signals_first(inbox: Inbox[str]) -> None:
    inbox.put("first")
    os.kill(os.getpid(), signal.SIGHUP)
    inbox.put("second")
    assert inbox.get(timeout=5.0) == ["hangup", "first", "second"]
    assert inbox.get(timeout=0.05) == [], "nothing left: an empty list after the timeout"


def test_an_item_put_by_another_thread_wakes_the_wait(inbox: Inbox[str]) -> None:
    putter = threading.Timer(0.2, inbox.put, ("from a thread",))
    putter.start()
    try:
        assert inbox.get(timeout=30.0) == ["from a thread"]
    finally:
        putter.cancel()


def test_many_puts_never_block_the_putter_and_all_arrive(inbox: Inbox[str]) -> None:
    """A pipe full of wake-ups drops the extra bytes, never an item."""
    for n in range(100_000):
        inbox.put(str(n))
    got = inbox.get(timeout=5.0)
    assert got == [str(n) for n in range(100_000)]


def test_close_puts_back_the_handlers_and_the_wakeup_descriptor() -> None:
    before = signal.getsignal(signal.SIGUSR2), signal.set_wakeup_fd(-1)
    signal.set_wakeup_fd(before[1])
    box = Inbox({signal.SIGUSR2: "usr2"})
    assert signal.getsignal(signal.SIGUSR2) is not before[0]
    box.close()
    assert signal.getsignal(signal.SIGUSR2) is before[0]
    assert signal.set_wakeup_fd(before[1]) == before[1]


def test_a_wait_longer_than_poll_can_take_is_no_error(inbox: Inbox[str]) -> None:
    """`reloadInterval` may be set to weeks: the master's wait is then capped, not refused."""
    os.kill(os.getpid(), signal.SIGHUP)
    assert inbox.get(timeout=float(2**40)) == ["hangup"]
