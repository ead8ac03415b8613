"""The readiness pipe's messages: what a worker writes is what the master reads."""

from __future__ import annotations

import pytest

from image_cri_shim.messages import Message, RuntimeUp, Sandbox, Serving, decode, encode


@pytest.mark.parametrize(
    "message",
    [
        Serving("/run/shim.sock", "unix:///run/containerd/containerd.sock", "containerd 1.6.20 (v1)"),
        Serving("/run/shim.sock", "unix:///run/crio/crio.sock", None),
        RuntimeUp("cri-o 1.29 (v1)"),
        Sandbox("registry.k8s.io/pause:3.10", 'no registry holds it: "quoted", and a\nline break'),
        Sandbox("registry.k8s.io/pause:3.6"),
    ],
)
def test_a_message_survives_the_pipe(message: Message) -> None:
    line = encode(message)
    assert line.endswith("\n") and line.count("\n") == 1
    assert decode(line) == message


@pytest.mark.parametrize(
    "line",
    ["", "not json\n", "[1, 2]\n", '{"event": "upgrading"}\n', '{"event": "runtime"}\n', "null\n"],
)
def test_a_line_the_master_does_not_know_is_dropped(line: str) -> None:
    assert decode(line) is None


def test_an_older_worker_s_line_still_reads() -> None:
    """The wire format is JSON with these names: a worker and master of adjacent releases agree."""
    line = '{"event": "serving", "socket": "/s", "runtime": null, "cri": "unix:///c"}\n'
    assert decode(line) == Serving("/s", "unix:///c", None)
