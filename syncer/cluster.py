"""Which cluster credentials the syncer uses: the first that works (docs/configmap.md).

    in-cluster service account, $KUBECONFIG, /etc/kubernetes/kubelet.conf,
    /etc/kubernetes/admin.conf, /etc/rancher/k3s/k3s.yaml, $HOME/.kube/config

"Works" means the ConfigMap could be listed with it: a source whose file is missing, whose file
is not a usable kubeconfig, or which the API server refuses (401/403) or cannot be reached
through, is passed over for the next one. The kubelet's own kubeconfig comes before admin.conf
because every kubeadm node has it (worker nodes have no admin.conf) and it is the node's least
privileged identity.

Every token or password a source carries is registered with the log redaction as soon as the
source is loaded, and errors are described in one line that never echoes a response body.
"""

from __future__ import annotations

import os
import socket
import ssl
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import urllib3

from image_cri_shim import logs
from image_cri_shim.syncer.kube import (
    ApiClient,
    ApiException,
    ConfigException,
    Configuration,
    InClusterConfigLoader,
    load_kube_config,
)

T = TypeVar("T")

IN_CLUSTER_TOKEN = "/var/run/secrets/kubernetes.io/serviceaccount/token"  # noqa: S105 - a path
IN_CLUSTER_CA = "/var/run/secrets/kubernetes.io/serviceaccount/ca.crt"
NODE_KUBECONFIGS = ("/etc/kubernetes/kubelet.conf", "/etc/kubernetes/admin.conf", "/etc/rancher/k3s/k3s.yaml")


@dataclass(frozen=True)
class Source:
    label: str  # how the log names it
    kubeconfig: str | None  # None: the in-cluster service account


def sources(env: Mapping[str, str]) -> list[Source]:
    """The sources to try, in order, for this environment (pure)."""
    found = [Source("in-cluster service account", None)]
    if env.get("KUBECONFIG"):
        found.append(Source(f"$KUBECONFIG ({env['KUBECONFIG']})", env["KUBECONFIG"]))
    found.extend(Source(path, path) for path in NODE_KUBECONFIGS)
    home = env.get("HOME") or "/root"
    path = os.path.join(home, ".kube", "config")
    found.append(Source(path, path))
    return found


class Unavailable(Exception):
    """This source cannot be used; the message is one line for the log."""


@dataclass
class Connection(Generic[T]):
    """A working source: its API client and what the probe returned through it."""

    source: Source
    api: Any  # kubernetes.client.ApiClient
    server: str
    first: T


@dataclass
class NoCluster:
    """No source worked; `tried` says why for each, one short phrase apiece."""

    tried: list[str] = field(default_factory=list)


def connect(
    candidates: Sequence[Source], probe: Callable[[Any], T], env: Mapping[str, str]
) -> Connection[T] | NoCluster:
    """The first source through which `probe(api_client)` succeeds."""
    outcome = NoCluster()
    for source in candidates:
        try:
            api, server = client_for(source, env)
        except Unavailable as why:
            outcome.tried.append(f"{source.label}: {why}")
            continue
        try:
            return Connection(source, api, server, probe(api))
        except Exception as err:  # 401/403 included: the next source may be allowed
            outcome.tried.append(f"{source.label}: {describe(err)}")
            api.close()
    return outcome


def client_for(source: Source, env: Mapping[str, str]) -> tuple[Any, str]:
    """(kubernetes ApiClient, server URL) for `source`, or Unavailable."""
    configuration = Configuration()
    try:
        if source.kubeconfig is None:
            if not env.get("KUBERNETES_SERVICE_HOST"):
                raise Unavailable("not running in a pod")
            loader = InClusterConfigLoader(IN_CLUSTER_TOKEN, IN_CLUSTER_CA, environ=env)  # type: ignore[no-untyped-call]
            loader.load_and_set(configuration)  # type: ignore[no-untyped-call]
        else:
            paths = [p for p in source.kubeconfig.split(os.pathsep) if p]
            if not any(os.path.isfile(p) for p in paths):
                raise Unavailable("no such file")
            load_kube_config(  # type: ignore[no-untyped-call]
                config_file=source.kubeconfig, client_configuration=configuration, persist_config=False
            )
    except Unavailable:
        raise
    except ConfigException as err:
        raise Unavailable(f"not usable: {_first_line(err)}") from None
    except Exception as err:  # a kubeconfig the loader trips over (bad YAML, odd types...)
        raise Unavailable(f"not usable ({type(err).__name__})") from None
    _register_secrets(configuration)
    # Retries and their urllib3 warnings would multiply requests and log lines; the follower
    # has its own backoff. Keepalive lets a watch notice a vanished API server.
    configuration.retries = False
    configuration.keep_alive = True
    return ApiClient(configuration), str(configuration.host)


def _register_secrets(configuration: Any) -> None:
    values: list[str] = []
    for value in (configuration.api_key or {}).values():
        if isinstance(value, str):
            values.extend([value, value.split(" ", 1)[-1]])
    if isinstance(configuration.password, str):
        values.append(configuration.password)
    logs.register_secret(*values)


def is_denied(err: BaseException) -> bool:
    """401/403: these credentials may not read the ConfigMap (another source may)."""
    return isinstance(err, ApiException) and err.status in (401, 403)


def describe(err: BaseException) -> str:
    """What went wrong, in a few words: never a response body, a header or a credential."""
    if isinstance(err, ApiException):
        if err.status:
            return f"HTTP {err.status} {_first_line(err.reason or '')}".strip()
        return "TLS error: " + _first_line(str(err.reason or "").partition("\n")[2] or "handshake failed")
    chain = list(_chain(err))
    # Most specific first: urllib3's NewConnectionError is a TimeoutError subclass, and its
    # cause (ECONNREFUSED...) is what the operator needs to read.
    for inner in chain:
        if isinstance(inner, ssl.SSLError):
            return "TLS error: " + _first_line(
                getattr(inner, "verify_message", None) or inner.reason or inner
            )
        if isinstance(inner, socket.gaierror):
            return "unknown host"
    for inner in chain:
        if isinstance(inner, OSError) and inner.strerror:
            return inner.strerror.lower()
    for inner in chain:
        if isinstance(inner, TimeoutError | urllib3.exceptions.TimeoutError):
            return "timed out"
        if isinstance(inner, urllib3.exceptions.ProtocolError):
            return "connection broken"
    return type(err).__name__


def _chain(err: BaseException) -> Iterator[BaseException]:
    """`err` and what caused it (exception chaining, urllib3's `.reason`, exceptions in args)."""
    seen: set[int] = set()
    todo: list[BaseException] = [err]
    while todo:
        current = todo.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo.extend(item for item in linked if isinstance(item, BaseException))


def _first_line(value: object) -> str:
    line = str(value).strip().splitlines()[0] if str(value).strip() else ""
    return line if len(line) <= 160 else line[:157] + "..."
