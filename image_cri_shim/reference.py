"""Container image references, parsed and normalized as the distribution reference grammar does
(what that means for a pull: docs/behaviour.md, "Which names are rewritten").

The shim must read an image name exactly as containerd and kubelet read it, otherwise it would probe
(and rewrite to) a repository other than the one the pod asked for. The rules follow
``ParseNormalizedNamed`` followed by ``TagNameOnly`` in github.com/distribution/reference:

* the first path component is a registry domain iff it contains ``.`` or ``:`` or is ``localhost``;
  otherwise the domain is ``docker.io``;
* ``index.docker.io`` is the legacy spelling of ``docker.io``; a single-component Docker Hub path gets the
  ``library/`` namespace (``nginx`` -> ``docker.io/library/nginx``);
* a reference with neither tag nor digest gets the tag ``latest``; ``name:tag@digest`` keeps both;
* digests are checked as containerd's digest library checks them: ``sha256``, ``sha384`` and ``sha512``
  with lower-case hex of the algorithm's length; any other algorithm is unsupported.

Three inputs the Go parser accepts are refused, because the shim could only misuse them: an image ID
(``sha256:<64 hex>`` reads as ``docker.io/library/sha256`` with a tag), a first component that looks
like a host but is not a valid host name (``a_b.io/x``, which Go turns into a reference with no domain),
and a first component with an upper-case letter but no ``.`` or ``:`` (``Foo/bar``: Go reads the host
``Foo``; by the rule above it is a Docker Hub path, and upper case is invalid in a path). An image name
that does not parse goes to the runtime as the caller sent it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

__all__ = [
    "Reference",
    "ReferenceError",
    "is_host_name",
    "is_image_id",
    "is_path_prefix",
    "normalize_prefix",
    "parse",
]

DEFAULT_DOMAIN = "docker.io"
LEGACY_DEFAULT_DOMAIN = "index.docker.io"
OFFICIAL_REPO_PREFIX = "library/"
DEFAULT_TAG = "latest"
NAME_TOTAL_LENGTH_MAX = 255

# Grammar atoms, spelled out in ASCII classes: Python's \w and \d would accept non-ASCII letters and
# digits, which the Go grammar does not.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|-+)"
_PATH_COMPONENT = _ALNUM + r"(?:" + _SEPARATOR + _ALNUM + r")*"
_REMOTE_NAME = _PATH_COMPONENT + r"(?:/" + _PATH_COMPONENT + r")*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN_NAME = _DOMAIN_COMPONENT + r"(?:\." + _DOMAIN_COMPONENT + r")*"
_IPV6 = r"\[[a-fA-F0-9:]+\]"
_DOMAIN_AND_PORT = r"(?:" + _DOMAIN_NAME + r"|" + _IPV6 + r")(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_DOMAIN_RE = re.compile(_DOMAIN_AND_PORT)
_DOMAIN_NAME_RE = re.compile(_DOMAIN_NAME)
_PATH_COMPONENT_RE = re.compile(_PATH_COMPONENT)
_REMAINDER_RE = re.compile(r"(" + _REMOTE_NAME + r")(?::(" + _TAG + r"))?(?:@(" + _DIGEST + r"))?")
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_IDENTIFIER_RE = re.compile(r"(?:sha256:)?[a-f0-9]{64}")

# Digest algorithms containerd can verify, with the length of their lower-case hex encoding.
_DIGEST_HEX_LENGTH = {"sha256": 64, "sha384": 96, "sha512": 128}
_LOWER_HEX_RE = re.compile(r"[a-f0-9]+")

# No valid reference is longer than a maximal name spelled with the legacy domain (six characters
# longer than its normalized form), ":" + a maximal tag and "@sha512:" + 128 hex. Rejecting longer
# text up front also bounds the regex work on hostile input.
_TEXT_LENGTH_MAX = (
    NAME_TOTAL_LENGTH_MAX
    + len(LEGACY_DEFAULT_DOMAIN)
    - len(DEFAULT_DOMAIN)
    + 1
    + 128
    + 1
    + len("sha512:")
    + 128
)


class ReferenceError(ValueError):
    """Not a valid image reference; str() says why in a few words.

    (It shadows the builtin weakref ReferenceError inside this module's namespace only.)
    """


@dataclass(frozen=True, slots=True)
class Reference:
    """A normalized image reference; immutable so parse results can be cached and shared."""

    domain: str
    path: str
    tag: str | None
    digest: str | None

    @property
    def name(self) -> str:
        """Registry domain and repository path: the repository's full name."""
        return f"{self.domain}/{self.path}"

    def __str__(self) -> str:
        text = f"{self.domain}/{self.path}"
        if self.tag is not None:
            text = f"{text}:{self.tag}"
        if self.digest is not None:
            text = f"{text}@{self.digest}"
        return text

    def with_domain(self, domain: str) -> Reference:
        """The same image on another registry.

        The domain is normalized as parse would (``index.docker.io`` -> ``docker.io``, ``library/`` for a
        one-component Docker Hub path), so that str() of the result names that image to containerd too.
        A domain that containerd would read as a path component instead (``registry`` with no dot or
        port) is refused rather than silently meaning a Docker Hub repository.
        """
        if not _is_domain(domain) or _DOMAIN_RE.fullmatch(domain) is None:
            raise ReferenceError("invalid registry domain")
        path = self.path
        if domain == LEGACY_DEFAULT_DOMAIN:
            domain = DEFAULT_DOMAIN
        if domain == DEFAULT_DOMAIN and "/" not in path:
            path = OFFICIAL_REPO_PREFIX + path
        if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
            raise ReferenceError("repository name too long")
        return Reference(domain, path, self.tag, self.digest)

    @property
    def manifest_ref(self) -> str:
        """What to ask ``/v2/<path>/manifests/<ref>`` for: the digest pins the content, so it wins."""
        return self.digest or self.tag or DEFAULT_TAG

    def digest_form(self, digest: str) -> str:
        """``name@digest``: how the runtime spells an image in ``repo_digests``."""
        return f"{self.domain}/{self.path}@{digest}"


def is_image_id(text: str) -> bool:
    """True for an image ID (``sha256:<64 hex>`` or bare 64 hex) as kubelet's image GC sends it.

    Image IDs name content on the node, not a repository: they must never be parsed or rewritten.
    """
    return len(text) in (64, 71) and _IDENTIFIER_RE.fullmatch(text) is not None


def parse(text: str) -> Reference:
    """Parse and normalize an image reference; raise ReferenceError if it is not one.

    Cached: kubelet polls the same few names on every ImageStatus call, and results are immutable.
    """
    return _parse_cached(text)


def normalize_prefix(text: str) -> str:
    """A routing rule's source prefix (``docker.io``, ``quay.io/cilium``) in normalized form.

    A prefix names a group of repositories, so it is matched against normalized names: it must start
    with a registry domain (``nginx`` alone would be a Docker Hub name, which the rule cannot mean) and
    carry no tag or digest. ``index.docker.io`` is spelled ``docker.io``, as in references, and the
    domain is lower-cased (host names are case-insensitive; image names spell them in lower case).
    """
    first, _, rest = text.partition("/")
    if not _is_domain(first):
        raise ReferenceError("a source prefix starts with a domain, e.g. docker.io/library/nginx")
    if _DOMAIN_RE.fullmatch(first) is None:
        raise ReferenceError("the domain before the first '/' is not a valid host name")
    if "@" in rest or ":" in rest:
        raise ReferenceError("a source prefix names repositories: no tag or digest")
    if rest and not is_path_prefix(rest):
        raise ReferenceError(
            "after the domain come repository path components (lower-case letters, digits, '.', '_', '-')"
        )
    domain = first.lower()
    domain = DEFAULT_DOMAIN if domain == LEGACY_DEFAULT_DOMAIN else domain
    prefix = f"{domain}/{rest}" if rest else domain
    if len(prefix) > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError("source prefix too long")
    return prefix


def is_path_prefix(text: str) -> bool:
    """Whether `text` is one or more whole repository path components (``dockerhub``, ``mirror/quay``)."""
    return 0 < len(text) <= NAME_TOTAL_LENGTH_MAX and all(
        _PATH_COMPONENT_RE.fullmatch(part) is not None for part in text.split("/")
    )


def is_host_name(text: str) -> bool:
    """Whether `text` is a host name as the grammar spells a registry's (no port, no IPv6 literal).

    The config checks registry addresses with it, so a configured domain is one a rewritten
    reference can carry.
    """
    return _DOMAIN_NAME_RE.fullmatch(text) is not None


def _is_domain(component: str) -> bool:
    """Whether a first path component names a registry (not Go's upper-case rule: see above)."""
    return "." in component or ":" in component or component == "localhost"


def _parse(text: str) -> Reference:
    if not text:
        raise ReferenceError("empty reference")
    if len(text) > _TEXT_LENGTH_MAX:
        raise ReferenceError("reference too long")
    if is_image_id(text):
        # A bare 64-hex string is rejected by the grammar itself; "sha256:<hex>" would parse as
        # docker.io/library/sha256 with a tag, which is never what a caller sending an ID means.
        raise ReferenceError("image ID, not a reference")

    first, slash, rest = text.partition("/")
    if not slash:
        domain, remainder = DEFAULT_DOMAIN, OFFICIAL_REPO_PREFIX + text
    elif first == LEGACY_DEFAULT_DOMAIN:
        domain, remainder = DEFAULT_DOMAIN, rest
    elif _is_domain(first):
        if _DOMAIN_RE.fullmatch(first) is None:
            # Where this component is still a valid path component ("a_b.io/x") the Go parser falls
            # back to a reference with an empty domain; a reference with no registry is of no use
            # here, so it is refused like any other malformed domain.
            raise ReferenceError("invalid registry domain")
        domain, remainder = first, rest
    else:
        domain, remainder = DEFAULT_DOMAIN, text
    if domain == DEFAULT_DOMAIN and "/" not in remainder:
        remainder = OFFICIAL_REPO_PREFIX + remainder

    remote = remainder.partition(":")[0]
    if remote.lower() != remote:
        raise ReferenceError("repository name must be lowercase")

    match = _REMAINDER_RE.fullmatch(remainder)
    if match is None:
        raise ReferenceError(_diagnose(remainder))

    path, tag, digest = match.group(1, 2, 3)
    if len(domain) + 1 + len(path) > NAME_TOTAL_LENGTH_MAX:
        raise ReferenceError("repository name too long")
    if digest is not None:
        _check_digest(digest)
    elif tag is None:
        tag = DEFAULT_TAG
    return Reference(domain, path, tag, digest)


_parse_cached = lru_cache(maxsize=4096)(_parse)


def _check_digest(digest: str) -> None:
    """Accept only digests containerd can verify: a known algorithm and its exact lower-case hex."""
    algorithm, _, encoded = digest.partition(":")
    length = _DIGEST_HEX_LENGTH.get(algorithm)
    if length is None:
        raise ReferenceError("unsupported digest algorithm")
    if len(encoded) != length:
        raise ReferenceError("invalid digest length")
    if _LOWER_HEX_RE.fullmatch(encoded) is None:
        raise ReferenceError("invalid digest format")


def _diagnose(remainder: str) -> str:
    """Say which part of a reference that failed the grammar is wrong (only runs on failure)."""
    name_and_tag, at, digest = remainder.partition("@")
    if at and _DIGEST_RE.fullmatch(digest) is None:
        return "invalid digest"
    path, colon, tag = name_and_tag.partition(":")
    if colon and _TAG_RE.fullmatch(tag) is None:
        return "invalid tag"
    if any(_PATH_COMPONENT_RE.fullmatch(component) is None for component in path.split("/")):
        return "invalid repository name"
    return "invalid reference format"
