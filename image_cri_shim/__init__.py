"""image-cri-shim: a CRI image-service proxy for private and offline registries."""

__version__ = "0.1.0"
