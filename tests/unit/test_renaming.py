"""Which records a rewritten pull leaves behind, per runtime, as a value (`renaming`)."""

from __future__ import annotations

import pytest

from image_cri_shim.workers.naming.renaming import (
    PAID,
    UNCHANGED,
    Ledger,
    Owe,
    Renaming,
    When,
    foreign_ref,
    ledger,
    renaming,
    reported_name,
    when,
)
from image_cri_shim.workers.runtime.dockerapi import DockerImage, familiar

D = "sha256:" + "cd" * 32
CALLER = "docker.io/library/nginx:1.27"
PULLED = "mirror.local:5000/library/nginx:1.27"
PULLED_DIGEST = f"mirror.local:5000/library/nginx@{D}"
CALLER_DIGEST = f"docker.io/library/nginx@{D}"
BOTH = (PULLED, PULLED_DIGEST)


@pytest.mark.parametrize(
    ("caller", "pulled", "held", "before", "digests", "expected"),
    [
        # containerd: both records copied, both pulled ones removed
        (CALLER, PULLED, BOTH, (), True,
         Renaming(((PULLED, CALLER), (PULLED_DIGEST, CALLER_DIGEST)), BOTH)),
        # Docker: the tag copied, the digest record cannot be made; both pulled ones removed
        (CALLER, PULLED, BOTH, (), False, Renaming(((PULLED, CALLER),), BOTH)),
        # a pulled name the node held before the pull stays, on either runtime
        (CALLER, PULLED, BOTH, (PULLED,), False, Renaming(((PULLED, CALLER),), (PULLED_DIGEST,), (PULLED,))),
        (CALLER, PULLED, BOTH, BOTH, True,
         Renaming(((PULLED, CALLER), (PULLED_DIGEST, CALLER_DIGEST)), (), BOTH)),
        # a digest pull: containerd copies it; Docker can't, so its only record keeps the image
        (CALLER_DIGEST, PULLED_DIGEST, (PULLED_DIGEST,), (), True,
         Renaming(((PULLED_DIGEST, CALLER_DIGEST),), (PULLED_DIGEST,))),
        (CALLER_DIGEST, PULLED_DIGEST, (PULLED_DIGEST,), (), False, Renaming((), (), (PULLED_DIGEST,))),
        # only records the runtime holds move (no digest record beside the tag)
        (CALLER, PULLED, (PULLED,), (), False, Renaming(((PULLED, CALLER),), (PULLED,))),
        # nothing held: nothing to do
        (CALLER, PULLED, (), (), True, Renaming()),
    ],
    ids=["containerd", "docker", "docker-held-before", "containerd-held-before", "containerd-digest",
         "docker-digest", "docker-no-digest-record", "gone"],
)  # fmt: skip
def test_the_renaming_plan(
    caller: str,
    pulled: str,
    held: tuple[str, ...],
    before: tuple[str, ...],
    digests: bool,
    expected: Renaming,
) -> None:
    plan = renaming(caller, pulled, D, held, before, digests)
    assert plan == expected
    assert plan.complete == (bool(expected.create) and not expected.kept)


@pytest.mark.parametrize(
    ("image_ref", "foreign"),
    [
        (PULLED_DIGEST, True),  # cri-dockerd's answer: the pulled repository's digest
        (CALLER_DIGEST, False),  # the caller's own name with its digest
        (f"nginx@{D}", False),  # Docker's familiar spelling of it
        (D, False),  # containerd's: the image ID
        ("cd" * 32, False),  # CRI-O's: the ID as bare hex
        ("", False),
        ("NOT A NAME", False),
    ],
)
def test_an_image_ref_is_foreign_when_it_names_another_repository(image_ref: str, foreign: bool) -> None:
    assert foreign_ref(image_ref, CALLER) is foreign


def test_docker_spells_docker_io_names_familiar_and_keeps_others() -> None:
    assert familiar("docker.io/library/nginx:1") == "nginx:1"
    assert familiar(f"docker.io/library/nginx@{D}") == f"nginx@{D}"
    assert familiar("docker.io/bitnami/redis:7") == "bitnami/redis:7"
    assert familiar(PULLED) == PULLED
    image = DockerImage("sha256:" + "ef" * 32, ("nginx:1.27", PULLED), (f"nginx@{D}", PULLED_DIGEST))
    assert image.holds(CALLER) and image.holds(PULLED) and image.holds(CALLER_DIGEST)
    assert not image.holds("docker.io/library/nginx:1.28")
    assert image.digest_of(PULLED) == D and image.digest_of("quay.io/x/y:1") == ""


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        ("nginx:1.27", CALLER),
        (f"nginx@{D}", CALLER_DIGEST),
        (D, None),  # an image ID
        ("cd" * 32, None),  # a bare one, as kubelet's image GC sends it
        ("", None),
        ("UPPER/Case:1", None),  # unparsable
    ],
)
def test_the_name_a_runtime_reports_for_an_image(image: str, expected: str | None) -> None:
    assert reported_name(image) == expected


@pytest.mark.parametrize(
    ("others", "owed", "busy", "records", "expected"),
    [
        # the only pull of its name, nothing else running: renamed now, since its pull began
        (0, None, False, True, When(100.0)),
        # an older renaming of the name still owed: the records made since that pull go too
        (0, 90.0, False, True, When(90.0)),
        # other images' pulls unanswered or their renamings queued: on containerd, after them
        # (owed until then)
        (0, None, True, True, When(100.0, defer=True)),
        # ...not on Docker, whose record changes no pull queues behind
        (0, None, True, False, When(100.0)),
        # another pull of the name still in the runtime: it reads the pulled records, keep them
        (1, 90.0, True, True, When()),
    ],
    ids=["alone", "owed-before", "others-running", "docker", "name-still-pulled"],
)
def test_when_an_answered_pull_is_renamed(
    others: int, owed: float | None, busy: bool, records: bool, expected: When
) -> None:
    assert when(others, 100.0, owed, busy, records) == expected


@pytest.mark.parametrize(
    ("since", "renamed", "owed", "queued", "expected"),
    [
        # nothing was tried (another pull of the name renames as it ends): as it was
        (None, False, 90.0, False, UNCHANGED),
        (None, True, None, False, UNCHANGED),
        # could not be done now (runtime unreachable, out of time): owed, with its pull's start
        (100.0, False, None, False, Owe(100.0)),
        (90.0, False, 90.0, False, Owe(90.0)),
        # done: an owed renaming is paid...
        (90.0, True, 90.0, False, PAID),
        # ...unless the name waits in the queue, whose renaming pays when it is done
        (90.0, True, 90.0, True, UNCHANGED),
        # done, and nothing was owed: nothing to write
        (100.0, True, None, False, UNCHANGED),
    ],
)
def test_what_is_owed_after_a_renaming_was_tried(
    since: float | None, renamed: bool, owed: float | None, queued: bool, expected: Ledger
) -> None:
    assert ledger(since, renamed, owed, queued) == expected
