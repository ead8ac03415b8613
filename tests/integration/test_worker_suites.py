"""The worker's end-to-end scenarios about names and passthrough, also against containerd 1.7
(Debian trixie) and 2.x (sid), each run as the host's 1.6 runs them in test_worker.py."""

from __future__ import annotations

import functools
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

import tests.integration.test_worker as worker
from tests.conftest import SUITES
from tests.harness import Containerd, CriClientFactory, ImageBuilder, RegistryFactory, ShimFactory

pytestmark = pytest.mark.timeout(180)

SCENARIOS: dict[str, Callable[[worker.Stack], None]] = {
    "priority": functools.partial(worker.test_pull_goes_to_the_highest_priority_registry_that_holds_it, "v1"),
    "short-names": worker.test_short_names_are_normalized_like_docker_io,
    "digest": worker.test_digest_pull_keeps_the_digest,
    "held-nowhere": worker.test_image_held_nowhere_goes_upstream_unchanged_and_fails_as_upstream_fails,
    "status-list-remove": worker.test_status_list_and_remove_answer_for_the_caller_name,
    "image-ids": worker.test_image_ids_pass_through,
    "runtime-passthrough": functools.partial(
        worker.test_runtime_service_and_image_fs_info_pass_through, "v1"
    ),
}


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("suite", SUITES)
def test_worker_scenario(
    suite: str,
    scenario: str,
    containerd_of: Callable[[str], Containerd],
    registry_factory: RegistryFactory,
    image_factory: ImageBuilder,
    shim_factory: ShimFactory,
    cri_client: CriClientFactory,
) -> None:
    directory = Path(tempfile.mkdtemp(prefix="shim-"))
    try:
        stack = worker.Stack(
            containerd_of(suite), registry_factory, image_factory, shim_factory, cri_client, directory
        )
        SCENARIOS[scenario](stack)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
