"""The original Taskmaster's example, shipped so its README's commands work as written.

    tm-run taskmaster/example.py 8          # from a checkout: 8 local workers
    tm-master taskmaster.example            # the module on the Python path, several hosts
    tm-slave taskmaster.example
    tm-spawn taskmaster.example 8
    tm-master taskmaster.example:get_jobs   # name the functions
    tm-slave taskmaster.example:handle_job

The original counted to 100,000,000 and printed every job; this one counts to 1,000,000 by
default (``count=N`` changes it) and stays quiet, so it is a demo of seconds, not minutes,
and the progress line stays readable.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any


def get_jobs(last: Any = 0, count: str = "1000000", **kwargs: str) -> Iterator[int]:
    # last is sent if the state was resumed from a previous run: start again at it.
    # Jobs yielded must be serializable with pickle.
    yield from range(int(last or 0), int(count))


def handle_job(job: int) -> None:
    # This **must** be idempotent, as resuming the process may execute a job that had
    # already been run.
    del job
