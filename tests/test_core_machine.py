"""A hypothesis state machine drives the coordinator through random event sequences.

Workers complete batches (some jobs failing), die holding batches (started or queued),
run over --job-timeout, their batches come back unreadable; Ctrl-C comes once or twice;
the checkpoint and failures writes fail; the clock jumps. A model records, per seq, what
the workers reported and what was made durable; after every step:

- no seq is resolved (below the watermark, or in the ledger above it) without a result that
  said it was done or a durable failure record;
- the failures sink holds each seq at most once;
- checkpoints never move backwards, and never count a seq that is not resolved.

At the end the run is allowed to finish, and every job is either done, in the failures
sink, or reachable by --resume: at or above the last checkpoint's watermark and outside its
resolved ranges.
"""

from __future__ import annotations

from typing import Any

import hypothesis.strategies as st
from hypothesis import HealthCheck, settings
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from taskmaster.core.ledger import Ledger
from taskmaster.core.loop import Coordinator
from taskmaster.core.source import JobSource
from taskmaster.core.stop import StopReason
from taskmaster.core.stub import FakeClock, StubTransport
from taskmaster.errors import StateIOError
from taskmaster.options import Options
from taskmaster.store.checkpoint import State
from taskmaster.store.failures import FailureRecord

N_JOBS = 60


class Sinks:
    def __init__(self) -> None:
        self.states: list[State] = []
        self.records: list[FailureRecord] = []
        self.state_fails = False
        self.records_fail = False

    def write(self, state: State) -> None:
        if self.state_fails:
            raise StateIOError("EIO")
        self.states.append(state)

    def append(self, records: list[FailureRecord]) -> None:
        if self.records_fail:
            raise StateIOError("ENOSPC")
        self.records.extend(records)

    def message(self, text: str) -> None:
        pass

    def tick(self, snap: Any) -> None:
        pass


class CoordinatorMachine(RuleBasedStateMachine):
    @initialize(
        size=st.integers(1, 30),
        slots=st.integers(1, 4),
        batch=st.sampled_from([None, 1, 3, 8]),
        retries=st.integers(0, 2),
        max_failures=st.sampled_from([None, 0, 1, 5]),
    )
    def start(
        self, size: int, slots: int, batch: int | None, retries: int, max_failures: int | None
    ) -> None:
        self.clock = FakeClock()
        self.transport = StubTransport(slots)
        self.sinks = Sinks()
        self.ok: set[int] = set()  # seqs some worker reported done
        opt = Options(
            workers=1,
            size=size,
            batch_size=batch,
            retries=retries,
            retry_delay=0.5,
            max_failures=max_failures,
            checkpoint_every=1.0,
            drain_timeout=30.0,
        )
        self.coord = Coordinator(
            opt,
            JobSource(iter(range(N_JOBS))),
            self.transport,
            Ledger(),
            State(target="m", kwargs={}),
            self.sinks,
            self.sinks,
            self.sinks,
            clock=self.clock,
            rng=lambda: 0.5,
        )

    def _held(self, data: st.DataObject) -> int:
        return data.draw(st.sampled_from(sorted(self.transport.held)))

    @rule()
    def step(self) -> None:
        if not self.coord.over():
            self.coord.step()

    @rule(seconds=st.sampled_from([0.1, 0.6, 1.5, 40.0]))
    def time_passes(self, seconds: float) -> None:
        self.clock.advance(seconds)

    @precondition(lambda self: self.transport.held)
    @rule(data=st.data())
    def batch_done(self, data: st.DataObject) -> None:
        task_id = self._held(data)
        seqs = self.transport.seqs(task_id)
        failed = data.draw(st.sets(st.integers(0, len(seqs) - 1)))
        self.ok.update(s for i, s in enumerate(seqs) if i not in failed)
        self.transport.complete(task_id, failed)

    @precondition(lambda self: self.transport.held)
    @rule(data=st.data())
    def worker_lost(self, data: st.DataObject) -> None:
        ids = data.draw(st.sets(st.sampled_from(sorted(self.transport.held)), min_size=1))
        queued = data.draw(st.sets(st.sampled_from(sorted(ids))))
        setup = data.draw(st.booleans())
        self.transport.lose(
            sorted(ids), queued=sorted(queued), setup_failed=setup and ids == queued
        )

    @precondition(lambda self: self.transport.held)
    @rule(data=st.data())
    def job_timed_out(self, data: st.DataObject) -> None:
        task_id = self._held(data)
        index = data.draw(st.integers(0, self.transport.held[task_id].count - 1))
        self.transport.time_out(task_id, index)

    @precondition(lambda self: self.transport.held)
    @rule(data=st.data())
    def unreadable(self, data: st.DataObject) -> None:
        self.transport.unreadable(self._held(data))

    @rule()
    def ctrl_c(self) -> None:
        if self.coord.stop is None:
            self.coord.request_stop(StopReason.INTERRUPTED)
        else:
            self.coord.abort()

    @rule()
    def state_write_fails(self) -> None:
        self.sinks.state_fails = True

    @rule()
    def failures_write_fails(self) -> None:
        self.sinks.records_fail = True

    # -- invariants ------------------------------------------------------------------------

    def _justified(self, seq: int) -> bool:
        return seq in self.ok or seq in self.durable

    @property
    def durable(self) -> set[int]:
        return {r.seq for r in self.sinks.records}

    @invariant()
    def resolved_only_with_a_result_or_a_durable_failure(self) -> None:
        ledger = self.coord.ledger
        for seq in range(ledger.next_seq):
            if ledger.is_resolved(seq):
                assert self._justified(seq), f"seq {seq} resolved without a result"

    @invariant()
    def each_seq_fails_for_good_once(self) -> None:
        seqs = [r.seq for r in self.sinks.records]
        assert len(seqs) == len(set(seqs))

    @invariant()
    def checkpoints_only_move_forward_over_resolved_jobs(self) -> None:
        marks = [s.watermark for s in self.sinks.states]
        assert marks == sorted(marks)
        if self.sinks.states:
            last = self.sinks.states[-1]
            for seq in range(last.watermark):
                assert self._justified(seq)
            for rng in last.resolved:
                assert all(self._justified(s) for s in range(rng.start, rng.end))

    def teardown(self) -> None:
        coord, transport = self.coord, self.transport
        if not hasattr(self, "coord"):
            return
        transport.on_wait = lambda t, _timeout: t.complete_all()
        original = transport.complete

        def completing(task_id: int, failed: Any = (), error: str = "ValueError: boom") -> None:
            self.ok.update(transport.seqs(task_id))
            original(task_id, failed, error)

        transport.complete = completing  # type: ignore[method-assign]
        for _ in range(10_000):
            if coord.over():
                break
            self.clock.advance(1.0)
            coord.step()
        assert coord.over()
        coord.checkpoint(final=True)
        last = self.sinks.states[-1] if self.sinks.states else None
        watermark = last.watermark if last else 0
        ranges = last.resolved if last else ()
        for seq in range(N_JOBS):
            above = seq >= watermark and not any(r.start <= seq < r.end for r in ranges)
            assert seq in self.ok or seq in self.durable or above, f"seq {seq} is lost"
        if coord.stop is None and not self.sinks.state_fails:
            assert last is not None and last.finished and last.watermark == N_JOBS


CoordinatorMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
TestCoordinatorMachine = CoordinatorMachine.TestCase
