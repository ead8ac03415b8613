"""docs/examples/ (shipped in the offline bundle as they are) is valid and does what the docs say.

- The Kubernetes objects validate, strictly (no unknown field), against the OpenAPI schemas of the
  newest Kubernetes release kubernetes-validate ships; it needs no cluster, unlike `kubectl
  --dry-run`, which asks the API server even in client mode.
- KubeletConfiguration is not among those schemas (it is a component config, not an API object):
  the test checks its apiVersion, kind and field names against the KubeletConfiguration type of
  k8s.io/kubelet/config/v1beta1 (`containerRuntimeEndpoint`, `imageServiceEndpoint`), and the
  endpoints against the config model's defaults.
- The ConfigMap's `registries.yaml` passes the syncer's merge and the config model.
- The Role and RoleBinding let the real syncer do all it does, and no more than reading the one
  ConfigMap: the syncer runs against the stand-in API server and every request it makes is checked
  against the example RBAC with the rules kube-apiserver applies (for list and watch, `resourceNames`
  matches the name in a `metadata.name=` field selector).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate  # type: ignore[import-untyped]
import pytest
import yaml
from packaging.version import Version

from image_cri_shim.config import CRI_SOCKETS, DEFAULT_SHIM, ConfigMapRef, parse
from image_cri_shim.syncer.merge import Merged, merge
from tests.harness.kubeapi import KubeApi
from tests.harness.processes import wait_for
from tests.harness.syncer import TOKEN, SyncerNode

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "docs" / "examples"
FILES = sorted(p for p in EXAMPLES.rglob("*") if p.is_file())
SCHEMAS = kubernetes_validate.latest_version()
REF = ConfigMapRef()

# Fields of KubeletConfiguration (kubelet.config.k8s.io/v1beta1) the example may use, as the Go type
# spells them (json tags): TypeMeta, ContainerRuntimeEndpoint, ImageServiceEndpoint (since 1.27).
KUBELET_FIELDS = {"apiVersion", "kind", "containerRuntimeEndpoint", "imageServiceEndpoint"}


def documents(path: Path) -> list[dict[str, Any]]:
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]
    assert docs and all(isinstance(doc, dict) for doc in docs), f"{path}: expected YAML mappings"
    return docs


def kind_of(path: Path) -> str:
    """What an example file is; a file this test does not know fails rather than being passed over."""
    docs = documents(path)
    if "apiVersion" not in docs[0]:
        assert path.name == "config.yaml", f"{path}: not a Kubernetes object and not the shim's config"
        return "shim config"
    kinds = {str(doc["kind"]) for doc in docs}
    assert len(kinds) == 1, f"{path}: one kind per file"
    return kinds.pop()


def objects(kind: str) -> list[dict[str, Any]]:
    found = [doc for path in FILES if kind_of(path) == kind for doc in documents(path)]
    assert len(found) == 1, f"expected one {kind} among the examples, found {len(found)}"
    return found


def test_the_schemas_are_a_current_release() -> None:
    assert Version(SCHEMAS) >= Version("1.33"), SCHEMAS


def test_every_file_is_a_known_kind() -> None:
    kinds = sorted(kind_of(path) for path in FILES)
    assert kinds == sorted(["shim config", "KubeletConfiguration", "ConfigMap", "Role", "RoleBinding"])


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(EXAMPLES)) for p in FILES])
def test_kubernetes_objects_validate_against_the_release_schemas(path: Path) -> None:
    kind = kind_of(path)
    if kind in ("shim config", "KubeletConfiguration"):
        return  # checked by their own tests below: no API schema exists for them
    for doc in documents(path):
        try:
            kubernetes_validate.validate(doc, SCHEMAS, strict=True)
        except kubernetes_validate.ValidationError as err:
            where = ".".join(str(part) for part in err.path)
            pytest.fail(
                f"{path.name}: {doc['kind']} is invalid for Kubernetes {SCHEMAS}: {where}: {err.message}"
            )


def test_kubelet_configuration() -> None:
    (doc,) = objects("KubeletConfiguration")
    assert doc["apiVersion"] == "kubelet.config.k8s.io/v1beta1"
    assert set(doc) <= KUBELET_FIELDS, set(doc) - KUBELET_FIELDS
    assert doc["imageServiceEndpoint"] == f"unix://{DEFAULT_SHIM}"
    assert doc["containerRuntimeEndpoint"] == f"unix://{CRI_SOCKETS[0]}"


def test_the_config_example_loads_without_a_warning() -> None:
    config = parse((EXAMPLES / "config.yaml").read_text(), "config.yaml")
    assert not config.warnings, config.warnings
    assert config.config_map == REF


def registries_yaml() -> str:
    (doc,) = objects("ConfigMap")
    assert (doc["metadata"]["namespace"], doc["metadata"]["name"]) == (REF.namespace, REF.name)
    assert set(doc["data"]) == {REF.key}
    text = doc["data"][REF.key]
    assert isinstance(text, str)
    return text


@pytest.mark.parametrize("local", ["example", "empty"])
def test_the_configmap_passes_merge_and_the_config_model(local: str) -> None:
    text = (EXAMPLES / "config.yaml").read_text() if local == "example" else ""
    merged = merge(registries_yaml(), text, "/etc/image-cri-shim/config.yaml")
    assert isinstance(merged, Merged), merged
    assert not merged.notes and not merged.config.warnings, (merged.notes, merged.config.warnings)
    registries = [(r.url, r.username, r.priority) for r in merged.config.registries]
    assert registries == [
        ("https://registry.company.com", "admin", 1000),
        ("https://backup.company.com", "puller", 800),
    ]
    assert merged.config.timeout == 1200.0 and merged.config.cache.image_cache_size == 2048


def test_the_role_reads_the_one_configmap_only() -> None:
    (role,) = objects("Role")
    (binding,) = objects("RoleBinding")
    assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == REF.namespace
    assert role["rules"] == [
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": [REF.name],
            "verbs": ["get", "list", "watch"],
        }
    ]
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": role["metadata"]["name"],
    }
    assert binding["subjects"] == [
        {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
    ]


# --------------------------------------------------------------------------- RBAC, as kube-apiserver decides


def request_attributes(verb: str, target: str) -> tuple[str, str, str]:
    """(namespace, resource, name) of a ConfigMap request as kube-apiserver's RequestInfo sees it:
    list and watch take their name from a `metadata.name=` (or `==`) field selector."""
    url = urlsplit(target)
    parts = [p for p in url.path.split("/") if p]
    assert parts[:3] == ["api", "v1", "namespaces"] and len(parts) in (5, 6), target
    name = parts[5] if len(parts) == 6 else ""
    if verb in ("list", "watch"):
        selector = parse_qs(url.query).get("fieldSelector", [""])[-1]
        for op in ("==", "="):
            field, found, value = selector.partition(op)
            if found and field == "metadata.name" and "," not in selector:
                name = value
                break
    return parts[3], parts[4], name


def allowed(verb: str, target: str, groups: set[str]) -> bool:
    """Whether the example Role, through the example RoleBinding, allows this request."""
    (role,) = objects("Role")
    (binding,) = objects("RoleBinding")
    namespace, resource, name = request_attributes(verb, target)
    if namespace != binding["metadata"]["namespace"] or namespace != role["metadata"]["namespace"]:
        return False
    if not any(s["kind"] == "Group" and s["name"] in groups for s in binding["subjects"]):
        return False
    if binding["roleRef"]["name"] != role["metadata"]["name"]:
        return False
    return any(
        verb in rule["verbs"]
        and "" in rule["apiGroups"]
        and resource in rule["resources"]
        and (not rule.get("resourceNames") or name in rule["resourceNames"])
        for rule in role["rules"]
    )


NODE = {"system:nodes", "system:authenticated"}


@pytest.mark.parametrize(
    ("verb", "target", "expected"),
    [
        ("get", "/api/v1/namespaces/kube-system/configmaps/image-cri-shim", True),
        (
            "watch",
            "/api/v1/namespaces/kube-system/configmaps?fieldSelector=metadata.name%3Dimage-cri-shim",
            True,
        ),
        ("list", "/api/v1/namespaces/kube-system/configmaps", False),  # every ConfigMap: denied
        ("get", "/api/v1/namespaces/kube-system/configmaps/kube-proxy", False),
        ("list", "/api/v1/namespaces/default/configmaps?fieldSelector=metadata.name%3Dimage-cri-shim", False),
    ],
)
def test_the_rbac_model_of_this_test(verb: str, target: str, expected: bool) -> None:
    assert allowed(verb, target, NODE) is expected
    assert allowed(verb, target, {"system:authenticated"}) is False


def test_the_example_rbac_covers_every_request_of_the_syncer(tmp_path: Path) -> None:
    with KubeApi(tokens={TOKEN: "allowed"}) as api:
        node = SyncerNode(tmp_path, api, local=(EXAMPLES / "config.yaml").read_text())
        node.secrets.append("PASSWORD")  # the example's password must stay out of the log too
        try:
            api.apply_configmap(REF.name, {REF.key: registries_yaml()}, namespace=REF.namespace)
            node.start()
            node.wait_config(lambda text: "timeout: 20m" in text, "the example ConfigMap in the file")
            wait_for(lambda: api.requests["watch"] >= 1, 5, "the syncer to watch the ConfigMap")
        finally:
            node.close()
    requests = [(kind, path) for kind, path, _ in api.log]
    assert {kind for kind, _ in requests} <= {"discovery", "get", "list", "watch"}, requests
    for kind, path in requests:
        if kind == "discovery":  # readable by every authenticated user (system:discovery)
            assert urlsplit(path).path in ("/api", "/version"), path
        else:
            assert allowed(kind, path, NODE), f"the example RBAC does not allow {kind} {path}"
    assert any(kind == "list" for kind, _ in requests) and any(kind == "watch" for kind, _ in requests)
