"""Which of watchdog's events in the config directory concern the config file."""

from __future__ import annotations

import pytest
from watchdog.events import FileCreatedEvent, FileModifiedEvent, FileMovedEvent, FileSystemEvent

from image_cri_shim.supervisor.watch import concerns


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
