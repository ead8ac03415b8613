"""The schema: one row per key of the file, in the order the reference lists them.

Each row says how the key's value is checked, its default, which field of the model it fills
and what it means to the operator. `build.parse` reads a file by walking these tables,
tests/configdoc.py writes docs/configuration.md from them, and `image_cri_shim/changes.py` names
changed keys by them: a new key is a row here and a field in `model.py`.
"""

from __future__ import annotations

from functools import partial

from image_cri_shim.config import checks
from image_cri_shim.config.model import (
    CRI_SOCKETS,
    DEFAULT_DOCKER_SOCKET,
    DEFAULT_OFFLINE_PRIORITY,
    DEFAULT_PRIORITY,
    DEFAULT_RELOAD_INTERVAL,
    DEFAULT_SHIM,
    DEFAULT_STATE_DIR,
    DEFAULT_TIMEOUT,
    PRIORITY_MAX,
    PRIORITY_MIN,
    CacheConfig,
    ConfigMapRef,
)
from image_cri_shim.config.reading import Rule, Section
from image_cri_shim.config.registries import Registries

__all__ = ["CACHE", "CONFIG_MAP", "LEGACY_CACHE", "LEGACY_TOP", "REGISTRY", "TOP"]

# Keys sealos' Go image-cri-shim wrote or read that mean nothing here: accepted, ignored.
#   version   CRI API version of old releases (v1 / v1alpha2): we serve both
#   image     image directory of old releases (already unused there)
#   sync      image sync period of the first releases
LEGACY_TOP = frozenset({"version", "image", "sync"})
LEGACY_CACHE = frozenset({"domainCacheTTL"})  # the Go shim's domain cache; we have none

REGISTRY: dict[str, Rule] = {
    "address": Rule(
        partial(checks.address, True),
        field=("scheme", "domain"),
        kind="URL or host[:port]",
        unset="required",
        doc="The registry's root: `https://host[:port]`, `http://host[:port]` for a plain-http registry, or a"
        " bare `host[:port]`, which means https. No path, no credentials in the URL. Two entries (or an"
        " entry and `address`) with the same host and port are an error.",
        example="backup.company.com:5000",
    ),
    "auth": Rule(
        checks.auth,
        ("", ""),
        field=("username", "password"),
        kind="user:password",
        doc="Credentials sent to this registry and to no other; split at the first colon, so the password"
        " may contain `:`. Empty: anonymous. In the ConfigMap also `{username: ..., password: ...}`.",
        example="puller:PASSWORD",
    ),
    # Zero means "not set", as in the Go shim (and as offlinePriority's zero does).
    "priority": Rule(
        partial(checks.priority, DEFAULT_PRIORITY),
        DEFAULT_PRIORITY,
        field="priority",
        kind="integer",
        doc=f"Higher is tried first (ties: `address` first, then by host). Clamped to"
        f" {PRIORITY_MIN}..{PRIORITY_MAX} with a warning.",
        example="800",
    ),
    "insecureSkipVerify": Rule(
        checks.boolean,
        False,
        field="insecure_skip_verify",
        kind="boolean",
        doc="Do not verify this registry's TLS certificate when probing it. Prefer `ca`. No effect on an"
        " `http://` registry. The runtime pulls, so it needs its own trust settings too (operations.md).",
        example="true",
    ),
    "ca": Rule(
        checks.abs_path,
        field="ca",
        kind="absolute path",
        unset="the system CAs",
        doc="A PEM file of the CA certificates to verify this registry's certificate with.",
        example="/etc/image-cri-shim/backup-ca.pem",
    ),
    "mirrors": Rule(
        checks.mirrors,
        (),
        field="mirrors",
        kind="mapping: source prefix → path prefix",
        doc="Routing rules ([routing.md](routing.md)). With rules, the registry is a candidate only for"
        " images whose normalized name starts with a source prefix (whole path components; the longest"
        ' wins), looked up at the path prefix followed by the rest of the name; `""` keeps the rest as'
        " it is. Without rules (or `{}`), a candidate for every image at the image's own path. Replaced"
        " as a whole by a ConfigMap that sets it.",
        example="{docker.io: dockerhub, quay.io: quay}",
    ),
}

CACHE: dict[str, Rule] = {
    "imageCacheSize": Rule(
        checks.cache_size,
        CacheConfig.image_cache_size,
        field="image_cache_size",
        kind="integer",
        doc="The most rewrite decisions kept (least recently used go first). `0` disables the cache: every"
        " PullImage asks the registries afresh; a negative value does too, with a warning.",
        example="2048",
    ),
    # Zero means "default" as in the Go shim, whose written files carry "0s" for unset TTLs.
    "imageCacheTTL": Rule(
        partial(checks.duration, CacheConfig.image_cache_ttl),
        CacheConfig.image_cache_ttl,
        field="image_cache_ttl",
        kind="duration",
        doc='How long a positive decision ("found in registry X") is kept.',
        example="1h",
    ),
    # Zero here means what it says: "nobody has it" is not remembered.
    "negativeCacheTTL": Rule(
        partial(checks.duration, None),
        CacheConfig.negative_cache_ttl,
        field="negative_cache_ttl",
        kind="duration",
        doc='How long "no registry holds it" (and a refusal under `upstream: false`) is kept, so kubelet\'s'
        " retries cost no registry traffic. `0s`: not kept at all.",
        example="10s",
    ),
    "statsLogInterval": Rule(
        partial(checks.duration, CacheConfig.stats_log_interval),
        CacheConfig.stats_log_interval,
        field="stats_log_interval",
        kind="duration",
        doc="Period of the cache-statistics log line (hits, misses, size).",
        example="5m",
    ),
    "disableStats": Rule(
        checks.boolean,
        False,
        field="disable_stats",
        kind="boolean",
        doc="Turn the cache-statistics log line off.",
        example="true",
    ),
}

CONFIG_MAP: dict[str, Rule] = {
    "enabled": Rule(
        checks.boolean,
        ConfigMapRef.enabled,
        field="enabled",
        kind="boolean",
        doc="`false`: the syncer stays idle and never contacts the API server.",
        example="false",
    ),
    "namespace": Rule(
        checks.pattern(checks.DNS_LABEL, 63, "a namespace name (lower-case letters, digits, '-')"),
        ConfigMapRef.namespace,
        field="namespace",
        kind="namespace name",
        doc="Namespace of the ConfigMap (and of the Role and RoleBinding that let nodes read it).",
        example="infra",
    ),
    "name": Rule(
        checks.pattern(
            rf"{checks.DNS_LABEL}(\.{checks.DNS_LABEL})*", 253, "a ConfigMap name (lower-case DNS name)"
        ),
        ConfigMapRef.name,
        field="name",
        kind="ConfigMap name",
        doc="Name of the ConfigMap; the Role's `resourceNames` must name it.",
        example="image-cri-shim-gpu",
    ),
    "key": Rule(
        checks.pattern(r"[-._a-zA-Z0-9]+", 253, "a ConfigMap key (letters, digits, '-', '_', '.')"),
        ConfigMapRef.key,
        field="key",
        kind="ConfigMap key",
        doc="The key of the ConfigMap's `data` whose value is merged into this file.",
        example="gpu-nodes.yaml",
    ),
}


# `address` and the keys with a `registry_key` become the offline registry, and `registries` is
# joined to it and sorted: build.py assembles both into `Config.registries`.
TOP: dict[str, Rule] = {
    "shim": Rule(
        checks.socket_path,
        DEFAULT_SHIM,
        field="shim",
        kind="absolute path or unix:// URL",
        doc="The socket the shim serves on (mode 0660; its directory is created). kubelet's"
        " `imageServiceEndpoint` and crictl's `image-endpoint` point here.",
        example="/run/image-cri-shim.sock",
    ),
    "cri": Rule(
        checks.socket_path,
        field="cri",
        kind="absolute path or unix:// URL",
        unset="auto-detect",
        doc=f"The runtime's CRI socket. Unset: of {', '.join(f'`{p}`' for p in CRI_SOCKETS)}, the one that"
        " exists; several existing is an error naming them; none falls back to the first (with `force`,"
        " the shim waits for it).",
        example="unix:///run/containerd/containerd.sock",
    ),
    "address": Rule(
        partial(checks.address, False),
        field=None,
        registry_key="address",
        kind="http:// or https:// URL",
        unset="none",
        doc='The primary ("offline") registry, tried with priority `offlinePriority`. At least one of'
        " `address` and `registries` must be set, unless ConfigMap sync is on: a node file without"
        " either passes images through unchanged until the ConfigMap sets registries. ConfigMap:"
        " `sealos.address`.",
        example="https://registry.company.com",
    ),
    "auth": Rule(
        checks.auth,
        ("", ""),
        field=None,
        registry_key="auth",
        kind="user:password",
        doc="Credentials of `address`, split at the first colon (the password may contain `:`); empty:"
        " anonymous. ConfigMap: `sealos.auth`, also as `{username: ..., password: ...}`.",
        example="admin:PASSWORD",
    ),
    "offlinePriority": Rule(
        partial(checks.priority, DEFAULT_OFFLINE_PRIORITY),
        DEFAULT_OFFLINE_PRIORITY,
        field=None,
        registry_key="priority",
        kind="integer",
        doc=f"The priority of `address` among the registries. Clamped to {PRIORITY_MIN}..{PRIORITY_MAX}"
        " with a warning.",
        example="900",
    ),
    "insecureSkipVerify": Rule(
        checks.boolean,
        False,
        field=None,
        registry_key="insecureSkipVerify",
        kind="boolean",
        doc="`registries[].insecureSkipVerify`, for `address`.",
        example="true",
    ),
    "ca": Rule(
        checks.abs_path,
        field=None,
        registry_key="ca",
        kind="absolute path",
        unset="the system CAs",
        doc="`registries[].ca`, for `address`.",
        example="/etc/image-cri-shim/registry-ca.pem",
    ),
    "mirrors": Rule(
        checks.mirrors,
        (),
        field=None,
        registry_key="mirrors",
        kind="mapping: source prefix → path prefix",
        doc="`registries[].mirrors`: the routing rules of `address`. ConfigMap: `sealos.mirrors`.",
        example="{docker.io: dockerhub, registry.k8s.io: k8s}",
    ),
    "upstream": Rule(
        checks.boolean,
        True,
        field="upstream",
        kind="boolean",
        doc="`false`: when no configured registry holds an image, PullImage fails with `NOT_FOUND` and a"
        " message listing each candidate's answer, instead of going to the image's own registry"
        " ([routing.md](routing.md)).",
        example="false",
    ),
    "registries": Rule(
        Registries(REGISTRY),
        [],
        field=None,
        kind="list of registries",
        doc="Further registries, each a mapping with the keys of the next table. Replaced as a whole by"
        " a ConfigMap that sets it.",
        example="[{address: backup.company.com, auth: 'puller:PASSWORD', priority: 800}]",
    ),
    "force": Rule(
        checks.boolean,
        False,
        field="force",
        kind="boolean",
        doc="Start even if the CRI socket does not exist yet, and wait for it: readiness is reported"
        " once the shim serves.",
        example="true",
    ),
    "debug": Rule(
        checks.boolean,
        False,
        field="debug",
        kind="boolean",
        doc="Debug logging (every CRI call). Takes effect on reload.",
        example="true",
    ),
    # Zero means "default" for these too, as in the Go shim.
    "timeout": Rule(
        partial(checks.duration, DEFAULT_TIMEOUT),
        DEFAULT_TIMEOUT,
        field="timeout",
        kind="duration",
        doc="The upper bound of any call to the runtime, PullImage included (the caller's deadline is"
        " capped by it), and the time a replaced worker gives the calls still running.",
        example="20m",
    ),
    "reloadInterval": Rule(
        partial(checks.duration, DEFAULT_RELOAD_INTERVAL),
        DEFAULT_RELOAD_INTERVAL,
        field="reload_interval",
        kind="duration",
        doc="Period of the config-file poll (a fallback to the file watch), of the syncer's re-check of"
        " the file against the ConfigMap, and of its retries without cluster access.",
        example="60s",
    ),
    "cache": Rule(
        Section(CACHE, CacheConfig, LEGACY_CACHE),
        CacheConfig(),
        field="cache",
        kind="mapping",
        doc="The rewrite-decision cache: the keys of the `cache` table. A ConfigMap that sets some of"
        " them keeps the others.",
        example="{imageCacheSize: 2048, imageCacheTTL: 1h}",
    ),
    "metricsAddress": Rule(
        checks.metrics_address,
        field="metrics_address",
        kind="host:port or absolute socket path",
        unset="off",
        doc="Where the Prometheus text endpoint listens; an empty host means every interface.",
        example="127.0.0.1:9798",
    ),
    "configMap": Rule(
        Section(CONFIG_MAP, ConfigMapRef),
        ConfigMapRef(),
        field="config_map",
        kind="mapping",
        doc="Which ConfigMap this node follows: the keys of the `configMap` table. Read from the node's"
        " own file only; the same key inside the ConfigMap is ignored.",
        example="{enabled: false}",
    ),
    "dockerSocket": Rule(
        checks.socket_path,
        DEFAULT_DOCKER_SOCKET,
        field="docker_socket",
        kind="absolute path or unix:// URL",
        doc="Docker Engine's API socket, used only when the runtime is cri-dockerd (its Version names"
        " `docker`): the image's records there are renamed to the caller's name after a rewritten pull."
        " Not reachable: the names are translated in answers instead (see behaviour.md).",
        example="unix:///run/docker.sock",
    ),
    "sandboxImage": Rule(
        checks.image,
        field="sandbox_image",
        kind="image reference",
        unset="the runtime's own",
        doc="The sandbox (pause) image every pod starts from, which the runtime pulls itself and never"
        " through the shim. The shim keeps it on the node under exactly this name, pulled through the"
        " registries above ([operations.md](operations.md#air-gapped-nodes-the-sandbox-image)). Unset:"
        " the one the runtime reports in its CRI `Status` (containerd 1.6 and 1.7, CRI-O 1.27 and newer,"
        " cri-dockerd 0.3.2 and newer); containerd 2.x reports none, so its release's built-in default is"
        " taken. Set it, to the runtime's own value, for a runtime that reports none or a containerd 2.x"
        " whose config pins another one.",
        example="registry.k8s.io/pause:3.10",
    ),
    "stateDir": Rule(
        checks.abs_path,
        DEFAULT_STATE_DIR,
        field="state_dir",
        kind="absolute path",
        doc="What the shim keeps across restarts: which caller name was pulled as which rewritten name."
        " Created with mode 0700.",
        example="/data/image-cri-shim",
    ),
}
