"""How every process of the service starts: the config, its log lines and secrets, exit codes.

The master, a worker and the syncer all begin with `configure`; the master and a worker, which
serve the CRI, then `prepare` checks the CRI socket and the shim socket, with the same one-line
errors. A failure is a `StartupError`: the line the operator sees and the exit code.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
from collections.abc import Iterator

from image_cri_shim import logs
from image_cri_shim.config import CRI_SOCKETS, Config, ConfigError, load
from image_cri_shim.exposure import Place, directory_exposure, secret_exposure

EX_OK = 0
EX_FAILURE = 1
EX_CONFIG = 78  # sysexits' "configuration error"; the unit does not restart-loop on it


class StartupError(Exception):
    """An expected start-up failure: one line for the operator and the exit code."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def configure(path: str, role: str, **log_fields: object) -> Config:
    """Load the config and set up this process's log lines (`role` and `log_fields` lead each)."""
    try:
        config = load(path)
    except ConfigError as err:
        raise StartupError(str(err), EX_CONFIG) from None
    logs.setup(role, config.debug, **log_fields)
    use_config(config)
    return config


def use_config(config: Config) -> None:
    """A config comes into force: its log level, and its passwords join the secrets that are
    redacted. Secrets accumulate for the life of the process, in every process alike: a line
    about settings a reload replaced may still carry one of their passwords."""
    logs.set_debug(config.debug)
    logs.register_secret(*(r.password for r in config.registries))


def prepare(path: str, role: str, first: bool = True, **log_fields: object) -> tuple[Config, str]:
    """`configure`, then find the CRI socket and check that this process may serve.

    `first`: this process starts the service (the master, or a worker run alone), as opposed
    to a worker generation the master starts; only the first logs the config's warnings and
    refuses to take the socket from a live instance.
    """
    config = configure(path, role, **log_fields)
    try:
        cri_socket = resolve_cri(config)
    except ConfigError as err:
        raise StartupError(str(err), EX_CONFIG) from None
    if not config.force and not os.path.exists(cri_socket):
        raise StartupError(
            f"image-cri-shim: CRI socket {cri_socket} does not exist (set force: true to wait for it)",
            EX_FAILURE,
        )
    if first and serving(config.shim):
        raise StartupError(
            f"image-cri-shim: another instance is serving on {config.shim}; stop it first "
            "(a stale socket file from a stopped one is replaced)",
            EX_FAILURE,
        )
    if first:
        for warning in (*config.warnings, *exposures(config)):
            logs.get(role).warning(warning)
    return config, cri_socket


def _place(path: str) -> Place | None:
    try:
        found = os.stat(path)
    except OSError:
        return None  # made by the service when it is missing, or said by the error that follows
    return Place(path, found.st_uid, found.st_mode)


def state_dir_exposure(state_dir: str) -> str | None:
    """Why the files of `stateDir` must not be trusted (one line), or None."""
    place = _place(state_dir)
    said = place and directory_exposure("stateDir", place, os.geteuid())
    return f"{said}: its files are not trusted, names are kept in memory only" if said else None


def exposures(config: Config) -> list[str]:
    """The start-up checks of what other users could change or read (`exposure`): stateDir, the
    shim socket's directory, the config's directory, and a config file with passwords readable
    by others. One line each, naming the path and its mode, never a secret."""
    lines = [line for line in [state_dir_exposure(config.state_dir)] if line]
    directories = {os.path.dirname(config.shim): "socket directory"}
    directories.setdefault(os.path.dirname(os.path.abspath(config.path)), "config directory")
    for path, what in directories.items():
        place = _place(path)
        said = place and directory_exposure(what, place, os.geteuid())
        if said:
            lines.append(said)
    place = _place(config.path)
    said = place and secret_exposure(place, any(r.password for r in config.registries))
    if said:
        lines.append(said)
    return lines


@contextlib.contextmanager
def owner_only() -> Iterator[None]:
    """Whatever the process umask (systemd's, an operator's `umask 000`), files and sockets
    created inside are at most 0600: a socket bound here and then given its mode is never open
    to another user in between. The umask is the process's: keep the block to the bind."""
    old = os.umask(0o177)
    try:
        yield
    finally:
        os.umask(old)


def remove_socket(path: str) -> None:
    """Remove the unix socket file at `path` (left by a killed run); anything else is left alone."""
    with contextlib.suppress(OSError):
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)


def serving(path: str) -> bool:
    """Whether something accepts connections on the unix socket `path` (a stale file does not)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except OSError:
            return False
    return True


def resolve_cri(config: Config, candidates: tuple[str, ...] = CRI_SOCKETS) -> str:
    """The upstream CRI socket: the configured one, else the single existing candidate.

    Guessing between two runtimes would proxy kubelet to the wrong one, so several existing
    candidates is an error; none existing falls back to containerd's path (with `force` the
    shim waits for it).
    """
    if config.cri:
        return config.cri
    existing: list[str] = []
    seen: set[str] = {os.path.realpath(config.shim)}  # never proxy to ourselves
    for candidate in candidates:
        real = os.path.realpath(candidate)
        if os.path.exists(candidate) and real not in seen:
            seen.add(real)
            existing.append(candidate)
    if len(existing) > 1:
        raise ConfigError(
            config.path,
            "cri",
            f"several CRI sockets exist ({', '.join(existing)}): set cri to the one to use",
        )
    if existing:
        return existing[0]
    return candidates[0] if candidates else CRI_SOCKETS[0]
