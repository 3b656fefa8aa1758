"""Jobs of ``size`` bytes each (5,000 by default), all distinct, and a no-op handler.

Each job is built in ``get_jobs`` as it is pulled, so only what a runner keeps alive
(its window, its queues, its futures) stays in memory.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def get_jobs(last: Any = 0, n: str = "1000", size: str = "5000") -> Iterator[bytes]:
    reps = max(1, int(size) // 10)
    for i in range(int(last or 0), int(n)):
        yield b"%010d" % i * reps


def handle_job(job: bytes) -> None:
    return None
