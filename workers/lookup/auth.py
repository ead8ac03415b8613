"""How to authenticate to one registry: the challenge it answered with,, and the credentials to
answer it with (Basic from the config, or Bearer tokens kept until they expire), and which token
realms may have the credentials (docs/behaviour.md, "Credentials").

No I/O here: the registry client sends the requests; this decides the Authorization header,
where to ask for a token, and what to keep from the token endpoint's answer. Every credential
is registered with `logs` before it can reach a line.
"""

from __future__ import annotations

import base64
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from image_cri_shim import logs
from image_cri_shim.config import Registry

TOKEN_MIN_LIFETIME = 60.0
TOKEN_EARLY = 10.0  # renewed this much early, so a token never expires between check and use
MAX_TOKENS = 1024  # scopes kept per registry; the oldest goes first

_CHALLENGE_PARAM = re.compile(r'(\w+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,]+))')


def parse_challenge(header: str) -> tuple[str, dict[str, str]]:
    """`Bearer realm="…",service="…"` -> ("bearer", {"realm": …, "service": …})."""
    scheme, _, rest = header.strip().partition(" ")
    params = {
        m.group(1).lower(): m.group(2) if m.group(2) is not None else m.group(3)
        for m in _CHALLENGE_PARAM.finditer(rest)
    }
    return scheme.lower(), params


def read_token(answer: object) -> tuple[str, float] | None:
    """(token, lifetime in seconds) from a token endpoint's JSON answer, or None if it has none;
    ValueError if the answer is no token endpoint's."""
    if not isinstance(answer, dict):
        raise ValueError("not a JSON object")
    token = answer.get("token") or answer.get("access_token")
    try:
        lifetime = float(answer.get("expires_in") or TOKEN_MIN_LIFETIME)
    except TypeError:
        raise ValueError("expires_in is not a number") from None
    if not isinstance(token, str) or not token:
        return None
    return token, max(lifetime, TOKEN_MIN_LIFETIME)


class Tokens:
    """Bearer tokens by scope, each until shortly before it expires."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._tokens: dict[str, tuple[str, float]] = {}  # scope -> (token, renew at)

    def get(self, scope: str) -> str | None:
        kept = self._tokens.get(scope)
        return kept[0] if kept is not None and kept[1] > self._clock() else None

    def put(self, scope: str, token: str, lifetime: float) -> None:
        self._tokens[scope] = (token, self._clock() + lifetime - TOKEN_EARLY)
        if len(self._tokens) > MAX_TOKENS:
            self._tokens.pop(next(iter(self._tokens)))

    def __len__(self) -> int:
        return len(self._tokens)


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """Where to ask for a token: the realm's URL with service and scope."""

    url: str
    host: str  # the realm's host, for an error message


def token_request(realm: str, query: Mapping[str, str]) -> TokenRequest:
    """The realm's URL with `query` merged into its own query (a realm may carry parameters)."""
    parts = urlsplit(realm)
    merged = {**dict(parse_qsl(parts.query, keep_blank_values=True)), **query}
    url = urlunsplit(parts._replace(query=urlencode(merged)))
    return TokenRequest(url, parts.netloc.rpartition("@")[2])


class RealmRefused(Exception):
    """A Bearer realm the registry's credentials must not go to: the reason, in one line."""


def realm_refusal(registry_scheme: str, realm: str, credentials: bool) -> str | None:
    """Why the credentials of a registry reached over `registry_scheme` must not be sent to the
    Bearer `realm` it named (None: they may). An https registry's credentials never cross the
    network in clear: a plain-http realm gets them only from a registry that is itself plain
    http (its password already goes in clear to the registry). A realm that is no http(s) URL
    is never asked. Without credentials nothing can leak, so any http(s) realm is asked."""
    parts = urlsplit(realm)
    scheme = parts.scheme.lower()
    host = parts.netloc.rpartition("@")[2]
    if scheme not in ("http", "https") or not host:
        return "token realm is not an http(s) URL"
    if credentials and scheme == "http" and registry_scheme == "https":
        return f"token realm http://{host} is plain http for an https registry: credentials not sent"
    return None


class Auth:
    """One registry's auth state: which scheme it asked for, its Bearer realm, the tokens."""

    def __init__(self, registry: Registry, clock: Callable[[], float] = time.monotonic) -> None:
        self.basic = ""
        if registry.has_credentials:
            raw = f"{registry.username}:{registry.password}".encode()
            secret = base64.b64encode(raw).decode()
            logs.register_secret(secret)
            self.basic = "Basic " + secret
        self._scheme = ""  # "basic" or "bearer" once the registry said which
        self._registry_scheme = registry.scheme
        self.tokens = Tokens(clock)

    def header(self, scope: str) -> str:
        """The Authorization header to send before any challenge ("" for none)."""
        if self._scheme == "basic":
            return self.basic
        if self._scheme == "bearer":
            token = self.tokens.get(scope)
            if token is not None:
                return "Bearer " + token
        return ""

    def challenged(self, header: str, scope: str) -> str | TokenRequest:
        """A 401's WWW-Authenticate: the header to try again with ("" for none), or where to ask
        for a Bearer token first; RealmRefused for a realm the credentials must not go to."""
        scheme, params = parse_challenge(header)
        if scheme == "basic":
            self._scheme = "basic"
            return self.basic
        if scheme == "bearer" and params.get("realm"):
            refusal = realm_refusal(self._registry_scheme, params["realm"], bool(self.basic))
            if refusal is not None:
                raise RealmRefused(refusal)
            self._scheme = "bearer"
            query = {"service": params.get("service", "")}
            if scope:
                query["scope"] = scope
            return token_request(params["realm"], query)
        return ""

    def token(self, scope: str, answer: object) -> str:
        """Keep the token of the endpoint's JSON `answer` for `scope`; the header to use ("" if
        none). ValueError if the answer is no token endpoint's."""
        read = read_token(answer)
        if read is None:
            return ""
        token, lifetime = read
        logs.register_secret(token)
        self.tokens.put(scope, token, lifetime)
        return "Bearer " + token
