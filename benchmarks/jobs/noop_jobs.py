"""Integer jobs 0..n-1 and a handler that does nothing: pure framework overhead.

Benchmarks only start fresh runs, so ``last`` is always its default here.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def get_jobs(last: Any = 0, n: str = "1000") -> Iterator[int]:
    yield from range(int(last or 0), int(n))


def handle_job(job: int) -> None:
    return None
