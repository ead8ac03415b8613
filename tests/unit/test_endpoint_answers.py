"""The metrics endpoint's answers, from a request head alone (the serving loop: integration/
test_metrics.py and test_local_user.py)."""

from __future__ import annotations

from image_cri_shim.supervisor.endpoint import MAX_HEAD, answer, head_complete, request_path


def render() -> tuple[bytes, str]:
    return b"metric 1\n", "text/plain; version=0.0.4"


def healthy() -> tuple[bool, str]:
    return True, "ok: worker gen=1 serving"


def sick() -> tuple[bool, str]:
    return False, "no worker"


def test_a_head_is_complete_at_its_empty_line() -> None:
    assert not head_complete(b"GET /metrics HTTP/1.1\r\n")
    assert not head_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    assert head_complete(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    assert head_complete(b"GET / HTTP/1.0\n\n")


def test_the_request_line() -> None:
    assert request_path(b"GET /metrics?x=1 HTTP/1.1\r\n\r\n") == ("GET", "/metrics")
    assert request_path(b"garbage\r\n\r\n") is None
    assert request_path(b"GET /metrics\r\n\r\n") is None


def test_metrics_healthz_and_the_rest() -> None:
    ok = answer(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n", render, healthy)
    assert ok.startswith(b"HTTP/1.1 200 OK\r\n")
    assert b"Content-Type: text/plain; version=0.0.4\r\n" in ok
    assert b"Content-Length: 9\r\n" in ok and b"Connection: close\r\n" in ok
    assert ok.endswith(b"\r\n\r\nmetric 1\n")
    assert answer(b"GET /healthz HTTP/1.1\r\n\r\n", render, healthy).endswith(b"ok: worker gen=1 serving\n")
    assert answer(b"GET /healthz HTTP/1.1\r\n\r\n", render, sick).startswith(b"HTTP/1.1 503 ")
    assert answer(b"GET /nothing HTTP/1.1\r\n\r\n", render, healthy).startswith(b"HTTP/1.1 404 ")
    assert answer(b"POST /metrics HTTP/1.1\r\n\r\n", render, healthy).startswith(b"HTTP/1.1 501 ")
    assert answer(b"\x16\x03\x01 hello\r\n\r\n", render, healthy).startswith(b"HTTP/1.1 400 ")


def test_a_head_past_the_bound_is_refused_unread() -> None:
    head = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * MAX_HEAD
    assert answer(head, render, healthy).startswith(b"HTTP/1.1 431 ")


def test_a_scrape_that_cannot_read_the_samples_fails_alone() -> None:
    def broken() -> tuple[bytes, str]:
        raise ValueError("a samples file is empty")

    failed = answer(b"GET /metrics HTTP/1.1\r\n\r\n", broken, healthy)
    assert failed.startswith(b"HTTP/1.1 503 ")
    assert failed.endswith(b"samples unreadable, try again: ValueError\n")
