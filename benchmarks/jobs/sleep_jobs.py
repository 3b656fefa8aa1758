"""I/O-bound jobs: each handler call sleeps ``SLEEP`` seconds (the GIL is released)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

SLEEP = 0.01


def get_jobs(last: Any = 0, n: str = "1000") -> Iterator[int]:
    yield from range(int(last or 0), int(n))


def handle_job(job: int) -> None:
    time.sleep(SLEEP)
