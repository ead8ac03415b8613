"""`--dry-run`'s ConfigMap line: whose credentials the syncer would use, whether the ConfigMap is
there, and what applying it would change on this node.

The same credential order, the same list request and the same merge as the syncer, run once;
nothing is written. A problem here is reported, never fatal: the image service runs without a
cluster.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from image_cri_shim.changes import changed_keys
from image_cri_shim.config import Config
from image_cri_shim.syncer import cluster
from image_cri_shim.syncer.follow import list_configmap
from image_cri_shim.syncer.merge import Rejected, merge
from image_cri_shim.syncer.snapshot import Snapshot

TIMEOUT = (5, 10)  # connect, read: a dry run should not hang on an unreachable API server


def configmap_lines(config: Config, local_text: str, env: Mapping[str, str] = os.environ) -> list[str]:
    ref = config.config_map
    where = f"{ref.namespace}/{ref.name} key {ref.key}"
    if not ref.enabled:
        return ["off (configMap.enabled: false)"]

    def listing(api: Any) -> Snapshot:
        return list_configmap(api, ref, TIMEOUT).snapshot

    found = cluster.connect(cluster.sources(env), listing, env)
    if isinstance(found, cluster.NoCluster):
        return [f"{where}: no cluster access; the local file is used as it is", *found.tried]
    found.api.close()
    lines = [f"{where} via {found.source.label} ({found.server})"]
    snapshot = found.first
    if snapshot.data is None:
        return [*lines, "not found: the local file is used as it is"]
    wanted = snapshot.data.get(ref.key)
    if wanted is None:
        return [*lines, f"found ({snapshot.identity}) without key {ref.key}: nothing to apply"]
    result = merge(wanted, local_text, config.path)
    if isinstance(result, Rejected):
        return [*lines, f"found ({snapshot.identity}), not applicable: {result.reason}"]
    changes = changed_keys(config, result.config)
    if not changes:
        return [*lines, f"found ({snapshot.identity}): the file is in sync"]
    return [*lines, f"found ({snapshot.identity}): applying it changes {', '.join(changes)}"]
