"""Async I/O-bound jobs: each handler call awaits ``asyncio.sleep(SLEEP)``."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

SLEEP = 0.01


def get_jobs(last: Any = 0, n: str = "1000") -> Iterator[int]:
    yield from range(int(last or 0), int(n))


async def handle_job(job: int) -> None:
    await asyncio.sleep(SLEEP)
