"""The CRI-O stand-in's words for a failed pull, without sockets: for every message containerd was
recorded answering (tests/pull-messages.json), the stand-in's CRI-O words mean to the shim what
CRI-O's own recorded words for that fault mean."""

from __future__ import annotations

import pytest

from image_cri_shim.workers.pull.failures import Cause, classify
from tests.harness.criowords import crio_words
from tests.harness.pullrecord import load

IMAGE = "127.0.0.1:5000/library/nginx:1"


def rows() -> list[tuple[str, str, str, str]]:
    return [
        (version, row["fault"], row["code"], row["message"])
        for version, recorded in sorted(load().items())
        if version.startswith("containerd")
        for row in recorded
        if row["code"] == "UNKNOWN" or row["code"] in ("NOT_FOUND", "FAILED_PRECONDITION")
    ]


def crio_cause(fault: str) -> Cause:
    recorded = next(rows for version, rows in load().items() if version.startswith("cri-o"))
    row = next(row for row in recorded if row["fault"] == fault)
    return classify(row["code"], row["message"]).cause


@pytest.mark.parametrize(
    ("version", "fault", "code", "message"), rows(), ids=[f"{r[0]}-{r[1]}" for r in rows()]
)
def test_the_stand_ins_words_mean_what_crio_says(version: str, fault: str, code: str, message: str) -> None:
    words = crio_words(IMAGE, message)
    assert "failed to pull and unpack image" not in words, words  # none of containerd's wrapper
    assert classify("UNKNOWN", words).cause is crio_cause(fault), f"{version} {fault}: {message} -> {words}"


def test_a_refused_connection_is_worded_as_crio_words_it() -> None:
    words = crio_words(
        IMAGE, 'failed to pull and unpack image "x": dial tcp 127.0.0.1:5000: connect: connection refused'
    )
    assert words.startswith(
        "RegistryUnavailable: unable to pull image: initializing source docker://" + IMAGE
    )
    assert "pinging container registry 127.0.0.1:5000" in words
