"""How CRI-O 1.35 words a failed pull (tests/pull-messages.json), for the CRI-O stand-in, which
pulls through containerd: containerd's answer is read for the fault it reports, and CRI-O's
words for that fault are given instead. tests/unit/test_criowords.py checks, for every message
containerd 1.6, 1.7 and 2.x were recorded answering, that the words given mean to the shim what
CRI-O's recorded words for that fault mean.
"""

from __future__ import annotations

import re

PULL = "unable to pull image or OCI artifact: pull image err: "
# CRI-O tries the reference again as an OCI artifact and appends that attempt's answer
ARTIFACT = "; artifact err: image reference: reference is a container image, not an OCI artifact"
SOURCE = "initializing source docker://{image}: reading manifest {tag} in {repo}: "

# containerd's words (lower case; the first that matches wins) -> CRI-O's for the same fault
WORDS: tuple[tuple[str, str], ...] = (
    (
        "no space left on device",
        "unable to pull image: writing blob: storing blob to file: no space left on device",
    ),
    ("failed to parse image reference", 'cannot parse input: "{image}": repository name must be lowercase'),
    (
        "connection refused",
        "RegistryUnavailable: unable to pull image: initializing source docker://{image}: pinging container"
        ' registry {host}: Get "http://{host}/v2/": dial tcp {host}: connect: connection refused',
    ),
    ("archive/tar", PULL + "writing blob: layer 0 does not match config's DiffID" + ARTIFACT),
    (
        "unexpected commit digest",
        PULL
        + "writing blob: setting up to decompress blob: happened during read: Digest did not match"
        + ARTIFACT,
    ),
    (
        "no match for platform",
        PULL + "choosing an image from manifest list docker://{image}: no image found in image index for"
        ' architecture "{arch}", variant "", OS "linux"',
    ),
    (
        "unexpected eof",
        PULL + "writing blob: storing blob to file: happened during read: unexpected EOF" + ARTIFACT,
    ),
    (
        "failed to read expected number of bytes",
        PULL + "writing blob: storing blob to file: happened during read: unexpected EOF" + ARTIFACT,
    ),
    ("no basic auth credentials", PULL + SOURCE + "authentication required"),
)
# a registry's status as containerd quotes it, and the error code CRI-O quotes instead
_STATUS = re.compile(r"\b([45]\d\d) ([A-Z][A-Za-z ]+)")
_CODES = {"401": "unauthorized", "403": "denied", "429": "toomanyrequests"}


def crio_words(image: str, containerd_message: str, architecture: str = "amd64") -> str:
    """CRI-O's message for the pull of `image` that containerd answered `containerd_message` to,
    on a node of `architecture`."""
    text = containerd_message.lower()
    host, _, rest = image.partition("/")
    repo, tag = (
        rest.split("@")[0].rsplit(":", 1) if "@" not in rest else (rest.split("@")[0], rest.split("@")[1])
    )
    fields = {
        "image": image,
        "host": host,
        "repo": f"{host}/{repo}",
        "tag": tag,
        "arch": architecture,
    }
    for phrase, words in WORDS:
        if phrase in text:
            return words.format(**fields)
    manifest = "failed to resolve" in text
    where = SOURCE.format(**fields) if manifest else "parsing image configuration: fetching blob: "
    status = _STATUS.search(containerd_message)
    if status is not None:
        code, reason = status.groups()
        said = _CODES.get(code, f"received unexpected HTTP status: {code} {reason.strip()}")
        return PULL + where + said + ("" if manifest else ARTIFACT)
    if ": not found" in text:
        missing = "manifest unknown" if manifest else "blob unknown to registry"
        return PULL + where + missing + ("" if manifest else ARTIFACT)
    return PULL + containerd_message.split(": ", 1)[-1]
