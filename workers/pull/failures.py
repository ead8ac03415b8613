"""Why a PullImage failed, read off the gRPC status and message the runtime answered with
(docs/behaviour.md, "Pull-time failover").

A pure function: the runtime tells the shim nothing but a status code and a message, so the
message is matched against the words each runtime really uses for each failure: containerd (1.6,
1.7, 2.x), Docker Engine through cri-dockerd, and CRI-O word them differently. They were collected
by provoking every failure against the real runtimes (tests/pull-messages.json, checked by
tests/unit/test_failures.py).

Whether another source can help decides what the shim does next:
- the target registry is at fault (it lacks the manifest or a blob, refuses credentials,
  throttles, answers 5xx, refuses or drops the connection, times out): the next candidate
  that holds the image can help, so the pull fails over;
- the fault lies with the node or the caller (the caller's deadline or cancellation, a full
  disk, an unpack or snapshotter error, an invalid reference, the runtime itself unreachable):
  no registry can fix it, so the error goes back at once;
- a message nobody recognises is treated as the second kind: a failover the shim cannot
  justify would only hide the runtime's answer behind other attempts.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass


class Cause(enum.Enum):
    """What went wrong; the value is the metric label and the word in log lines."""

    # the target registry's fault: another source may serve the pull
    NOT_FOUND = "not_found"  # manifest, blob or platform missing there
    DENIED = "denied"  # 401/403
    THROTTLED = "throttled"  # 429
    SERVER_ERROR = "server_error"  # 5xx
    CONNECTION = "connection"  # refused, reset, closed mid-body, timed out
    BAD_CONTENT = "bad_content"  # served bytes that do not match their digest
    # no registry can fix these
    DEADLINE = "deadline"
    CANCELLED = "cancelled"
    DISK_FULL = "disk_full"
    LOCAL = "local"  # the node's own files: permission denied, read-only, I/O error
    UNPACK = "unpack"
    INVALID_REFERENCE = "invalid_reference"
    RUNTIME = "runtime"  # the runtime itself could not be reached
    UNKNOWN = "unknown"


# Causes after which the registry is backed off (as a failed probe backs it off), not only counted.
_DOWN = frozenset({Cause.THROTTLED, Cause.SERVER_ERROR, Cause.CONNECTION})
_RETRYABLE = frozenset({Cause.NOT_FOUND, Cause.DENIED, Cause.BAD_CONTENT}) | _DOWN


@dataclass(frozen=True, slots=True)
class Verdict:
    cause: Cause
    why: str  # a few words for the log line and the final error

    @property
    def retryable(self) -> bool:
        """Whether another source may succeed where this one failed."""
        return self.cause in _RETRYABLE

    @property
    def registry_down(self) -> bool:
        """Whether the registry is to be skipped for a backoff period, as after a failed probe."""
        return self.cause in _DOWN


# Words that show a message came from the pull itself; a message with none of them (the runtime's
# own trouble, an error nobody has seen) is never failed over.
PULL_PHRASES = (
    # containerd wraps every failure that reached a registry in the first, except 2.x's for an
    # index without the node's platform
    "failed to pull and unpack image",
    "no match for platform in manifest",
    # CRI-O: "unable to pull image or OCI artifact: pull image err: …" and, when the registry
    # cannot be reached, "RegistryUnavailable: unable to pull image: …"
    "unable to pull image",
    # Docker Engine (cri-dockerd hands its words on): what fails before the pull starts comes as
    # its API's error; what fails once it has started comes bare from its progress stream
    "error response from daemon",
    "error pulling image configuration",
    "unknown blob",
    "no matching manifest for",
    "filesystem layer verification failed",
)
# Docker's word, alone, for a layer download cut off and the registry gone after its retries.
_CUT = "eof"
# CRI-O tries an image's reference as an OCI artifact when the image pull fails, and appends
# that attempt's error; only the image pull's tells what the registry did.
_ARTIFACT = "; artifact err:"

# Checked in order, on the lower-cased message; the first that matches wins. The node's faults
# come first: a full disk shows up inside a "failed to copy" like a registry's, and a corrupt
# layer as an "unexpected EOF" inside "failed to extract layer".
_NODE: tuple[tuple[str, Cause, str], ...] = (
    ("no space left on device", Cause.DISK_FULL, "no space left on device"),
    ("disk quota exceeded", Cause.DISK_FULL, "disk quota exceeded"),
    ("read-only file system", Cause.LOCAL, "read-only file system"),
    ("permission denied", Cause.LOCAL, "permission denied on the node"),
    ("input/output error", Cause.LOCAL, "I/O error on the node"),
    ("failed to extract layer", Cause.UNPACK, "layer could not be unpacked"),
    ("failed to unpack", Cause.UNPACK, "image could not be unpacked"),
    ("apply layer error", Cause.UNPACK, "layer could not be unpacked"),
    ("failed to register layer", Cause.UNPACK, "layer could not be unpacked"),  # Docker
    ("does not match config's diffid", Cause.UNPACK, "layer does not match the image's config"),  # CRI-O
    ("failed to prepare extraction snapshot", Cause.UNPACK, "snapshotter error"),
    ("snapshotter", Cause.UNPACK, "snapshotter error"),
    ("failed to parse image reference", Cause.INVALID_REFERENCE, "invalid reference"),
    ("invalid reference format", Cause.INVALID_REFERENCE, "invalid reference"),
    ("cannot parse input", Cause.INVALID_REFERENCE, "invalid reference"),  # CRI-O
    ("context deadline exceeded", Cause.DEADLINE, "deadline exceeded"),
    ("context canceled", Cause.CANCELLED, "cancelled"),
)
_HTTP_STATUS = re.compile(r"\b([45]\d\d) [a-z][a-z -]+")
_REGISTRY: tuple[tuple[str, Cause, str], ...] = (
    ("connection refused", Cause.CONNECTION, "connection refused"),
    ("connection reset", Cause.CONNECTION, "connection reset"),
    ("broken pipe", Cause.CONNECTION, "connection closed"),
    ("unexpected eof", Cause.CONNECTION, "connection closed mid-transfer"),
    ("failed to read expected number of bytes", Cause.CONNECTION, "connection closed mid-transfer"),
    ("use of closed network connection", Cause.CONNECTION, "connection closed"),
    ("server closed idle connection", Cause.CONNECTION, "connection closed"),
    ("i/o timeout", Cause.CONNECTION, "timeout"),
    ("tls handshake timeout", Cause.CONNECTION, "timeout"),
    ("timeout awaiting response headers", Cause.CONNECTION, "timeout"),
    ("client.timeout exceeded", Cause.CONNECTION, "timeout"),
    ("no route to host", Cause.CONNECTION, "no route to host"),
    ("no such host", Cause.CONNECTION, "host not found"),
    ("unexpected commit digest", Cause.BAD_CONTENT, "content does not match its digest"),
    ("digest did not match", Cause.BAD_CONTENT, "content does not match its digest"),  # CRI-O
    (
        "filesystem layer verification failed",
        Cause.BAD_CONTENT,
        "content does not match its digest",
    ),  # Docker
    ("no match for platform in manifest", Cause.NOT_FOUND, "no manifest for this platform"),
    ("no image found in image index", Cause.NOT_FOUND, "no manifest for this platform"),  # CRI-O
    ("no matching manifest for", Cause.NOT_FOUND, "no manifest for this platform"),  # Docker
    # a registry's error codes, as CRI-O and Docker quote them instead of the HTTP status
    ("toomanyrequests", Cause.THROTTLED, "too many requests"),
    ("too many requests", Cause.THROTTLED, "too many requests"),
    ("unauthorized", Cause.DENIED, "unauthorized"),
    ("authentication required", Cause.DENIED, "unauthorized"),
    ("authorization failed", Cause.DENIED, "unauthorized"),
    ("no basic auth credentials", Cause.DENIED, "unauthorized"),
    ("forbidden", Cause.DENIED, "forbidden"),
    ("denied", Cause.DENIED, "denied"),
    ("manifest unknown", Cause.NOT_FOUND, "manifest not found"),
    ("blob unknown", Cause.NOT_FOUND, "blob not found"),
    ("unknown blob", Cause.NOT_FOUND, "blob not found"),
    (": not found", Cause.NOT_FOUND, "not found"),
)


def _status(text: str) -> Verdict | None:
    """An HTTP status a registry answered with, as the runtimes quote it ("500 Internal Server Error")."""
    for match in _HTTP_STATUS.finditer(text):
        status = int(match.group(1))
        if status == 429:
            return Verdict(Cause.THROTTLED, "HTTP 429")
        if status >= 500:
            return Verdict(Cause.SERVER_ERROR, f"HTTP {status}")
        if status in (401, 403):
            return Verdict(Cause.DENIED, f"HTTP {status}")
        if status == 404:
            return Verdict(Cause.NOT_FOUND, "HTTP 404")
    return None


def classify(code: str, message: str) -> Verdict:
    """The verdict on a failed PullImage: `code` is the gRPC status name ("NOT_FOUND"),
    `message` the status details the runtime sent."""
    if code == "DEADLINE_EXCEEDED":
        return Verdict(Cause.DEADLINE, "deadline exceeded")
    if code == "CANCELLED":
        return Verdict(Cause.CANCELLED, "cancelled")
    text = message.lower().partition(_ARTIFACT)[0].strip()
    for phrase, cause, why in _NODE:
        if phrase in text:
            return Verdict(cause, why)
    if code == "UNKNOWN" and text == _CUT:
        return Verdict(Cause.CONNECTION, "connection closed mid-transfer")
    if not any(phrase in text for phrase in PULL_PHRASES):
        if code == "UNAVAILABLE":
            return Verdict(Cause.RUNTIME, "container runtime unavailable")
        return Verdict(Cause.UNKNOWN, "unrecognised error")
    status = _status(text)
    if status is not None:
        return status
    for phrase, cause, why in _REGISTRY:
        if phrase in text:
            return Verdict(cause, why)
    return Verdict(Cause.UNKNOWN, "unrecognised error")
