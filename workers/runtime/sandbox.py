"""The sandbox (pause) image: which one the runtime uses, and what a listing says of it. Pure.

kubelet never asks the image service for the sandbox image: the runtime pulls it itself inside
RunPodSandbox, so that pull never passes through the shim. The shim therefore learns the name
and keeps the image on the node under it (`keeper.py`). The name comes from the config key
`sandboxImage` when it is set, else from what the runtime says in CRI `Status` with `verbose`
(`from_status`). What each runtime says there, read off the real ones
(tests/sandbox-status.json holds their answers):

- containerd 1.6 and 1.7: `info["config"]` is its CRI config as JSON, with `sandboxImage`;
- containerd 2.x: nothing. Its `info["config"]` is the runtime half of its CRI config only; the
  image half, where `pinned_images.sandbox` lives, is not reported (2.1.9 checked, and no later
  release's source adds it), nor is it anywhere else in its API. The shim then takes the
  release's built-in default (`CONTAINERD_DEFAULTS`), which is what a config left alone uses; a
  node whose containerd pins another one sets `sandboxImage`;
- CRI-O 1.27 and newer: `info["config"]` is `{"sandboxImage": …, "crio": {…}}` (its `pause_image`);
- cri-dockerd 0.3.2 and newer: `info["config"]` is `{"sandboxImage": …}`
  (`--pod-infra-container-image`, or its built-in default).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from image_cri_shim import reference
from image_cri_shim.workers.lookup.decisions import Decision

UNKNOWN = "the runtime does not name its sandbox image in its Status: set sandboxImage"

# Where the runtimes put it, in the order they are read: (info key, path inside its JSON). The
# pinned-images forms are what a containerd 2.x would say if it reported its image config.
_PLACES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("config", ("sandboxImage",)),  # containerd 1.x, CRI-O, cri-dockerd
    ("config", ("pinned_images", "sandbox")),
    ("imageConfig", ("pinned_images", "sandbox")),
)

# containerd 2.x's built-in sandbox image (`pinned_images.sandbox` unset), by release: from
# (major, minor) on, until the next row. Releases after the last row are taken to keep its value.
CONTAINERD_DEFAULTS: tuple[tuple[tuple[int, int], str], ...] = (
    ((2, 0), "registry.k8s.io/pause:3.10"),
    ((2, 2), "registry.k8s.io/pause:3.10.1"),
    ((2, 3), "registry.k8s.io/pause:3.10.2"),
)


@dataclass(frozen=True)
class Known:
    """The sandbox image and where the shim learned it (said by `--dry-run` and the log)."""

    image: str
    source: str


def learn(configured: str | None, info: Mapping[str, str] | None, runtime: str, version: str) -> Known | None:
    """The sandbox image to keep: the config's, else what the runtime says in its Status `info`
    (None: it did not answer), else the built-in default of a containerd that says nothing;
    None when none of them names one. `runtime`, `version`: its Version answer."""
    if configured is not None:
        return Known(configured, "config sandboxImage")
    said = from_status(info) if info is not None else None
    if said is not None:
        return Known(said, "the runtime's Status")
    default = builtin(runtime, version) if info is not None else None
    if default is not None:
        return Known(default, f"{runtime} {version}'s built-in default (its Status does not say)")
    return None


def builtin(runtime: str, version: str) -> str | None:
    """The built-in sandbox image of a runtime that does not report its own (containerd 2.x)."""
    found = re.match(r"v?(\d+)\.(\d+)", version)
    if runtime != "containerd" or found is None:
        return None
    release = (int(found.group(1)), int(found.group(2)))
    chosen = None
    for since, image in CONTAINERD_DEFAULTS:
        if release >= since:
            chosen = image
    return chosen


RETRY_FIRST, RETRY_MAX = 5.0, 300.0


def retry_after(failures: int) -> float:
    """Seconds until the next pull after `failures` failed ones in a row: 5 s doubling to 5 min.
    A trigger in between (kubelet lists every 30 s) only looks whether the image came meanwhile."""
    return min(RETRY_FIRST * 2.0 ** max(failures - 1, 0), RETRY_MAX)


def from_status(info: Mapping[str, str]) -> str | None:
    """The sandbox image a runtime names in its verbose Status `info`, normalized as the runtime
    names images (`pause:3.9` -> `docker.io/library/pause:3.9`); None when it names none."""
    for key, path in _PLACES:
        value: object = _json(info.get(key, ""))
        for step in path:
            value = value.get(step) if isinstance(value, dict) else None
        if isinstance(value, str) and (name := normalized(value)) is not None:
            return name
    return None


def normalized(name: str) -> str | None:
    """`name` as the runtime reports it in `repo_tags`, or None when it is no image name."""
    name = name.strip()
    if not name or reference.is_image_id(name):
        return None
    try:
        return str(reference.parse(name))
    except reference.ReferenceError:
        return None


def _json(text: str) -> object:
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def listed(response: bytes, name: str) -> bool:
    """Whether a serialized ListImagesResponse holds an image tagged `name`, read off the bytes
    without decoding the listing (kubelet lists every 30 s): each image is field 1 of the
    response, and each of its `repo_tags` a length-delimited field 2 inside it, so the tag
    appears as `0x12 <length> <name>` and nothing else reads the same."""
    data = name.encode()
    return b"\x12" + _varint(len(data)) + data in response


def _varint(number: int) -> bytes:
    out = bytearray()
    while True:
        low, number = number & 0x7F, number >> 7
        if number:
            out.append(low | 0x80)
        else:
            out.append(low)
            return bytes(out)


def unavailable(details: str, decision: Decision | None) -> str:
    """Why a pull of the sandbox image failed, for the log, STATUS= and /healthz: the pull's own
    message (which names each attempt when the shim rewrote it), after what the configured
    registries answered when none of them holds it (the runtime's message then is about the
    image's own registry only)."""
    if decision is None or decision.rewritten or decision.reason() in details:
        return details
    return f"no configured registry holds it ({decision.reason()}); pulled as asked: {details}"
