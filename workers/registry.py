"""Ask one registry (API v2) whether it holds a manifest, and remember whether it is up.

One `RegistryClient` per configured registry, for the life of a worker: it keeps a pooled
HTTP client (TLS settings of that registry), the auth scheme the registry asked for, Bearer
tokens until they expire, and the registry's health. A registry that is down (connection
error, timeout, 5xx) or throttling (429) is skipped for a backoff period, so it costs its
timeout once per period, and is asked again afterwards so traffic returns when it recovers.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import json
import platform
import re
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from image_cri_shim import logs
from image_cri_shim.config import Registry
from image_cri_shim.metrics import OFF
from image_cri_shim.reference import Reference
from image_cri_shim.workers.decisions import Answer, Probe

log = logs.get("registry")

# One deadline for the whole probe (redirects and token fetch included). httpx's read timeout
# alone restarts with every byte, so a server that trickles its headers would hold a probe forever.
PROBE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
BACKOFF_FIRST = 5.0
BACKOFF_MAX = 60.0
TOKEN_MIN_LIFETIME = 60.0
MAX_BODY = 4 << 20  # an index or a token is a few KiB; a bigger body is refused, never read whole
MAX_REDIRECTS = 5

INDEX_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
ACCEPT = ", ".join(sorted(INDEX_TYPES | MANIFEST_TYPES))

_GOARCH = {
    "x86_64": ("amd64", ""),
    "amd64": ("amd64", ""),
    "aarch64": ("arm64", ""),
    "arm64": ("arm64", ""),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", ""),
    "i686": ("386", ""),
    "ppc64le": ("ppc64le", ""),
    "s390x": ("s390x", ""),
    "riscv64": ("riscv64", ""),
}


@dataclass(frozen=True, slots=True)
class Platform:
    os: str
    architecture: str
    variant: str = ""

    def __str__(self) -> str:
        return "/".join(p for p in (self.os, self.architecture, self.variant) if p)

    def matches(self, entry: object) -> bool:
        """Whether an index entry's `platform` object describes this platform."""
        if not isinstance(entry, dict):
            return False
        if entry.get("os") != self.os or entry.get("architecture") != self.architecture:
            return False
        variant = entry.get("variant") or ""
        if self.architecture == "arm64":
            return variant in ("", "v8")
        return not self.variant or variant in ("", self.variant)


def node_platform() -> Platform:
    arch, variant = _GOARCH.get(platform.machine().lower(), (platform.machine().lower(), ""))
    return Platform("linux", arch, variant)


class _Unreachable(Exception):
    """The registry could not be asked: connection error, timeout, 5xx."""


class _TooLarge(Exception):
    """A body over MAX_BODY: the registry does not hold a usable manifest there."""


class _Throttled(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("HTTP 429")
        self.retry_after = retry_after


_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` -> ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    with contextlib.suppress(TypeError, ValueError):
        return max(0.0, email.utils.parsedate_to_datetime(value).timestamp() - time.time())
    return None


def api_url(registry: Registry) -> str:
    """Where the registry API of `registry` is served; Docker Hub's is not at its image domain."""
    if registry.domain in ("docker.io", "index.docker.io"):
        return f"{registry.scheme}://registry-1.docker.io"
    return registry.url


def _ssl_context(registry: Registry) -> ssl.SSLContext | bool:
    if registry.scheme != "https":
        return True
    if registry.insecure_skip_verify:
        return False
    return ssl.create_default_context(cafile=registry.ca) if registry.ca else ssl.create_default_context()


class RegistryClient:
    """Manifest probes against one registry, with its credentials, tokens and health."""

    def __init__(
        self,
        registry: Registry,
        node: Platform,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = PROBE_TIMEOUT,
        metrics: Any = OFF,
    ) -> None:
        self.registry = registry
        self.timeout = timeout  # the whole probe's deadline
        self._node = node
        self._clock = clock
        self._http = httpx.AsyncClient(
            base_url=api_url(registry),
            verify=_ssl_context(registry),
            timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
            follow_redirects=False,  # followed in _send, which never reads a redirect's body
            limits=httpx.Limits(max_connections=64, max_keepalive_connections=8, keepalive_expiry=60.0),
            transport=transport,
            # identity: a compressed body could expand far past MAX_BODY within one chunk
            headers={"User-Agent": "image-cri-shim", "Accept-Encoding": "identity"},
        )
        self._basic = ""
        if registry.has_credentials:
            raw = f"{registry.username}:{registry.password}".encode()
            self._basic = "Basic " + base64.b64encode(raw).decode()
            logs.register_secret(self._basic.split(" ", 1)[1])
        self._scheme = ""  # "basic" or "bearer" once the registry said which
        self._bearer: dict[str, str] = {}  # realm/service from the last Bearer challenge
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, expiry)
        self._down_until = 0.0
        self._failures = 0
        self._deadlines: set[asyncio.Timeout] = set()  # of the probes in flight
        self._probe_seconds = metrics.probe_seconds
        self._up = metrics.registry_up.labels(registry.domain)
        self._up.set(1)

    # -- health -----------------------------------------------------------------------------

    def available(self) -> bool:
        return self._clock() >= self._down_until

    def retry_in(self) -> float:
        """Seconds until this registry is asked again (0 when it is not backing off)."""
        return max(0.0, self._down_until - self._clock())

    def _mark_down(self, seconds: float | None = None) -> tuple[float, bool]:
        """Back off for `seconds` (or the next backoff step); (how long, whether it is news).

        Probes that fail together count as one failure, so the backoff grows per period and
        not per concurrent pull; the probes still in flight stop waiting now.
        """
        now = self._clock()
        if now < self._down_until:
            return self._down_until - now, False
        self._failures += 1
        if seconds is None:
            seconds = min(BACKOFF_FIRST * 2 ** (self._failures - 1), BACKOFF_MAX)
        self._down_until = now + seconds
        self._up.set(0)
        for deadline in self._deadlines:
            if not deadline.expired():
                deadline.reschedule(-1.0)
        return seconds, True

    def pull_failed(self, why: str, *, down: bool) -> None:
        """A pull through this registry failed for a cause of its own. A connection-level cause
        (`down`) backs it off as a failed probe does; a missing blob or a refusal does not."""
        if down:
            self._down(f"pull failed: {why}")

    def _mark_up(self) -> None:
        if self._failures:
            log.info("registry is reachable again", registry=self.registry.domain)
            self._up.set(1)
        self._failures = 0
        self._down_until = 0.0

    # -- probes -----------------------------------------------------------------------------

    async def holds(self, ref: Reference) -> Probe:
        """Whether this registry holds `ref` (its domain is ignored: the path and tag/digest count)."""
        if not self.available():
            return Probe(Answer.SKIPPED)
        started = time.monotonic()
        probe = await self._guarded(self._holds(ref))
        answer = probe.answer.name.lower()
        self._probe_seconds.labels(self.registry.domain, answer).observe(time.monotonic() - started)
        return probe

    async def ping(self) -> Probe:
        """GET /v2/ with the configured credentials (for --dry-run)."""
        return await self._guarded(self._ping())

    async def _guarded(self, probe: Coroutine[Any, Any, Probe]) -> Probe:
        try:
            async with asyncio.timeout(self.timeout) as deadline:
                self._deadlines.add(deadline)
                try:
                    result = await probe
                finally:
                    self._deadlines.discard(deadline)
        except TimeoutError:
            if not self.available():  # cut short: another probe found the registry down
                return Probe(Answer.SKIPPED, "another probe found it down")
            return self._down(f"no answer within {self.timeout:g}s")
        except _Throttled as err:
            seconds, _ = self._mark_down(err.retry_after)
            return Probe(Answer.THROTTLED, f"HTTP 429, skipped for {seconds:g}s")
        except _Unreachable as err:
            return self._down(str(err))
        except _TooLarge as err:
            return Probe(Answer.NOT_FOUND, str(err))
        except (httpx.TransportError, ssl.SSLError, OSError) as err:
            return self._down(_describe(err))
        self._mark_up()
        return result

    def _down(self, why: str) -> Probe:
        seconds, news = self._mark_down()
        if news:
            log.warning(
                "registry unreachable", registry=self.registry.domain, error=why, retry_in=f"{seconds:g}s"
            )
        return Probe(Answer.UNREACHABLE, why)

    async def _ping(self) -> Probe:
        response = await self._request("GET", "/v2/", scope="")
        if response.status_code == 200:
            return Probe(Answer.FOUND, "HTTP 200" + (", authenticated" if self._basic else ""))
        return self._classify(response)

    async def _holds(self, ref: Reference) -> Probe:
        url = f"/v2/{ref.path}/manifests/{ref.manifest_ref}"
        scope = f"repository:{ref.path}:pull"
        response = await self._request("HEAD", url, scope)
        if response.status_code == 405:  # a registry without HEAD support
            response = await self._request("GET", url, scope)
        if response.status_code != 200:
            return self._classify(response)
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type in INDEX_TYPES:
            return await self._check_index(url, scope)
        return Probe(Answer.FOUND, media_type or "manifest")

    async def _check_index(self, url: str, scope: str) -> Probe:
        response = await self._request("GET", url, scope, body="index")
        if response.status_code != 200:
            return self._classify(response)
        try:
            manifests = json.loads(response.content).get("manifests", [])
        except (ValueError, AttributeError):
            return Probe(Answer.NOT_FOUND, "index is not valid JSON")
        if any(isinstance(m, dict) and self._node.matches(m.get("platform")) for m in manifests):
            return Probe(Answer.FOUND, f"index lists {self._node}")
        return Probe(Answer.NO_PLATFORM, f"index does not list {self._node}")

    def _classify(self, response: httpx.Response) -> Probe:
        status = response.status_code
        if status == 404:
            return Probe(Answer.NOT_FOUND)
        if status in (401, 403):
            return Probe(Answer.DENIED, f"HTTP {status}")
        return Probe(Answer.NOT_FOUND, f"HTTP {status}")

    # -- HTTP with auth -----------------------------------------------------------------------

    async def _request(self, method: str, url: str, scope: str, body: str = "") -> httpx.Response:
        """One request, answering an auth challenge once; raises _Unreachable/_Throttled.

        `body` names what is read (at most MAX_BODY of it); without it the body is never read.
        """
        response = await self._send(method, url, self._auth_header(scope), body)
        if response.status_code == 401:
            header = await self._answer_challenge(response.headers.get("www-authenticate", ""), scope)
            if header:
                response = await self._send(method, url, header, body)
        if response.status_code == 429:
            raise _Throttled(_retry_after(response.headers.get("retry-after")))
        if response.status_code >= 500:
            raise _Unreachable(f"HTTP {response.status_code}")
        return response

    async def _send(self, method: str, url: str, auth: str, body: str = "") -> httpx.Response:
        """Send, following redirects here: httpx would read each redirect's body whole."""
        headers = {"Accept": ACCEPT}
        if auth:
            headers["Authorization"] = auth
        request = self._http.build_request(method, url, headers=headers)
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._http.send(request, stream=True)
            try:
                if response.next_request is None:
                    if body and response.status_code == 200:
                        set_body(response, await _read_bounded(response, body))
                    return response
                # httpx drops Authorization when a redirect leaves the registry's origin.
                request = response.next_request
            finally:
                await response.aclose()
        raise _Unreachable(f"redirect loop (more than {MAX_REDIRECTS} redirects)")

    def _auth_header(self, scope: str) -> str:
        if self._scheme == "basic":
            return self._basic
        if self._scheme == "bearer":
            token = self._tokens.get(scope)
            if token and token[1] > self._clock():
                return "Bearer " + token[0]
        return ""

    async def _answer_challenge(self, header: str, scope: str) -> str:
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            self._scheme = "basic"
            return self._basic
        if scheme == "bearer" and params.get("realm"):
            self._scheme = "bearer"
            self._bearer = params
            return await self._fetch_token(scope)
        return ""

    async def _fetch_token(self, scope: str) -> str:
        realm = httpx.URL(self._bearer["realm"])
        query = {"service": self._bearer.get("service", "")}
        if scope:
            query["scope"] = scope
        try:
            response = await self._send("GET", str(realm.copy_merge_params(query)), self._basic, "token")
        except httpx.TransportError as err:
            raise _Unreachable(f"token endpoint {realm.netloc.decode()}: {_describe(err)}") from err
        except _TooLarge as err:
            log.warning("token endpoint answer refused", registry=self.registry.domain, error=str(err))
            return ""
        if response.status_code == 429:
            raise _Throttled(_retry_after(response.headers.get("retry-after")))
        if response.status_code >= 500:
            raise _Unreachable(f"token endpoint: HTTP {response.status_code}")
        if response.status_code != 200:
            return ""
        try:
            answer = response.json()
            token = answer.get("token") or answer.get("access_token")
            lifetime = float(answer.get("expires_in") or TOKEN_MIN_LIFETIME)
        except (ValueError, AttributeError, TypeError):
            log.warning("token endpoint returned invalid JSON", registry=self.registry.domain)
            return ""
        if not isinstance(token, str) or not token:
            return ""
        logs.register_secret(token)
        # Renew a little early so a token never expires between the check and its use.
        self._tokens[scope] = (token, self._clock() + max(lifetime, TOKEN_MIN_LIFETIME) - 10.0)
        if len(self._tokens) > 1024:
            self._tokens.pop(next(iter(self._tokens)))
        return "Bearer " + token

    async def aclose(self) -> None:
        await self._http.aclose()


def set_body(response: httpx.Response, body: bytes) -> None:
    """Make `body`, read here within a bound, the body of a streamed `response` (`.content`,
    `.json()`), without httpx reading it again. httpx has no public way to do that, so this is
    its one use of the private `_content`; pyproject.toml bounds httpx below its next minor and
    tests/unit/test_private_apis.py fails on a release that stops honouring it."""
    response._content = body


async def _read_bounded(response: httpx.Response, what: str) -> bytes:
    """The body, or _TooLarge as soon as it is known to exceed MAX_BODY (never read whole)."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise _TooLarge(f"{what} larger than {MAX_BODY >> 20} MiB")
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY:
            raise _TooLarge(f"{what} larger than {MAX_BODY >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def _describe(err: BaseException) -> str:
    """A short readable reason for a transport error (httpx messages can be empty)."""
    text = str(err) or type(err).__name__
    cause = err.__cause__ or err.__context__
    while cause is not None and not str(err):
        text = str(cause) or type(cause).__name__
        cause = cause.__cause__
    if isinstance(err, httpx.ConnectTimeout | httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
        return f"timeout ({type(err).__name__})"
    return logs.redact(text.splitlines()[0] if text else type(err).__name__)
