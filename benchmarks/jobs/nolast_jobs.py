"""Integer jobs from a generator WITHOUT a ``last`` parameter, and a no-op handler.

A resume cannot ask such a generator to start late, so taskmaster must pull and skip the
jobs below the watermark. If $BENCH_MARK_FILE is set, the first handler call in the
process tree writes time.time() into that file (created exclusively, so the first call
across all workers wins): resume_skip.py uses it to time the way to the first new job.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

_MARK = os.environ.get("BENCH_MARK_FILE")


def get_jobs(n: str = "1000") -> Iterator[int]:
    yield from range(int(n))


def _mark() -> None:
    global _MARK
    path, _MARK = _MARK, None
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return
    with os.fdopen(fd, "w") as f:
        f.write(repr(time.time()))


def handle_job(job: int) -> None:
    if _MARK is not None:
        _mark()
