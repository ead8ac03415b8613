"""HTTP to one registry: the pooled client with that registry's TLS settings, redirects followed
without reading their bodies, bodies read within a bound, and errors in a few words.

Only the bytes on the wire are handled here; what a status means is the registry client's
(`registry.py`), and the auth headers come from `auth.py`.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import ssl
import time

import httpx

from image_cri_shim import logs
from image_cri_shim.config import Registry

# One deadline for the whole probe (redirects and token fetch included). httpx's read timeout
# alone restarts with every byte, so a server that trickles its headers would hold a probe forever.
PROBE_TIMEOUT = 5.0
CONNECT_TIMEOUT = 3.0
MAX_BODY = 4 << 20  # an index or a token is a few KiB; a bigger body is refused, never read whole
MAX_REDIRECTS = 5
CA_FILE_ENV = "SSL_CERT_FILE"  # read by httpx and OpenSSL for every TLS context they make


class Unreachable(Exception):
    """The registry could not be asked: connection error, timeout, 5xx."""


class TooLarge(Exception):
    """A body over MAX_BODY: the registry does not hold a usable manifest there."""


class Throttled(Exception):
    def __init__(self, retry_after: float | None) -> None:
        super().__init__("HTTP 429")
        self.retry_after = retry_after


class TLSSetupError(Exception):
    """The TLS settings cannot be loaded (one line for the operator: which setting, which path)."""


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); None if it says nothing."""
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


def check_ca_file() -> None:
    """`SSL_CERT_FILE`, when set, must name a readable file: httpx would fail on it with a bare
    FileNotFoundError deep inside its client, naming neither the variable nor the path."""
    path = os.environ.get(CA_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "rb"):
            pass
    except OSError as err:
        raise TLSSetupError(f"{CA_FILE_ENV}={path} (environment): {err.strerror or err}") from None


def ssl_context(registry: Registry) -> ssl.SSLContext | bool:
    check_ca_file()
    if registry.scheme != "https":
        return True
    if registry.insecure_skip_verify:
        return False
    try:
        return ssl.create_default_context(cafile=registry.ca) if registry.ca else ssl.create_default_context()
    except (OSError, ssl.SSLError) as err:
        raise TLSSetupError(f"{registry.domain}: ca {registry.ca}: {err.strerror or err}") from None


def client(
    registry: Registry, timeout: float, transport: httpx.AsyncBaseTransport | None
) -> httpx.AsyncClient:
    """A pooled client for one registry (raises TLSSetupError)."""
    return httpx.AsyncClient(
        base_url=api_url(registry),
        verify=ssl_context(registry),
        timeout=httpx.Timeout(timeout, connect=min(CONNECT_TIMEOUT, timeout)),
        follow_redirects=False,  # followed in `send`, which never reads a redirect's body
        limits=httpx.Limits(max_connections=64, max_keepalive_connections=8, keepalive_expiry=60.0),
        transport=transport,
        # identity: a compressed body could expand far past MAX_BODY within one chunk
        headers={"User-Agent": "image-cri-shim", "Accept-Encoding": "identity"},
    )


async def send(
    http: httpx.AsyncClient, method: str, url: str, headers: dict[str, str], body: str = ""
) -> httpx.Response:
    """Send, following redirects here: httpx would read each redirect's body whole. `body`
    names what is read (at most MAX_BODY of it); without it the body is never read."""
    request = http.build_request(method, url, headers=headers)
    for _ in range(MAX_REDIRECTS + 1):
        response = await http.send(request, stream=True)
        try:
            if response.next_request is None:
                if body and response.status_code == 200:
                    set_body(response, await read_bounded(response, body))
                return response
            # httpx drops Authorization when a redirect leaves the registry's origin.
            request = response.next_request
        finally:
            await response.aclose()
    raise Unreachable(f"redirect loop (more than {MAX_REDIRECTS} redirects)")


def set_body(response: httpx.Response, body: bytes) -> None:
    """Make `body`, read here within a bound, the body of a streamed `response` (`.content`,
    `.json()`), without httpx reading it again. httpx has no public way to do that, so this is
    its one use of the private `_content`; pyproject.toml bounds httpx below its next minor and
    tests/unit/test_private_apis.py fails on a release that stops honouring it."""
    response._content = body


async def read_bounded(response: httpx.Response, what: str) -> bytes:
    """The body, or TooLarge as soon as it is known to exceed MAX_BODY (never read whole)."""
    length = response.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise TooLarge(f"{what} larger than {MAX_BODY >> 20} MiB")
    chunks = []
    size = 0
    async for chunk in response.aiter_bytes():
        size += len(chunk)
        if size > MAX_BODY:
            raise TooLarge(f"{what} larger than {MAX_BODY >> 20} MiB")
        chunks.append(chunk)
    return b"".join(chunks)


def describe(err: BaseException) -> str:
    """A short readable reason for a transport error (httpx messages can be empty)."""
    text = str(err) or type(err).__name__
    cause = err.__cause__ or err.__context__
    while cause is not None and not str(err):
        text = str(cause) or type(cause).__name__
        cause = cause.__cause__
    if isinstance(err, httpx.ConnectTimeout | httpx.ReadTimeout | httpx.WriteTimeout | httpx.PoolTimeout):
        return f"timeout ({type(err).__name__})"
    return logs.redact(text.splitlines()[0] if text else type(err).__name__)
