"""Sleeping jobs that stamp when each ran: ``slot_use.py`` reads the stamps.

Each handler call writes ``start end`` (the system's monotonic clock) to a file per process
in ``$TM_BENCH_STAMPS``. ``mode=async`` makes the handler ``async def``.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

SLEEP = 0.01
_fds: dict[int, int] = {}


def get_jobs(last: Any = 0, n: str = "1000", mode: str = "threads") -> Iterator[int]:
    yield from range(int(last or 0), int(n))


def _stamp(start: float, end: float) -> None:
    fd = _fds.get(os.getpid())
    if fd is None:
        path = os.path.join(os.environ["TM_BENCH_STAMPS"], str(os.getpid()))
        fd = _fds[os.getpid()] = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.write(fd, b"%f %f\n" % (start, end))


def _sleep_job(job: int) -> None:
    start = time.monotonic()
    time.sleep(SLEEP)
    _stamp(start, time.monotonic())


handle_job: Any = _sleep_job
if os.environ.get("TM_BENCH_ASYNC"):  # asyncio only then: it costs ~20 ms to import
    import asyncio

    async def _async_job(job: int) -> None:
        start = time.monotonic()
        await asyncio.sleep(SLEEP)
        _stamp(start, time.monotonic())

    handle_job = _async_job
