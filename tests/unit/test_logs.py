"""The time field of a log line: RFC 3339 in UTC with milliseconds, never rounded up into the next second."""

from __future__ import annotations

import pytest

from image_cri_shim import logs


@pytest.mark.parametrize(
    ("created", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (1795975323.1234, "2026-11-29T18:02:03.123Z"),
        (1795975323.9999, "2026-11-29T18:02:03.999Z"),  # never rounded up into the next second
    ],
)
def test_timestamp_format(created: float, text: str) -> None:
    assert logs.timestamp(created) == text
