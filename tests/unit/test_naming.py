"""The naming policy's decisions, without sockets: which names a client sees, which records move."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from image_cri_shim import config, reference
from image_cri_shim.atomic import write_atomic
from image_cri_shim.protos import containerd_pb2 as ctr
from image_cri_shim.protos import cri_pb2 as cri
from image_cri_shim.workers.lookup.plan import Planner
from image_cri_shim.workers.naming import store as store_module
from image_cri_shim.workers.naming.policy import Naming, created_before, translate
from image_cri_shim.workers.naming.renaming import renames
from image_cri_shim.workers.naming.store import NameStore
from image_cri_shim.workers.runtime.records import RECORD_TIMEOUT, OutOfTime, call_timeout
from image_cri_shim.workers.runtime.upstream import Upstream

D = "sha256:" + "ab" * 32
CALLER = "registry.k8s.io/e2e-test-images/busybox:1.29-2"
PULLED = "127.0.0.1:5000/e2e-test-images/busybox:1.29-2"


def store(tmp_path: Path, pairs: dict[str, str]) -> NameStore:
    names = NameStore(str(tmp_path / "state"))
    for caller, target in pairs.items():
        names.record(caller, target)
    return names


def test_renames_cover_the_tag_and_its_digest_record() -> None:
    assert renames(CALLER, PULLED, D) == [
        (PULLED, CALLER),
        (f"127.0.0.1:5000/e2e-test-images/busybox@{D}", f"registry.k8s.io/e2e-test-images/busybox@{D}"),
    ]
    by_digest = f"127.0.0.1:5000/x@{D}"
    assert renames(f"docker.io/library/x@{D}", by_digest, D) == [(by_digest, f"docker.io/library/x@{D}")]


def test_a_record_is_held_before_the_pull_only_if_created_earlier() -> None:
    image = ctr.Image(name=PULLED)
    assert not created_before(image, 1000.0), "no timestamp: not known to be older"
    image.created_at.seconds = 999
    assert created_before(image, 1000.0)
    image.created_at.seconds = 1000
    image.created_at.nanos = 5
    assert not created_before(image, 1000.0)


def test_a_record_call_is_bounded_by_what_is_left_of_the_callers_deadline() -> None:
    assert call_timeout(None, 100.0) == RECORD_TIMEOUT, "no deadline: its own bound"
    assert call_timeout(100.0 + 2 * RECORD_TIMEOUT, 100.0) == RECORD_TIMEOUT
    assert call_timeout(101.5, 100.0) == 1.5
    for until in (100.0, 99.0):
        with pytest.raises(OutOfTime):
            call_timeout(until, 100.0)


def test_an_owed_renaming_is_kept_under_the_state_dir_until_paid_or_forgotten(tmp_path: Path) -> None:
    names = store(
        tmp_path, {"docker.io/library/a:1": "m.io/library/a:1", "docker.io/library/b:1": "m.io/b:1"}
    )
    names.owe("docker.io/library/nowhere:1", 5.0)
    assert names.owed("docker.io/library/nowhere:1") is None, "only a pulled name's renaming is owed"
    names.owe("docker.io/library/a:1", 10.5)
    names.owe("docker.io/library/b:1", 11.0)
    again = NameStore(str(tmp_path / "state"))
    assert again.owed("docker.io/library/a:1") == 10.5 and again.owed("docker.io/library/b:1") == 11.0
    again.paid("docker.io/library/a:1")
    again.forget(["docker.io/library/b:1"])
    third = NameStore(str(tmp_path / "state"))
    assert third.owed("docker.io/library/a:1") is None and third.owed("docker.io/library/b:1") is None
    assert third.target("docker.io/library/a:1") == "m.io/library/a:1", "paying keeps the pair"


def test_changes_made_together_are_written_once_and_each_builds_on_the_last(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    names = store(tmp_path, {})
    writes: list[bytes] = []

    def counted(path: str, data: bytes) -> None:
        writes.append(data)
        write_atomic(path, data)

    monkeypatch.setattr(store_module, "write_atomic", counted)
    a, b = "docker.io/library/a:1", "docker.io/library/b:1"
    names.changed(
        [
            lambda: names.record(a, "m.io/library/a:1"),
            lambda: names.owe(a, 10.5),  # needs the pair just recorded
            lambda: names.record(b, "m.io/library/b:1"),
        ]
    )
    assert len(writes) == 1
    again = NameStore(str(tmp_path / "state"))
    assert again.target(b) == "m.io/library/b:1" and again.owed(a) == 10.5


def test_translation_replaces_rewritten_names(tmp_path: Path) -> None:
    names = store(tmp_path, {CALLER: PULLED})
    repo = "127.0.0.1:5000/e2e-test-images/busybox"
    tags, digests = translate([PULLED], [f"{repo}@{D}"], names)
    assert tags == [CALLER]
    assert digests == [f"registry.k8s.io/e2e-test-images/busybox@{D}"]


def test_translation_keeps_a_name_also_held_directly(tmp_path: Path) -> None:
    names = store(tmp_path, {CALLER: PULLED, PULLED: PULLED})
    repo = "127.0.0.1:5000/e2e-test-images/busybox"
    tags, digests = translate([PULLED], [f"{repo}@{D}"], names)
    assert tags == [PULLED, CALLER]
    assert digests == [f"{repo}@{D}", f"registry.k8s.io/e2e-test-images/busybox@{D}"]


def test_translation_of_a_digest_pull_and_of_unrelated_names(tmp_path: Path) -> None:
    names = store(tmp_path, {f"docker.io/library/x@{D}": f"mirror.io/library/x@{D}"})
    tags, digests = translate(["other.io/y:1"], [f"mirror.io/library/x@{D}", f"other.io/y@{D}"], names)
    assert tags == ["other.io/y:1"]
    assert digests == [f"docker.io/library/x@{D}", f"other.io/y@{D}"]


def test_two_callers_of_one_pulled_name(tmp_path: Path) -> None:
    names = store(tmp_path, {"a.io/x:1": "m.io/x:1", "b.io/x:1": "m.io/x:1"})
    tags, digests = translate(["m.io/x:1"], [f"m.io/x@{D}"], names)
    assert tags == ["a.io/x:1", "b.io/x:1"]
    assert digests == [f"a.io/x@{D}", f"b.io/x@{D}"]


def translating(tmp_path: Path, pairs: dict[str, str]) -> Naming:
    """A policy for a runtime without image records (nothing is called upstream here)."""
    registries = config.parse("address: http://127.0.0.1:5000\n", "t.yaml").registries
    naming = Naming(Upstream(str(tmp_path / "none.sock"), 1.0), store(tmp_path, pairs), Planner(registries))
    naming._mode = "translation"
    return naming


CANDIDATE = "127.0.0.1:5000/e2e-test-images/busybox:1.29-2"  # the plan's one candidate for CALLER


@pytest.mark.parametrize(
    ("native", "pairs", "held", "found", "asked", "kept"),
    [
        # nothing remembered: the caller's name, then the candidate's
        (False, {}, {CALLER}, CALLER, [CALLER], {}),
        (False, {}, {CANDIDATE}, CANDIDATE, [CALLER, CANDIDATE], {}),
        (False, {}, set(), None, [CALLER, CANDIDATE], {}),
        # translated: the pulled name first; renamed records: the caller's name first
        (False, {CALLER: PULLED}, {PULLED}, PULLED, [PULLED], {CALLER: PULLED}),
        (True, {CALLER: PULLED}, {CALLER}, CALLER, [CALLER], {CALLER: PULLED}),
        # the pulled name is gone from the node: the pair is forgotten on the way
        (True, {CALLER: "m.io/x:1"}, {CANDIDATE}, CANDIDATE, [CALLER, "m.io/x:1", CANDIDATE], {}),
        (False, {CALLER: "m.io/x:1"}, set(), None, ["m.io/x:1", CALLER, CANDIDATE], {}),
    ],
)
def test_look_asks_the_likely_names_in_order_and_prunes_what_is_gone(
    tmp_path: Path,
    native: bool,
    pairs: dict[str, str],
    held: set[str],
    found: str | None,
    asked: list[str],
    kept: dict[str, str],
) -> None:
    naming = translating(tmp_path, pairs)
    naming._mode = "containerd" if native else "translation"
    calls: list[str] = []

    async def ask(name: str) -> tuple[bool, str]:
        calls.append(name)
        return name in held, f"answer for {name}"

    name, answer = asyncio.run(naming.look(reference.parse(CALLER), ask))
    assert (name, calls) == (found, asked)
    assert answer == f"answer for {found or asked[0]}", "found: its answer; else the first one"
    assert {c: naming._names.target(c) for c in pairs if naming._names.target(c)} == kept


def test_a_pair_is_not_pruned_while_its_pull_is_answered_or_renamed(tmp_path: Path) -> None:
    """While the records are renamed, a listing or a lookup may see the image under neither name
    (the CRI follows a moment later): the pair is kept, and forgotten by the next look after."""
    naming = translating(tmp_path, {CALLER: PULLED})
    naming._mode = "containerd"
    elsewhere = cri.ListImagesResponse(images=[cri.Image(id=D, repo_tags=["docker.io/library/y:1"])])

    async def nowhere(name: str) -> tuple[bool, str]:
        return False, name

    naming._active[CALLER] = 1
    asyncio.run(naming.prune(elsewhere))
    asyncio.run(naming.look(reference.parse(CALLER), nowhere))
    assert naming._names.target(CALLER) == PULLED
    del naming._active[CALLER]
    asyncio.run(naming.prune(elsewhere))
    assert naming._names.target(CALLER) is None


def test_first_names_and_verbose_origin(tmp_path: Path) -> None:
    naming = translating(tmp_path, {CALLER: PULLED})
    assert naming.first_names(CALLER) == [PULLED, CALLER]
    naming._mode = "containerd"
    assert naming.first_names(CALLER) == [CALLER, PULLED], "records renamed: the caller's name first"
    assert naming.first_names("docker.io/library/y:1") == ["docker.io/library/y:1"]
    response = cri.ImageStatusResponse(image=cri.Image(id=D, repo_tags=[CALLER]))
    response.info["info"] = "{}"
    assert naming.status(response, CALLER, verbose=True)
    assert json.loads(response.info["image-cri-shim"]) == {"pulledAs": PULLED, "registry": "127.0.0.1:5000"}
    assert response.info["info"] == "{}", "nothing else in info changes"
    quiet = cri.ImageStatusResponse(image=cri.Image(id=D, repo_tags=[CALLER]))
    assert not naming.status(quiet, CALLER, verbose=False)


def test_create_container_image_is_mapped_without_image_records(tmp_path: Path) -> None:
    from cri_api.v1 import api_pb2 as v1

    naming = translating(tmp_path, {CALLER: PULLED})
    request = v1.CreateContainerRequest(
        pod_sandbox_id="pod",
        config=v1.ContainerConfig(
            image=v1.ImageSpec(
                image="registry.k8s.io/e2e-test-images/busybox:1.29-2", annotations={"a": "b"}
            ),
            command=["sh"],
            labels={"l": "1"},
        ),
    )
    assert naming._mapped(request.config.image.image) == PULLED
    mapped = cri.CreateContainerRequest.FromString(request.SerializeToString())
    mapped.config.image.image = PULLED
    back = v1.CreateContainerRequest.FromString(mapped.SerializeToString())
    assert (back.config.image.image, back.pod_sandbox_id, list(back.config.command)) == (
        PULLED,
        "pod",
        ["sh"],
    )
    assert back.config.image.annotations == {"a": "b"} and back.config.labels == {"l": "1"}
    assert naming._mapped("sha256:" + "0" * 64) is None, "image IDs go as they came"
    assert naming._mapped("docker.io/library/unknown:1") is None


def test_an_image_status_answer_under_the_callers_own_name_is_the_shims_only_on_settled_records(
    tmp_path: Path,
) -> None:
    """ImageStatus may pass containerd's answer as it is only when nothing of the shim's goes into
    it: records renamed (no translation), no renaming owed or removal waiting, no verbose `info`."""
    naming = translating(tmp_path, {CALLER: PULLED})
    assert not naming.answers_as_held(verbose=False), "translated: the runtime holds the pulled name"
    naming._mode = "containerd"
    assert naming.answers_as_held(verbose=False)
    assert not naming.answers_as_held(verbose=True), "verbose adds where the image came from"
    naming._names.owe(CALLER, 1000.0)
    assert not naming.answers_as_held(verbose=False), "a renaming owed is done on the lookup"
    naming._names.paid(CALLER)
    assert naming.answers_as_held(verbose=False)

    async def queued() -> bool:
        naming._active[PULLED] = 1  # another image's pull is not answered yet: the renaming waits
        naming._deferred.add(CALLER, PULLED, 1000.0)
        return naming.answers_as_held(verbose=False)

    assert not asyncio.run(queued()), "an image whose renaming waits is translated"
