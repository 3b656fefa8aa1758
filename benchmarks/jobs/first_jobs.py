"""Jobs 0..n-1 (none by default) that stamp when job 0 is yielded and when its handler starts.

With ``$TM_BENCH_STAMP`` set, ``get_jobs`` writes ``time.monotonic()`` to ``STAMP.yield``
just before it yields job 0 and the handler writes it to ``STAMP.run`` when job 0 starts.
The monotonic clock is the system's, so the two stamps compare across processes.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

STAMP = os.environ.get("TM_BENCH_STAMP")


def _stamp(suffix: str) -> None:
    if STAMP:
        with open(STAMP + suffix, "w") as f:
            f.write(repr(time.monotonic()))


def get_jobs(last: Any = 0, n: str = "0") -> Iterator[int]:
    for i in range(int(last or 0), int(n)):
        if i == 0:
            _stamp(".yield")
        yield i


def handle_job(job: int) -> None:
    if job == 0:
        _stamp(".run")
