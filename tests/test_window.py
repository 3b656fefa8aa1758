"""The window without --size: as wide as about 32 MiB of encoded jobs, 10,000 to 100,000 jobs.

In-process (stub transport, fake clock): one batch is held unfinished while every other one
completes, so the run goes exactly as far past the watermark as the window allows.
"""

from __future__ import annotations

from typing import Any

import pytest

from taskmaster.core.pull import MAX_AUTO_WINDOW, MIN_WINDOW, WINDOW_BYTES
from tests.test_policy import finish, make

pytestmark = pytest.mark.timeout(60)


def past_a_stuck_batch(jobs: list[Any], size: int | None = None) -> tuple[Any, Any, Any, Any]:
    """Run with the first batch stuck until nothing more is sent; the coordinator and books."""
    coord, transport, clock, books = make(jobs=jobs, slots=4, batch_size=None, size=size)
    coord.step()
    stuck = transport.sent[0].task_id
    sent = -1
    for _ in range(5000):
        if len(transport.sent) == sent:
            break
        sent = len(transport.sent)
        for task_id in list(transport.held):
            if task_id != stuck:
                transport.complete(task_id)
        clock.advance(0.01)
        coord.step()
    else:
        pytest.fail("the run kept sending past its window")
    return coord, transport, clock, books


def spread(coord: Any) -> int:
    return int(coord.ledger.next_seq - coord.ledger.watermark)


def test_small_jobs_get_the_widest_window_and_big_batches() -> None:
    coord, transport, clock, books = past_a_stuck_batch(list(range(300_000)))
    assert spread(coord) == MAX_AUTO_WINDOW
    biggest = max(t.count for t in transport.sent)
    assert 4 * (10_000 // (2 * 4)) < biggest <= MAX_AUTO_WINDOW // (2 * 4)  # was 1,250 at most
    coord.checkpoint()
    assert books.states[-1].window == MAX_AUTO_WINDOW
    assert books.states[-1].watermark == 0  # the stuck job holds it
    finish(coord, transport, clock)
    assert coord.final_stats(0.0).done == 300_000


def test_5kb_jobs_keep_a_window_of_10000() -> None:
    job = b"x" * 5000
    assert WINDOW_BYTES // len(job) < MIN_WINDOW
    coord, transport, clock, books = past_a_stuck_batch([job] * 30_000)
    assert spread(coord) == MIN_WINDOW
    assert max(t.count for t in transport.sent) <= (1 << 20) // len(job)  # a batch <= 1 MiB
    coord.checkpoint()
    assert books.states[-1].window == MIN_WINDOW


def test_jobs_in_between_get_32_mib_worth() -> None:
    job = b"y" * 1000
    coord, _transport, _clock, _books = past_a_stuck_batch([job] * 60_000)
    expected = coord.puller.window
    assert MIN_WINDOW < expected < MAX_AUTO_WINDOW
    assert abs(expected * coord.puller.job_bytes - WINDOW_BYTES) < coord.puller.job_bytes
    assert spread(coord) == expected


def test_an_explicit_size_is_the_window_whatever_the_jobs() -> None:
    coord, transport, _clock, books = past_a_stuck_batch(list(range(20_000)), size=500)
    assert spread(coord) == 500
    assert max(t.count for t in transport.sent) <= 500 // (2 * 4)
    coord.checkpoint()
    assert books.states[-1].window == 500


def test_the_checkpoint_records_the_widest_window_used() -> None:
    """A window that narrows (bigger jobs later) does not narrow what the checkpoint allows."""
    jobs: list[Any] = [1] * 150_000 + [b"z" * 5000] * 5_000
    coord, transport, clock, books = make(jobs=jobs, slots=4, batch_size=None, size=None)
    finish(coord, transport, clock)
    coord.checkpoint(final=True)
    assert coord.puller.window == MIN_WINDOW  # its latest jobs are 5 KB
    assert books.states[-1].window == MAX_AUTO_WINDOW
    assert coord.final_stats(0.0).done == len(jobs)
