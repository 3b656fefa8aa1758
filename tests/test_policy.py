"""The core's rules, in-process: a stub transport, a fake clock, milliseconds per test.

No process, socket or file: the coordinator is driven step by step and the events its
workers would report are scripted (see taskmaster.core.stub).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from taskmaster.core.ledger import Ledger
from taskmaster.core.loop import Coordinator
from taskmaster.core.policy import BROKEN_STREAK, SETUP_FAILURES
from taskmaster.core.source import JobSource
from taskmaster.core.stop import StopReason
from taskmaster.core.stub import FakeClock, StubTransport
from taskmaster.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_IOERR, EXIT_OK, StateIOError
from taskmaster.options import Options
from taskmaster.store.checkpoint import State
from taskmaster.store.failures import FailureKind, FailureRecord


@dataclass
class Books:
    """Sinks that record what the coordinator made durable, and can be told to fail."""

    states: list[State] = field(default_factory=list)
    failures: list[FailureRecord] = field(default_factory=list)
    messages: list[str] = field(default_factory=list)
    state_fails: bool = False
    failures_fail: bool = False

    def write(self, state: State) -> None:  # StateSink
        if self.state_fails:
            raise StateIOError("writing the checkpoint failed: EIO")
        self.states.append(state)

    def append(self, records: list[FailureRecord]) -> None:  # FailureSink
        if self.failures_fail:
            raise StateIOError("writing the failures file failed: ENOSPC")
        self.failures.extend(records)

    def message(self, text: str) -> None:  # Reporter
        self.messages.append(text)

    def tick(self, snap: Any) -> None:
        pass


def make(
    n: int = 8, slots: int = 2, jobs: list[Any] | None = None, **options: Any
) -> tuple[Coordinator, StubTransport, FakeClock, Books]:
    options.setdefault("batch_size", 8)
    options.setdefault("retry_delay", 1.0)
    options.setdefault("checkpoint_every", 1e9)  # only when a test asks
    transport, clock, books = StubTransport(slots), FakeClock(), Books()
    coord = Coordinator(
        Options(workers=1, **options),
        JobSource(iter(range(n) if jobs is None else jobs)),
        transport,
        Ledger(),
        State(target="t", kwargs={}),
        books,
        books,
        books,
        clock=clock,
        rng=lambda: 0.5,  # no jitter: a retry waits exactly retry_delay * 2**(attempt-1)
    )
    return coord, transport, clock, books


def sizes(transport: StubTransport) -> list[tuple[int, int]]:
    """(first seq, count) of every batch held now, in seq order."""
    return sorted((t.first_seq, t.count) for t in transport.held.values())


def turn(coord: Coordinator, clock: FakeClock) -> None:
    """Handle the scripted events, then send what they made ready."""
    coord.step()
    coord.dispatch(clock())


def auto_complete(transport: StubTransport) -> None:
    """From now on every batch sent succeeds."""
    transport.on_wait = lambda t, _timeout: t.complete_all()


def finish(coord: Coordinator, transport: StubTransport, clock: FakeClock) -> None:
    """Let every batch succeed until the run ends."""
    for _ in range(1000):
        if coord.over():
            return
        transport.complete_all()
        clock.advance(100)
        coord.step()
    pytest.fail("the run did not end")


def test_a_lost_batch_of_8_comes_back_as_four_uncharged_pairs() -> None:
    coord, transport, clock, books = make(n=8, slots=8)
    coord.step()
    assert sizes(transport) == [(0, 8)]
    transport.lose([transport.sent[0].task_id])
    turn(coord, clock)
    assert sizes(transport) == [(0, 2), (2, 2), (4, 2), (6, 2)]
    assert all(t.attempt == 1 for t in coord.queue.in_flight.values())
    assert coord.counters.retried == 0
    assert "they will run again" in books.messages[-1]


def test_splitting_down_to_one_job_then_charging_it() -> None:
    coord, transport, clock, books = make(n=2, slots=8, retries=1)
    coord.step()
    transport.lose([transport.sent[0].task_id])
    turn(coord, clock)
    assert sizes(transport) == [(0, 1), (1, 1)]
    single = next(t for t in transport.held.values() if t.first_seq == 1)
    transport.lose([single.task_id])
    turn(coord, clock)
    assert sizes(transport) == [(0, 1)]  # job 1 waits for its retry delay
    assert coord.counters.retried == 1
    clock.advance(0.99)
    coord.step()
    assert sizes(transport) == [(0, 1)]
    clock.advance(0.02)
    coord.step()
    assert sizes(transport) == [(0, 1), (1, 1)]
    again = next(t for t in transport.held.values() if t.first_seq == 1)
    transport.lose([again.task_id])  # its last attempt: failed for good
    coord.step()
    assert [(r.seq, r.kind, r.attempts) for r in books.failures] == [
        (1, FailureKind.WORKER_DIED, 2)
    ]
    assert books.failures[0].error.startswith("WorkerDied: worker 0")
    finish(coord, transport, clock)
    stats = coord.final_stats(0.0)
    assert (stats.done, stats.failed, stats.exit_code) == (1, 1, EXIT_FAILED)


def test_queued_batches_of_a_dead_worker_run_again_as_they_were() -> None:
    coord, transport, clock, books = make(n=8, slots=2, batch_size=4)
    coord.step()
    first, second = (t.task_id for t in transport.sent)
    transport.lose([first, second], queued=[second])
    turn(coord, clock)
    assert sizes(transport) == [(0, 1), (1, 1)]  # the first is split, in seq order
    assert [(t.first_seq, t.size) for t in coord.queue.ready] == [(2, 1), (3, 1), (4, 4)]


def test_a_timed_out_job_is_charged_and_its_neighbours_are_not() -> None:
    coord, transport, clock, books = make(n=5, slots=8, retries=0)
    coord.step()
    transport.time_out(transport.sent[0].task_id, index=2, seconds=5.0)
    turn(coord, clock)
    assert sizes(transport) == [(0, 2), (3, 2)]
    assert all(t.attempt == 1 for t in coord.queue.in_flight.values())
    assert [(r.seq, r.kind) for r in books.failures] == [(2, FailureKind.JOB_TIMEOUT)]


def test_a_failed_job_is_retried_after_a_doubling_delay_then_recorded() -> None:
    coord, transport, clock, books = make(n=1, slots=1, retries=2, retry_delay=1.0)
    delays = []
    for _ in range(3):
        coord.step()
        assert len(transport.held) == 1
        sent_at = clock.now
        transport.complete(transport.sent[-1].task_id, failed=[0])
        coord.step()
        if books.failures:
            break
        due = coord.queue.next_due()
        assert due is not None
        delays.append(due - sent_at)
        clock.now = due
    assert delays == [1.0, 2.0]
    assert books.failures[0].attempts == 3
    assert coord.counters.retried == 2


def test_max_failures_stops_the_run_and_lets_batches_in_flight_finish() -> None:
    coord, transport, clock, books = make(n=100, slots=2, batch_size=4, retries=0, max_failures=2)
    coord.step()
    a, b = (t.task_id for t in transport.sent)
    transport.complete(a, failed=[0, 1])
    coord.step()
    assert coord.stop is StopReason.MAX_FAILURES
    held, sent = set(transport.held), len(transport.sent)
    assert b in held
    coord.step()
    assert len(transport.sent) == sent  # nothing new is sent once stopping
    auto_complete(transport)
    stats = coord.run()
    assert (stats.stop, stats.exit_code, stats.done, stats.failed) == (
        StopReason.MAX_FAILURES,
        EXIT_FAILED,
        4 * sent - 2,  # every batch sent finished; no other was pulled
        2,
    )
    assert stats.watermark == 4 * sent
    assert "--resume" in (stats.ending() or pytest.fail("no ending")).message()


def test_a_run_where_every_job_fails_stops_as_broken() -> None:
    coord, transport, clock, books = make(n=10_000, slots=2, batch_size=10, retries=0)
    for _ in range(BROKEN_STREAK):
        coord.step()
        for task_id in list(transport.held):
            transport.complete(task_id, failed=range(10))
        if coord.stop is not None:
            break
    assert coord.stop is StopReason.BROKEN_RUN
    assert BROKEN_STREAK <= len(books.failures) <= BROKEN_STREAK + 20
    assert "--max-failures 0" in books.messages[-1]


def test_max_failures_zero_never_stops_for_failures() -> None:
    coord, transport, clock, books = make(n=500, slots=2, batch_size=10, retries=0, max_failures=0)
    while not coord.over():
        coord.step()
        for task_id in list(transport.held):
            transport.complete(task_id, failed=range(10))
    assert coord.stop is None and len(books.failures) == 500


def test_one_success_resets_the_broken_streak() -> None:
    coord, transport, clock, books = make(n=2000, slots=2, batch_size=10, retries=0)
    while not coord.over():
        coord.step()
        for task_id in list(transport.held):
            transport.complete(task_id, failed=range(9))  # one job in ten works
    assert coord.stop is None and len(books.failures) == 1800


def test_a_failed_failures_write_leaves_the_jobs_unresolved_and_stops() -> None:
    coord, transport, clock, books = make(n=8, slots=1, batch_size=4, retries=0)
    coord.step()
    books.failures_fail = True
    transport.complete(transport.sent[0].task_id, failed=[1])
    coord.step()
    assert coord.stop is StopReason.STATE_FAILED
    assert coord.ledger.watermark == 0  # job 1 is not durable, so not resolved
    assert not coord.ledger.is_resolved(1)
    auto_complete(transport)
    coord.run()
    assert coord.final_stats(0.0).exit_code == EXIT_IOERR
    assert books.states == []  # nothing is checkpointed after a failed write


def test_a_failed_checkpoint_write_stops_the_run_with_74() -> None:
    coord, transport, clock, books = make(n=8, slots=1, batch_size=4, checkpoint_every=1.0)
    coord.step()
    written = len(books.states)
    books.state_fails = True
    transport.complete(transport.sent[0].task_id)
    clock.advance(2)
    coord.step()
    assert coord.stop is StopReason.STATE_FAILED
    books.state_fails = False  # the folder recovers, but the run no longer trusts it
    auto_complete(transport)
    stats = coord.run()
    assert stats.exit_code == EXIT_IOERR and len(books.states) == written


def test_ctrl_c_drains_and_a_worker_lost_meanwhile_is_not_charged() -> None:
    coord, transport, clock, books = make(n=100, slots=2, batch_size=4, retries=0)
    coord.step()
    a, b = (t.task_id for t in transport.sent)
    coord.request_stop(StopReason.INTERRUPTED)
    transport.lose([a])
    transport.complete(b)
    coord.step()
    assert coord.over() and transport.held == {}
    stats = coord.run()
    assert (stats.stop, stats.exit_code, stats.done, stats.failed) == (
        StopReason.INTERRUPTED,
        EXIT_INTERRUPTED,
        4,
        0,
    )
    assert coord.ledger.watermark == 0 and not books.failures
    assert "stay unresolved" in books.messages[-1]


def test_the_drain_timeout_aborts() -> None:
    coord, transport, clock, books = make(n=100, slots=2, drain_timeout=5.0)
    coord.step()
    coord.request_stop(StopReason.INTERRUPTED)
    clock.advance(5.1)
    coord.step()
    assert coord.aborted and coord.stop is StopReason.INTERRUPTED  # the first reason wins
    stats = coord.run()
    assert transport.closed is True and stats.exit_code == EXIT_INTERRUPTED


def test_a_setup_traceback_is_shown_indented_once_and_a_blank_one_not_at_all() -> None:
    coord, transport, clock, books = make(n=100, slots=1)
    tb = "Traceback (most recent call last):\n  File x\nConnectionError: db down\n"
    for detail in (tb, tb, "  \n"):
        coord.step()
        held = list(transport.held)
        transport.lose(held, queued=held, setup_failed=True, detail=detail)
        coord.step()
    assert books.messages[:2] == [
        "worker 0 (pid 1) was killed by SIGKILL:\n    Traceback (most recent call last):\n"
        "      File x\n    ConnectionError: db down",
        # pid 2 sent the same traceback: not shown again; pid 3's is blank: no colon
        "worker 0 (pid 3) was killed by SIGKILL",
    ]


def test_workers_failing_setup_stop_the_run_after_a_few_in_a_row() -> None:
    coord, transport, clock, books = make(n=100, slots=1)
    for i in range(SETUP_FAILURES):
        coord.step()
        assert coord.stop is None, i
        held = list(transport.held)
        transport.lose(held, queued=held, setup_failed=True)
    coord.step()
    assert coord.stop is StopReason.SETUP_FAILED
    auto_complete(transport)
    stats = coord.run()
    assert stats.exit_code == EXIT_FAILED and not books.failures
    assert stats.workers_lost == SETUP_FAILURES


def test_an_unreadable_batch_is_split_then_charged_as_unpickle_error() -> None:
    coord, transport, clock, books = make(n=1, slots=1, retries=0)
    coord.step()
    transport.unreadable(transport.sent[0].task_id)
    turn(coord, clock)
    assert [r.kind for r in books.failures] == [FailureKind.UNPICKLE_ERROR]


def test_a_late_answer_for_a_batch_sent_again_counts_once() -> None:
    coord, transport, clock, books = make(n=4, slots=4, batch_size=4)
    coord.step()
    first = transport.sent[0]
    transport.lose([first.task_id])
    coord.step()
    transport.held[first.task_id] = first  # the dead worker's answer arrives after all
    transport.complete(first.task_id)
    finish(coord, transport, clock)
    assert coord.final_stats(0.0).done == 4


def test_an_unserializable_job_fails_alone() -> None:
    jobs: list[Any] = [0, 1, (i for i in ()), 3]  # neither pickle nor dill takes a generator
    coord, transport, clock, books = make(slots=4, jobs=jobs, batch_size=4)
    coord.step()
    assert [r.kind for r in books.failures] == [FailureKind.ENCODE_ERROR]
    finish(coord, transport, clock)
    assert coord.final_stats(0.0).done == 3


def test_a_run_to_its_end_is_finished_and_exits_0() -> None:
    coord, transport, clock, books = make(n=50, slots=2, batch_size=7, checkpoint_every=1.0)
    stats_before = coord.snapshot(clock.now)
    assert stats_before.done == 0
    finish(coord, transport, clock)
    coord.checkpoint(final=True)
    stats = coord.final_stats(1.0)
    assert (stats.done, stats.finished, stats.exit_code, stats.stop) == (50, True, EXIT_OK, None)
    assert books.states[-1].finished and books.states[-1].watermark == 50


def test_retries_back_off_harder_while_every_job_fails() -> None:
    coord, transport, clock, books = make(n=40, slots=8, batch_size=1, retry_delay=None)
    coord.step()
    for task_id in list(transport.held)[:4]:
        transport.complete(task_id, failed=[0])
    coord.step()
    due = sorted(t.not_before - clock.now for _, _, t in coord.queue.delayed)
    assert due == [pytest.approx(0.1)] * 4  # a few failures: the short delay
    for task_id in list(transport.held)[:4]:
        transport.complete(task_id, failed=[0])
    coord.step()
    assert coord.policy.outage
    due = sorted(t.not_before - clock.now for _, _, t in coord.queue.delayed)
    assert due[-1] == pytest.approx(8.0)  # eight in a row: an outage, the long delay
    transport.complete(next(iter(transport.held)))  # one job done: the backend is back
    coord.step()
    assert not coord.policy.outage


def test_an_explicit_retry_delay_is_kept_during_an_outage() -> None:
    coord, transport, clock, books = make(n=40, slots=8, batch_size=1, retry_delay=0.5)
    coord.step()
    for task_id in list(transport.held):
        transport.complete(task_id, failed=[0])
    coord.step()
    assert coord.policy.outage
    assert {t.not_before - clock.now for _, _, t in coord.queue.delayed} == {0.5}


@pytest.mark.timeout(10)
def test_a_transport_notice_is_shown_and_changes_nothing_else() -> None:
    from taskmaster.core.events import Notice

    coord, transport, clock, books = make(n=16, slots=2, batch_size=4)
    turn(coord, clock)
    held_before = sizes(transport)
    transport.events.append(Notice("no Ray actor placed"))
    turn(coord, clock)
    assert books.messages[-1] == "no Ray actor placed"
    assert sizes(transport) == held_before  # nothing resent, nothing charged
    finish(coord, transport, clock)
    assert coord.stop is None and coord.ledger.done == 16 and not books.failures
