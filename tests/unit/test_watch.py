"""Which of watchdog's events in the config directory concern the config file; a module loaded
only once something reads from it."""

from __future__ import annotations

import importlib
import sys
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from watchdog.events import FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent

from image_cri_shim.supervisor.watch import concerns, lazy


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (FileModifiedEvent("/etc/shim/config.yaml"), True),
        (FileCreatedEvent("/etc/shim/config.yaml"), True),
        # the syncer and editors write a temporary file and rename it over the config
        (FileMovedEvent("/etc/shim/.config.yaml.tmp", "/etc/shim/config.yaml"), True),
        (FileMovedEvent("/etc/shim/config.yaml", "/etc/shim/config.yaml.bak"), True),
        (FileModifiedEvent("/etc/shim/.config.yaml.tmp"), False),
        (FileModifiedEvent("/etc/shim/config.yaml.bak"), False),
        (FileCreatedEvent(b"/etc/shim/config.yaml"), True),
    ],
)
def test_an_event_concerns_the_file_by_either_of_its_paths(event: FileSystemEvent, expected: bool) -> None:
    assert concerns(event, "config.yaml") is expected


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A package `lazyprobe` whose module `heavy` counts how often its code ran."""
    root = tmp_path / "lazyprobe"
    root.mkdir()
    (root / "__init__.py").write_text("runs = []\n")
    (root / "heavy.py").write_text("import lazyprobe\nlazyprobe.runs.append(1)\nVALUE = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "lazyprobe"
    for name in [n for n in sys.modules if n == "lazyprobe" or n.startswith("lazyprobe.")]:
        del sys.modules[name]


def test_a_lazy_module_runs_only_when_read_from_and_then_is_the_module_itself(package: str) -> None:
    lazy(f"{package}.heavy")
    parent = importlib.import_module(package)
    exec(f"import {package}.heavy")  # what watchdog's import statement does
    assert parent.runs == []
    assert parent.heavy.VALUE == 42
    assert parent.runs == [1]
    real = sys.modules[f"{package}.heavy"]
    assert type(real) is types.ModuleType and real.VALUE == 42 and parent.heavy.VALUE == 42
    assert parent.runs == [1]


def test_a_name_imported_from_a_lazy_module_loads_it(package: str) -> None:
    lazy(f"{package}.heavy")
    namespace: dict[str, object] = {}
    exec(f"from {package}.heavy import VALUE", namespace)
    assert namespace["VALUE"] == 42
    assert importlib.import_module(package).runs == [1]


def test_a_module_already_imported_or_missing_is_left_as_it_is(package: str) -> None:
    heavy = importlib.import_module(f"{package}.heavy")
    lazy(f"{package}.heavy")
    assert sys.modules[f"{package}.heavy"] is heavy
    lazy(f"{package}.missing")
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module(f"{package}.missing")
