"""Messages the shim reads or changes: CRI (cri.proto) and containerd's images API (containerd.proto)."""
