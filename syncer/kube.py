"""The parts of the official kubernetes client the syncer uses, without what it never uses.

`import kubernetes` runs the package's `__init__`, which imports every subpackage (the dynamic
client with its schema validator, streams over websockets, informers, leader election…): about
22 MiB the syncer would hold for nothing. And the generated `CoreV1Api` imports, for its type
annotations, the hundreds of API models its methods name (another 21 MiB and 0.6 s), while the
syncer reads the ConfigMap as raw JSON.

So the `kubernetes` package is registered here as a bare package: its subpackages import as
usual, only its `__init__` does not run. The syncer's two requests (list and watch of
ConfigMaps) go through the API client's own request machinery — credentials, token refresh,
TLS and timeouts as the generated methods use them — without `CoreV1Api`.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from typing import Any


def _bare_package(name: str) -> None:
    """`name` importable as a package whose `__init__` is never run (unless already imported)."""
    if name in sys.modules:
        return
    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"{name} is not installed as a package")
    sys.modules[name] = importlib.util.module_from_spec(spec)


_bare_package("kubernetes")

from kubernetes.client.api_client import ApiClient  # noqa: E402
from kubernetes.client.configuration import Configuration  # noqa: E402
from kubernetes.client.exceptions import ApiException  # noqa: E402
from kubernetes.config.config_exception import ConfigException  # noqa: E402
from kubernetes.config.incluster_config import InClusterConfigLoader  # noqa: E402
from kubernetes.config.kube_config import load_kube_config  # noqa: E402

__all__ = [
    "ApiClient",
    "ApiException",
    "ConfigException",
    "Configuration",
    "InClusterConfigLoader",
    "configmaps",
    "load_kube_config",
]


def configmaps(
    api: Any, namespace: str, query: Sequence[tuple[str, str | int]], timeout: tuple[float, float]
) -> Any:
    """GET the ConfigMaps of `namespace` (a list, or a watch with `watch=true`) with the client's
    credentials: the raw urllib3 response, its body not read. A status other than 2xx raises
    ApiException, as the generated methods do with `_preload_content=False`."""
    request = api.param_serialize(
        method="GET",
        resource_path="/api/v1/namespaces/{namespace}/configmaps",
        path_params={"namespace": namespace},
        query_params=list(query),
        header_params={"Accept": "application/json"},
        auth_settings=["BearerToken"],
    )
    response = api.call_api(*request, _request_timeout=timeout)
    if not 200 <= response.status <= 299:
        response.read()
        raise ApiException.from_response(http_resp=response, body=None, data=None)
    return response.response
