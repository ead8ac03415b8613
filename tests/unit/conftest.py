"""Unit tests make grpc.aio channels outside a running loop; `asyncio.run` in an earlier test
leaves none current. Each test starts with a policy that makes one on demand."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest


@pytest.fixture(autouse=True)
def fresh_event_loop_policy() -> Iterator[None]:
    asyncio.set_event_loop_policy(None)
    yield
    asyncio.set_event_loop_policy(None)
