"""The parent loop: pull jobs into the window, hand batches to a transport, take results back.

Data flow (one step of :meth:`Coordinator.step` moves every arrow once)::

    get_jobs(last, **kw)                                       failures.jsonl (fsynced)
         |                                                            ^
         v                                                            | failed for good
    Puller --unit--> Ledger (window, watermark)        Policy --------+
         |                 ^                              ^  retries, splits, charges
         v                 | resolve                      |  (TaskQueue: ready, delayed)
       Task --TaskSent--> Transport --> workers x threads |
                           (local pipes,  handle_job       |
                            ZeroMQ, Ray)      |            |
                                 <--BatchDone / WorkerLost / JobTimedOut
                                                  |
                  watermark --> checkpoint (State, written durably by a StateSink)

The loop knows nothing of processes or sockets: any :class:`~taskmaster.core.events.Transport`
works, so every transport shares every rule about retries, failures and the watermark. The
rules themselves are in :mod:`taskmaster.core.policy`; pulling and batching in
:mod:`taskmaster.core.pull`; why a run stops in :mod:`taskmaster.core.stop`.

Nothing is checkpointed after a failed write to the state folder.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol

from taskmaster.core.events import (
    BatchDone,
    BatchUnreadable,
    Event,
    JobTimedOut,
    Notice,
    TaskSent,
    Transport,
    WorkerLost,
)
from taskmaster.core.ledger import Ledger
from taskmaster.core.policy import FailureSink, MemoryFailures, Policy
from taskmaster.core.pull import Puller
from taskmaster.core.ratelimit import TokenBucket
from taskmaster.core.source import JobSource
from taskmaster.core.state import checkpoint_state
from taskmaster.core.stats import Counters, Reporter, RunStats, Snapshot, StateSink
from taskmaster.core.stop import StopReason, exit_code
from taskmaster.core.tasks import Task, TaskQueue
from taskmaster.errors import StateIOError
from taskmaster.options import Options
from taskmaster.store import codec
from taskmaster.store.checkpoint import State

TICK = 0.1


class TotalSource(Protocol):
    """The total job count, answered in the background (see local.counting)."""

    value: int | None
    error: str | None

    @property
    def fd(self) -> int | None: ...

    def poll(self) -> None: ...


class Coordinator:
    def __init__(
        self,
        options: Options,
        source: JobSource,
        transport: Transport,
        ledger: Ledger,
        base_state: State,
        state_sink: StateSink | None,
        failure_sink: FailureSink | None,
        reporter: Reporter,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] | None = None,
    ) -> None:
        self.opt = options
        self.source = source
        self.transport = transport
        self.ledger = ledger
        self.base = base_state
        self.sink = state_sink
        self.reporter = reporter
        self.clock = clock
        self.counters = Counters()
        self.queue = TaskQueue()
        sink = MemoryFailures() if failure_sink is None else failure_sink
        self.memory = sink if failure_sink is None and isinstance(sink, MemoryFailures) else None
        extra = {} if rng is None else {"rng": rng}
        self.policy = Policy(
            options,
            self.queue,
            ledger,
            sink,
            self.counters,
            clock,
            self._on_stop,
            reporter.message,
            **extra,
        )
        self._t0 = clock()
        self.bucket = TokenBucket(options.rate, self._t0) if options.rate else None
        self.puller = Puller(options, source, ledger, self.queue, self.counters, self.bucket)
        self.puller.batch_seconds = transport.batch_seconds
        self._initial_done = ledger.done
        self.stop: StopReason | None = None  # why the run stops early, once it does
        self._stop_at = 0.0
        self.aborted = False
        self._saved: tuple[int, int, int] | None = None
        self._last_ckpt = 0.0
        self._last_tick = 0.0
        self.wake_fds: list[int] = []
        self.on_wake: Callable[[], None] = lambda: None
        self.count: TotalSource | None = None  # count_jobs() answering in the background

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> RunStats:
        started = self._t0 = self.clock()
        self._last_ckpt = started
        if self.source.notice:
            self.reporter.message(self.source.notice)
        self.reporter.tick(self.snapshot(started))
        try:
            while not self.over():
                self.step()
        finally:
            self.transport.close(kill=self.aborted)
        if self.source.error is not None:  # also when it raised before the first step
            self.request_stop(StopReason.SOURCE_FAILED)
        elapsed = self.clock() - started
        self.checkpoint(final=True)
        return self.final_stats(elapsed)

    def step(self) -> None:
        """One turn: dispatch, wait for events (or a timer), handle them, checkpoint."""
        now = self.clock()
        if (
            self.stop is not None
            and not self.aborted
            and now - self._stop_at > self.opt.drain_timeout
        ):
            why = f"jobs still running after --drain-timeout {self.opt.drain_timeout:g} s"
            self.reporter.message(f"stopping now: {why}; they run again on --resume")
            self.request_stop(StopReason.DRAIN_TIMEOUT)
            self.aborted = True
            return
        self.dispatch(now)
        if self.over():
            return
        events = self.transport.wait(self._timeout(now), self._wake_fds())
        self.on_wake()
        self._poll_count()
        for event in events:
            self.handle(event)
        now = self.clock()
        if now - self._last_ckpt >= self.opt.checkpoint_every:
            self.checkpoint()
        if now - self._last_tick >= TICK:
            self._last_tick = now
            self.reporter.tick(self.snapshot(now))

    def over(self) -> bool:
        if self.aborted:
            return True
        if self.queue.in_flight:
            return False
        if self.stop is not None:
            return True
        return not self.queue.pending() and self.puller.exhausted

    def _wake_fds(self) -> list[int]:
        count = self.count
        if count is None or count.fd is None:
            return self.wake_fds
        return [*self.wake_fds, count.fd]

    def _poll_count(self) -> None:
        count = self.count
        if count is None or count.fd is None:
            return
        count.poll()
        if count.error is not None:
            self.reporter.message(f"warning: {count.error}; no ETA")
            self.count = None

    def _timeout(self, now: float) -> float:
        timeout = min(TICK, max(0.0, self._last_ckpt + self.opt.checkpoint_every - now))
        due = self.queue.next_due()
        if due is not None:
            timeout = min(timeout, max(0.0, due - now))
        if self.bucket is not None:
            timeout = min(timeout, self.bucket.wait(now))
        return timeout

    # -- stopping --------------------------------------------------------------------------

    def request_stop(self, reason: StopReason) -> None:
        """Stop pulling and dispatching; let batches in flight finish. The first reason wins."""
        if self.stop is None:
            self.stop = reason
            self._stop_at = self.clock()
            self.policy.stopping = True

    def abort(self, reason: StopReason = StopReason.ABORTED) -> None:
        """Stop now: workers are killed, their jobs stay unresolved (second Ctrl-C)."""
        self.request_stop(reason)
        self.aborted = True

    def _on_stop(self, reason: StopReason, message: str) -> None:
        """A rule of the policy stops the run; it is said once, for the first reason."""
        if self.stop is None:
            self.reporter.message(message)
        self.request_stop(reason)

    def interrupt_pull(self) -> None:
        """For signal handlers: get the loop back from a get_jobs that blocks (once)."""
        self.puller.interrupt()

    # -- dispatch --------------------------------------------------------------------------

    def dispatch(self, now: float) -> None:
        """Send what is ready, then pull new units while the transport has room."""
        if self.stop is not None:
            return
        self.queue.release_due(now)
        bucket = self.bucket
        while self.transport.free_slots() > 0 and (bucket is None or bucket.ready(now)):
            if self.queue.ready:
                self._send(self.queue.ready.popleft())
                continue
            task = self.puller.next_task(self.transport.free_slots() + len(self.queue.in_flight))
            if task is None:
                break
            self._send(task)
        if self.source.error is not None:
            self._on_stop(StopReason.SOURCE_FAILED, "stopping: get_jobs raised")

    def _send(self, task: Task) -> None:
        unit = task.unit
        whole = task.lo == 0 and task.hi == len(unit.jobs)
        jobs = unit.jobs if whole else unit.jobs[task.lo : task.hi]
        encoded = codec.encode_batch(jobs)
        if encoded is None:
            self.policy.unencodable(task, _unencodable(jobs, task.lo))
            return
        name, payload = encoded
        if whole and unit.digest is None:
            unit.digest = codec.digest(payload)
            self.puller.job_bytes = len(payload) // len(jobs)
        self.queue.in_flight[task.task_id] = task
        if self.bucket is not None:
            self.bucket.take(task.size, self.clock())
        self.transport.send(TaskSent(task.task_id, task.first_seq, task.size, name, payload))

    # -- results ---------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, BatchDone):
            task = self.policy.on_done(event)
            if task is not None:
                self.puller.observe(event.elapsed, task.size)
        elif isinstance(event, WorkerLost):
            self.policy.on_lost(event)
        elif isinstance(event, JobTimedOut):
            self.policy.on_timed_out(event)
        elif isinstance(event, BatchUnreadable):
            self.policy.on_unreadable(event)
        elif isinstance(event, Notice):
            self.reporter.message(event.text)

    # -- checkpoint and stats --------------------------------------------------------------

    def _finished(self, final: bool) -> bool:
        return (
            final
            and self.source.exhausted
            and self.source.error is None
            and self.stop is None
            and not self.ledger.open_units
        )

    def state(self, final: bool = False) -> State | None:
        """The checkpoint to write now; None when it cannot name the job to resume from."""
        rate = (self.ledger.done - self._initial_done) / max(1e-9, self.clock() - self._t0)
        done = self._finished(final)
        return checkpoint_state(
            self.ledger, self.base, self.opt, finished=done, rate=rate, window=self.puller.widest
        )

    def checkpoint(self, final: bool = False) -> None:
        """Write the state file if anything changed (always at the end)."""
        self._last_ckpt = self.clock()
        if self.sink is None or self.policy.state_failed is not None:
            return
        key = (self.ledger.watermark, self.ledger.done, self.ledger.failed)
        if key == self._saved and not final:
            return
        state = self.state(final)
        if state is None:
            if final:
                self.reporter.message(
                    "the last checkpoint was kept: the job at the new watermark cannot be "
                    "serialized to resume from, so --resume runs some finished jobs again"
                )
            return
        try:
            self.sink.write(state)
            self._saved = key
        except StateIOError as exc:
            self.policy.state_failed = exc
            self._on_stop(StopReason.STATE_FAILED, str(exc))

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            done=self.ledger.done,
            failed=self.ledger.failed,
            retried=self.counters.retried,
            in_flight=self.queue.jobs_in_flight(),
            watermark=self.ledger.watermark,
            done_this_run=self.ledger.done - self._initial_done,
            elapsed=now - self._t0,
            workers_lost=self.counters.workers_lost,
            stopping=self.stop is not None,
            total=self.total(),
            counting=self.counting,
        )

    def total(self) -> int | None:
        """Jobs in the run, when known: --total, count_jobs(), len(), else --limit."""
        total = self.opt.total
        if total is None and self.count is not None:
            total = self.count.value
        if total is None:
            total = self.source.total
        if total is not None and self.opt.limit is not None:
            total = min(total, self.opt.limit)
        return total if total is not None else self.opt.limit

    @property
    def counting(self) -> bool:
        return self.count is not None and self.count.value is None

    def final_stats(self, elapsed: float) -> RunStats:
        c, ledger = self.counters, self.ledger
        return RunStats(
            done=ledger.done,
            failed=ledger.failed,
            done_this_run=ledger.done - self._initial_done,
            failed_this_run=self.policy.failed_this_run,
            retried=c.retried,
            skipped=c.skipped,
            workers_lost=c.workers_lost,
            elapsed=elapsed,
            watermark=ledger.watermark,
            finished=self._finished(True),
            stop=self.stop,
            exit_code=exit_code(self.stop, ledger.failed),
            failure_records=tuple(self.memory.records) if self.memory else (),
            generator_error=self.source.error,
        )


def _unencodable(jobs: list[Any], offset: int) -> list[tuple[int, str]]:
    """(index, why) of each job of a batch that pickle and dill cannot serialize."""
    bad = []
    for i, job in enumerate(jobs):
        try:
            codec.dumps(job)
        except codec.EncodeError as exc:
            why = f"job of type {type(job).__name__} cannot be serialized by pickle or dill ({exc})"
            bad.append((offset + i, why))
    return bad
