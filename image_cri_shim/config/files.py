"""The config file on disk: one bounded read every process uses, and `load` = read + parse."""

from __future__ import annotations

from image_cri_shim.config.build import parse_bytes
from image_cri_shim.config.errors import ConfigError
from image_cri_shim.config.model import Config
from image_cri_shim.smallfile import NotRegular, TooLarge, read_small

__all__ = ["load", "read"]

# A config file is a few KiB; the cap keeps a wrong path (a device, a huge log) from stalling
# the master.
_MAX_FILE_BYTES = 1 << 20


def load(path: str) -> Config:
    """Read the file at `path` and parse it; any failure is a ConfigError naming the file."""
    return parse_bytes(read(path), path)


def read(path: str) -> bytes:
    """The bytes of the config file at `path` (bounded), or a ConfigError naming the file."""
    try:
        return read_small(path, _MAX_FILE_BYTES)
    except FileNotFoundError:
        raise ConfigError(path, None, "no such file") from None
    except PermissionError:
        raise ConfigError(path, None, "permission denied") from None
    except NotRegular:
        raise ConfigError(path, None, "not a regular file") from None
    except TooLarge:
        raise ConfigError(path, None, f"larger than {_MAX_FILE_BYTES} bytes: not a config file") from None
    except OSError as err:
        raise ConfigError(path, None, f"cannot read: {err.strerror or type(err).__name__}") from None
