"""The schedule `make bench` replays as kubelet's calls at rest."""

from __future__ import annotations

from collections import Counter

from tools.bench import kubelet_schedule


def test_five_minutes_of_kubelet_at_rest() -> None:
    schedule = kubelet_schedule(300.0)
    assert Counter(call for _, call in schedule) == {"fs_info": 31, "list": 12}
    assert len(schedule) / 300.0 < 0.15  # about 0.14 calls a second
    assert [offset for offset, _ in schedule] == sorted(offset for offset, _ in schedule)
    assert schedule[:4] == [(0.0, "fs_info"), (0.0, "list"), (0.0, "list"), (0.0, "list")]


def test_a_short_replay_has_the_calls_due_in_it() -> None:
    assert kubelet_schedule(12.0) == [
        (0.0, "fs_info"),
        (0.0, "list"),
        (0.0, "list"),
        (0.0, "list"),
        (0.0, "fs_info"),
        (10.0, "fs_info"),
    ]
