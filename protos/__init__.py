"""CRI messages the shim reads or changes, generated from cri.proto."""
