"""The one-line config error, and the context that collects a document's warnings."""

from __future__ import annotations

from typing import NoReturn

__all__ = ["ConfigError", "Ctx", "line"]


def line(path: str, key: str | None, problem: str) -> str:
    """'config <path>: <key>: <problem>', or without the key for a problem of the whole file."""
    return f"config {path}: {key}: {problem}" if key else f"config {path}: {problem}"


class ConfigError(Exception):
    """One line: 'config <path>: <key.path>: <problem>' (str(err) is exactly that line).

    File-level problems (unreadable file, YAML syntax, no registry at all) have no key path:
    'config <path>: <problem>'.
    """

    def __init__(self, path: str, key: str | None, problem: str) -> None:
        self.path = path
        self.key = key
        self.problem = problem
        super().__init__(line(path, key, problem))

    def __reduce__(self) -> tuple[type[ConfigError], tuple[str, str | None, str]]:
        return (ConfigError, (self.path, self.key, self.problem))


class Ctx:
    """Where messages go while one document is checked."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.warnings: list[str] = []

    def fail(self, key: str | None, problem: str) -> NoReturn:
        raise ConfigError(self.path, key, problem)

    def warn(self, key: str | None, problem: str) -> None:
        self.warnings.append(line(self.path, key, problem))
