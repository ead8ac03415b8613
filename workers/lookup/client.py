"""Ask one registry (API v2) whether it holds a manifest, and remember whether it is up
(docs/behaviour.md, "How a registry is chosen").

One `RegistryClient` per configured registry, for the life of a worker: it keeps a pooled
HTTP client (TLS settings of that registry, `transport`), the auth scheme the registry asked
for and its Bearer tokens (`auth`), and the registry's health (`health`). A registry that is
down (connection error, timeout, 5xx) or throttling (429) is skipped for a backoff period, so
it costs its timeout once per period, and is asked again afterwards so traffic returns when it
recovers.
"""

from __future__ import annotations

import asyncio
import json
import platform
import ssl
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx

from image_cri_shim import logs
from image_cri_shim.config import Registry
from image_cri_shim.metrics import WORKER_OFF, WorkerMetrics
from image_cri_shim.reference import Reference
from image_cri_shim.workers.lookup import transport as wire
from image_cri_shim.workers.lookup.auth import Auth, RealmRefused, TokenRequest
from image_cri_shim.workers.lookup.decisions import Answer, Probe
from image_cri_shim.workers.lookup.health import Health
from image_cri_shim.workers.lookup.transport import PROBE_TIMEOUT, Throttled, TooLarge, Unreachable, describe

log = logs.get("registry")

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


class RegistryClient:
    """Manifest probes against one registry, with its credentials, tokens and health."""

    def __init__(
        self,
        registry: Registry,
        node: Platform,
        clock: Callable[[], float] = time.monotonic,
        transport: httpx.AsyncBaseTransport | None = None,
        timeout: float = PROBE_TIMEOUT,
        metrics: WorkerMetrics = WORKER_OFF,
    ) -> None:
        self.registry = registry
        self.timeout = timeout  # the whole probe's deadline
        self._node = node
        self._http = wire.client(registry, timeout, transport)
        self._auth = Auth(registry, clock)
        self._health = Health(clock)
        self._deadlines: set[asyncio.Timeout] = set()  # of the probes in flight
        self._probe_seconds = metrics.probe_seconds
        self._up = metrics.registry_up.labels(registry.domain)
        self._up.set(1)

    # -- health -----------------------------------------------------------------------------

    def available(self) -> bool:
        return self._health.available()

    def retry_in(self) -> float:
        """Seconds until this registry is asked again (0 when it is not backing off)."""
        return self._health.retry_in()

    def _mark_down(self, seconds: float | None = None) -> tuple[float, bool]:
        """Back off (`Health.failed`); when that is news, the probes still in flight stop
        waiting now."""
        seconds, news = self._health.failed(seconds)
        if news:
            self._up.set(0)
            for deadline in self._deadlines:
                if not deadline.expired():
                    deadline.reschedule(-1.0)
        return seconds, news

    def pull_failed(self, why: str, *, down: bool) -> None:
        """A pull through this registry failed for a cause of its own. A connection-level cause
        (`down`) backs it off as a failed probe does; a missing blob or a refusal does not."""
        if down:
            self._down(f"pull failed: {why}")

    def _mark_up(self) -> None:
        if self._health.succeeded():
            log.info("registry is reachable again", registry=self.registry.domain)
            self._up.set(1)

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
        except Throttled as err:
            seconds, _ = self._mark_down(err.retry_after)
            return Probe(Answer.THROTTLED, f"HTTP 429, skipped for {seconds:g}s")
        except Unreachable as err:
            return self._down(str(err))
        except TooLarge as err:
            return Probe(Answer.NOT_FOUND, str(err))
        except RealmRefused as err:
            log.warning("token realm refused", registry=self.registry.domain, reason=str(err))
            return Probe(Answer.DENIED, str(err))
        except (httpx.TransportError, ssl.SSLError, OSError) as err:
            return self._down(describe(err))
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
            return Probe(Answer.FOUND, "HTTP 200" + (", authenticated" if self._auth.basic else ""))
        return classify(response.status_code)

    async def _holds(self, ref: Reference) -> Probe:
        url = f"/v2/{ref.path}/manifests/{ref.manifest_ref}"
        scope = f"repository:{ref.path}:pull"
        response = await self._request("HEAD", url, scope)
        if response.status_code == 405:  # a registry without HEAD support
            response = await self._request("GET", url, scope)
        if response.status_code != 200:
            return classify(response.status_code)
        media_type = response.headers.get("content-type", "").split(";")[0].strip()
        if media_type in INDEX_TYPES:
            return await self._check_index(url, scope)
        return Probe(Answer.FOUND, media_type or "manifest")

    async def _check_index(self, url: str, scope: str) -> Probe:
        response = await self._request("GET", url, scope, body="index")
        if response.status_code != 200:
            return classify(response.status_code)
        return listed(response.content, self._node)

    # -- HTTP with auth -----------------------------------------------------------------------

    async def _request(self, method: str, url: str, scope: str, body: str = "") -> httpx.Response:
        """One request, answering an auth challenge once; raises Unreachable/Throttled.

        `body` names what is read (at most MAX_BODY of it); without it the body is never read.
        """
        response = await self._send(method, url, self._auth.header(scope), body)
        if response.status_code == 401:
            header = await self._answer_challenge(response.headers.get("www-authenticate", ""), scope)
            if header:
                response = await self._send(method, url, header, body)
        _raise_for_health(response, "")
        return response

    async def _send(self, method: str, url: str, auth: str, body: str = "") -> httpx.Response:
        headers = {"Accept": ACCEPT}
        if auth:
            headers["Authorization"] = auth
        return await wire.send(self._http, method, url, headers, body)

    async def _answer_challenge(self, header: str, scope: str) -> str:
        step = self._auth.challenged(header, scope)
        return await self._fetch_token(step, scope) if isinstance(step, TokenRequest) else step

    async def _fetch_token(self, where: TokenRequest, scope: str) -> str:
        try:
            response = await self._send("GET", where.url, self._auth.basic, "token")
        except httpx.TransportError as err:
            raise Unreachable(f"token endpoint {where.host}: {describe(err)}") from err
        except TooLarge as err:
            log.warning("token endpoint answer refused", registry=self.registry.domain, error=str(err))
            return ""
        _raise_for_health(response, "token endpoint: ")
        if response.status_code != 200:
            return ""
        try:
            return self._auth.token(scope, response.json())
        except ValueError:
            log.warning("token endpoint returned invalid JSON", registry=self.registry.domain)
            return ""

    async def aclose(self) -> None:
        await self._http.aclose()


def _raise_for_health(response: httpx.Response, what: str) -> None:
    """429 is Throttled (with its Retry-After), 5xx Unreachable: the registry is backed off."""
    if response.status_code == 429:
        raise Throttled(wire.retry_after(response.headers.get("retry-after")))
    if response.status_code >= 500:
        raise Unreachable(f"{what}HTTP {response.status_code}")


def classify(status: int) -> Probe:
    """A manifest request's answer other than 200 (429 and 5xx are the registry's health)."""
    if status == 404:
        return Probe(Answer.NOT_FOUND)
    if status in (401, 403):
        return Probe(Answer.DENIED, f"HTTP {status}")
    return Probe(Answer.NOT_FOUND, f"HTTP {status}")


def listed(body: bytes, node: Platform) -> Probe:
    """Whether an index (its JSON `body`) lists a manifest for `node`."""
    try:
        manifests = json.loads(body).get("manifests", [])
    except (ValueError, AttributeError):
        return Probe(Answer.NOT_FOUND, "index is not valid JSON")
    if any(isinstance(m, dict) and node.matches(m.get("platform")) for m in manifests):
        return Probe(Answer.FOUND, f"index lists {node}")
    return Probe(Answer.NO_PLATFORM, f"index does not list {node}")
