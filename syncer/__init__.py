"""The ConfigMap syncer process (docs/configmap.md): the only importer of kubernetes.

process   the process: signals, the main loop, the node's own settings, once-per-version logging
follow    list + watch of the one ConfigMap in a thread (backoff, 410, bookmarks) -> Snapshot
cluster   which credentials: the first source that can list the ConfigMap
apply     one step: merge, validate, write_atomic only when the bytes differ
merge     pure: ConfigMap registries.yaml + local config text -> new text, or a reason
snapshot  the value passed from the follower to the process
"""
