"""Which sandbox image the shim keeps, learned from what each runtime answers to a verbose Status.

tests/sandbox-status.json holds those answers: containerd 1.6, 1.7 and 2.x recorded from the real
ones at their default config, and so are cri-dockerd 0.4.3 and CRI-O 1.35.6; cri-dockerd 0.3.1 as its
source builds it.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.workers.runtime import sandbox
from image_cri_shim.workers.serve.keeper import ask_runtime

ANSWERS: dict[str, dict[str, Any]] = json.loads(
    (Path(__file__).parent.parent / "sandbox-status.json").read_text()
)


@pytest.mark.parametrize("runtime", sorted(ANSWERS))
def test_the_sandbox_image_each_runtime_uses_is_learned_from_what_it_answers(runtime: str) -> None:
    answer = ANSWERS[runtime]
    known = sandbox.learn(None, answer["info"], answer["runtime_name"], answer["runtime_version"])
    if runtime == "cri-dockerd 0.3.1":
        assert known is None, "it says nothing: the config key is the way"
        return
    assert known is not None and known.image == answer["sandbox_image_in_use"]
    reported = sandbox.from_status(answer["info"])
    if runtime.startswith("containerd 2."):
        assert reported is None and "built-in default" in known.source
    else:
        assert reported == known.image and known.source == "the runtime's Status"


def test_the_config_key_wins_over_the_runtime() -> None:
    answer = ANSWERS["containerd 1.6.20~ds1"]
    known = sandbox.learn("hub.company.com/k8s/pause:3.9", answer["info"], "containerd", "1.6.20")
    assert known == sandbox.Known("hub.company.com/k8s/pause:3.9", "config sandboxImage")


@pytest.mark.parametrize(
    ("version", "image"),
    [
        ("v2.0.0", "registry.k8s.io/pause:3.10"),
        ("2.1.9+unknown", "registry.k8s.io/pause:3.10"),
        ("v2.2.1", "registry.k8s.io/pause:3.10.1"),
        ("v2.3.0", "registry.k8s.io/pause:3.10.2"),
        ("v3.0.0", "registry.k8s.io/pause:3.10.2"),
        ("1.7.24", None),
        ("devel", None),
    ],
)
def test_a_containerd_that_does_not_say_is_taken_at_its_release_s_default(version: str, image: str) -> None:
    assert sandbox.builtin("containerd", version) == image
    assert sandbox.builtin("cri-o", version) is None


@pytest.mark.parametrize(
    ("info", "expected"),
    [
        ({"config": '{"sandboxImage": "pause:3.9"}'}, "docker.io/library/pause:3.9"),
        ({"config": '{"sandboxImage": ""}'}, None),
        ({"config": '{"sandboxImage": "sha256:' + "a" * 64 + '"}'}, None),
        ({"config": '{"sandboxImage": "Not A Name"}'}, None),
        ({"config": '{"sandboxImage": 3}'}, None),
        ({"config": "not json"}, None),
        ({"config": "[1]"}, None),
        (
            {"config": '{"pinned_images": {"sandbox": "registry.k8s.io/pause:3.10"}}'},
            "registry.k8s.io/pause:3.10",
        ),
        (
            {"imageConfig": '{"pinned_images": {"sandbox": "registry.k8s.io/pause:3.10"}}'},
            "registry.k8s.io/pause:3.10",
        ),
        ({}, None),
    ],
)
def test_what_a_status_names_is_read_defensively(info: dict[str, str], expected: str | None) -> None:
    assert sandbox.from_status(info) == expected


def test_a_runtime_that_does_not_answer_is_not_a_runtime_without_one() -> None:
    assert sandbox.learn(None, None, "containerd", "2.1.9") is None


def listing(*tag_lists: list[str]) -> bytes:
    response = cri.ListImagesResponse()
    for tags in tag_lists:
        image = response.images.add(id="sha256:" + "b" * 64)
        image.repo_tags.extend(tags)
        image.repo_digests.extend(t.split(":")[0] + "@sha256:" + "c" * 64 for t in tags)
    return response.SerializeToString()


PAUSE = "registry.k8s.io/pause:3.10"


@pytest.mark.parametrize(
    ("answer", "found"),
    [
        (listing(["docker.io/library/nginx:1"], [PAUSE]), True),
        (listing([f"{PAUSE}.1"]), False),  # a longer name is not it
        (listing(["registry.k8s.io/pause:3.1"]), False),  # nor a shorter one
        (listing(["docker.io/library/nginx:1", "x" * 200, PAUSE]), True),
        (listing(), False),
        (b"", False),
    ],
)
def test_a_listing_is_read_for_the_sandbox_image_without_decoding_it(answer: bytes, found: bool) -> None:
    assert sandbox.listed(answer, PAUSE) is found


def test_a_long_name_s_length_takes_two_bytes() -> None:
    name = "registry.company.com/" + "p" * 150 + ":1"
    assert sandbox.listed(listing([name]), name)
    assert not sandbox.listed(listing([name + "0"]), name)


def test_ask_runtime_reads_the_runtime_s_answers() -> None:
    answer = ANSWERS["containerd 2.1.9+unknown"]

    async def status(request: bytes, timeout: float) -> bytes:
        assert cri.StatusRequest.FromString(request).verbose
        return cri.StatusResponse(info=answer["info"]).SerializeToString()

    async def version(request: bytes, timeout: float) -> bytes:
        return cri.VersionResponse(
            runtime_name="containerd", runtime_version="2.1.9+unknown"
        ).SerializeToString()

    known = asyncio.run(ask_runtime(status, version, None))
    assert known is not None and known.image == "registry.k8s.io/pause:3.10"
    configured = asyncio.run(ask_runtime(status, version, "hub/pause:1"))
    assert configured == sandbox.Known("hub/pause:1", "config sandboxImage")


def test_pulls_that_fail_are_tried_again_ever_less_often() -> None:
    assert [sandbox.retry_after(n) for n in (1, 2, 3, 4, 7, 8, 50)] == [5, 10, 20, 40, 300, 300, 300]


def test_a_failed_pull_says_what_the_configured_registries_answered_when_none_holds_it() -> None:
    from image_cri_shim.config import parse as parse_config
    from image_cri_shim.reference import parse
    from image_cri_shim.workers.lookup.decisions import Answer, Probe, choose
    from image_cri_shim.workers.lookup.plan import plan

    registries = parse_config("address: http://hub:5000\n", "/c.yaml").registries
    source = parse(PAUSE)
    candidates = plan(source, registries)
    missing = choose(source, [(c, Probe(Answer.NOT_FOUND)) for c in candidates])
    said = "failed to pull and unpack image: lookup registry.k8s.io: no such host"
    assert sandbox.unavailable(said, missing) == (
        f"no configured registry holds it (hub:5000/pause:3.10: not found); pulled as asked: {said}"
    )
    found = choose(source, [(c, Probe(Answer.FOUND)) for c in candidates])
    assert sandbox.unavailable("every attempt failed: …", found) == "every attempt failed: …"
    assert sandbox.unavailable(said, None) == said
