"""The rules that decide what happens to a job when its batch comes back, or does not.

No job is lost by these rules:
- a seq is resolved only by a result for it, or by its failure record durably written
  (a failure whose write failed stays unresolved and runs again on --resume);
- a batch held by a worker that died runs again, split into quarters, uncharged, until a
  single job is left; a single job that loses its worker is charged an attempt, unless the
  worker had not started it yet or was stopped for another job's timeout;
- a job that fails is retried ``--retries`` times after a delay that doubles (with jitter,
  capped at MAX_RETRY_DELAY), then failed for good. Without --retry-delay, the first delay
  is RETRY_DELAY, and while the failures look like an outage
  (OUTAGE_STREAK failed attempts in a row with no job done between: a database restarting
  refuses everyone), the delays start at OUTAGE_DELAY instead, so the default retries ride
  out a restart of tens of seconds. Isolated failures (bad rows among good ones) keep the
  short delays: a job waiting for its retry holds the watermark, and so the window;
- while the run stops (Ctrl-C, --max-failures...), nothing is charged: a lost batch stays
  unresolved, for --resume.

Three rules stop a run: ``--max-failures`` jobs failed for good in this run; BROKEN_STREAK
failures for good in a row with no job done between (unless ``--max-failures`` was given:
then it alone decides, and ``--max-failures 0`` never stops); SETUP_FAILURES workers in a
row dying in ``setup_worker``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from taskmaster import failpoints
from taskmaster.core.events import BatchDone, BatchUnreadable, JobTimedOut, WorkerLost
from taskmaster.core.ledger import Ledger, Unit
from taskmaster.core.stats import Counters
from taskmaster.core.stop import StopReason
from taskmaster.core.tasks import Task, TaskQueue
from taskmaster.errors import StateIOError, detail_block
from taskmaster.options import Options
from taskmaster.record import record
from taskmaster.store.failures import FailureKind, FailureRecord, make_record

SETUP_FAILURES = 3  # workers in a row dying in setup_worker, with no batch done between
BROKEN_STREAK = 100  # failures for good in a row, none done between: the run is broken
MAX_RETRY_DELAY = 60.0
OUTAGE_STREAK = 5  # failed attempts in a row, none done between: the backend looks down
RETRY_DELAY = 0.1  # first retry delay unless --retry-delay says
OUTAGE_DELAY = 8.0  # first retry delay during an outage: 8 + 16 s rides out a restart


def _random() -> float:
    """The retry jitter; ``random`` is imported at the first retry, not on every start."""
    import random

    return random.random()


@record
class Failure:
    """One job of a task that failed: its index in the unit and why."""

    index: int
    kind: FailureKind
    error: str
    traceback: str


class FailureSink(Protocol):
    """Where failures for good go: the failures file, or a list for the Python API."""

    def append(self, records: list[FailureRecord]) -> None: ...


class MemoryFailures:
    """A FailureSink that keeps records in memory (a run without a state file)."""

    def __init__(self) -> None:
        self.records: list[FailureRecord] = []

    def append(self, records: list[FailureRecord]) -> None:
        self.records.extend(records)


class Policy:
    """Applies the rules to each event; the loop does the rest (sending, checkpoints)."""

    def __init__(
        self,
        opt: Options,
        queue: TaskQueue,
        ledger: Ledger,
        failures: FailureSink,
        counters: Counters,
        clock: Callable[[], float],
        stop: Callable[[StopReason, str], None],
        message: Callable[[str], None],
        rng: Callable[[], float] = _random,
    ) -> None:
        self.opt = opt
        self.queue = queue
        self.ledger = ledger
        self.failures = failures
        self.counters = counters
        self.clock = clock
        self.stop = stop
        self.message = message
        self.rng = rng
        self.stopping = False  # set by the loop once a stop was requested
        self.state_failed: StateIOError | None = None
        self.failed_this_run = 0
        self._streak = 0  # failures for good since a job was last done
        self._failing = 0  # failed attempts since a job was last done
        self._setup_failures = 0  # in a row, since a batch was last done
        self._setup_reported: str | None = None  # the setup_worker traceback last shown
        self._timed_out: dict[int, tuple[int, float]] = {}

    # -- events ----------------------------------------------------------------------------

    def on_done(self, event: BatchDone) -> Task | None:
        """A batch came back; returns its task (None for a late answer already re-sent)."""
        task = self.queue.in_flight.pop(event.task_id, None)
        if task is None:
            return None
        failpoints.hit("parent.after_ack_before_wm")
        self._setup_failures = 0
        done = task.size - len(event.failures)
        self._failing = 0 if done else self._failing + len(event.failures)
        final: list[Failure] = []
        for f in event.failures:
            index = task.lo + f.index
            if task.attempt <= self.opt.retries:
                self._retry(task.unit, index, task.attempt)
            else:
                final.append(Failure(index, f.kind, f.error, f.traceback))
        self.ledger.resolve(task.unit, done=done)
        if done:
            self._streak = 0
        self.fail_for_good(task.unit, final, task.attempt)
        return task

    def on_timed_out(self, event: JobTimedOut) -> None:
        """Its worker is about to exit; the WorkerLost that follows charges the job."""
        self._timed_out[event.task_id] = (event.index, event.seconds)

    def on_unreadable(self, event: BatchUnreadable) -> None:
        task = self.queue.in_flight.pop(event.task_id, None)
        if task is not None:
            kind = FailureKind.UNPICKLE_ERROR
            error = kind.text(f"the worker could not rebuild the job ({event.error})")
            self.queue.again_first(self._lost_task(task, Failure(0, kind, error, event.traceback)))

    def on_lost(self, event: WorkerLost) -> None:
        self.counters.workers_lost += 1
        held = (self.queue.in_flight.pop(i, None) for i in event.task_ids)
        tasks = [t for t in held if t is not None]
        timed_out = {
            t.task_id: self._timed_out.pop(t.task_id) for t in tasks if t.task_id in self._timed_out
        }
        seqs = ", ".join(t.seqs() for t in tasks) or "no jobs"
        who = f"worker {event.worker_id} (pid {event.pid}) {event.reason}"
        if self.stopping:  # draining or aborting: nothing is charged or sent any more
            if not event.setup_failed:  # that one was reported, and the run is stopping for it
                self.message(
                    f"{who} holding {seqs}; they stay unresolved and run again on --resume"
                )
            return
        if event.setup_failed:
            self._on_setup_failed(who, event.detail)
        else:
            self.message(f"{who} holding {seqs}; they will run again")
        queued = set(event.queued)
        again: list[Task] = []
        for task in tasks:
            if task.task_id in timed_out:
                again += self._charge_timeout(task, *timed_out[task.task_id])
            elif timed_out or task.task_id in queued:
                # Not the cause: the worker was stopped for another job's timeout, or had not
                # started this batch. It runs again as it was, uncharged.
                again.append(self.queue.new(task.unit, task.lo, task.hi, task.attempt))
            else:
                kind = FailureKind.WORKER_DIED
                again += self._lost_task(task, Failure(0, kind, kind.text(who), ""))
        self.queue.again_first(sorted(again, key=lambda t: t.first_seq))

    def unencodable(self, task: Task, bad: list[tuple[int, str]]) -> None:
        """Jobs of ``task`` that cannot be serialized fail at once; the rest go in pieces."""
        kind = FailureKind.ENCODE_ERROR
        pieces, start = [], task.lo
        for index, _ in bad:
            if index > start:
                pieces.append(self.queue.new(task.unit, start, index, task.attempt))
            start = index + 1
        if start < task.hi:
            pieces.append(self.queue.new(task.unit, start, task.hi, task.attempt))
        failures = [Failure(i, kind, kind.text(why), "") for i, why in bad]
        self.fail_for_good(task.unit, failures, task.attempt)
        self.queue.again_first(pieces)

    # -- the rules -------------------------------------------------------------------------

    @property
    def outage(self) -> bool:
        """Failures in a row with nothing done between: the backend looks down."""
        return self._failing >= OUTAGE_STREAK

    def retry_delay(self, attempt: int) -> float:
        first = self.opt.retry_delay
        if first is None:
            first = OUTAGE_DELAY if self.outage else RETRY_DELAY
        base = first * (2 ** (attempt - 1))
        return float(min(MAX_RETRY_DELAY, base * (0.5 + self.rng())))

    def _retry(self, unit: Unit, index: int, attempt: int) -> None:
        retry = self.queue.new(unit, index, index + 1, attempt + 1)
        retry.not_before = self.clock() + self.retry_delay(attempt)
        self.queue.later(retry)
        self.counters.retried += 1

    def _on_setup_failed(self, who: str, detail: str) -> None:
        """Workers that cannot start would be replaced forever: stop after a few in a row.
        A traceback is shown once, not again for each worker it happens to."""
        self._setup_failures += 1
        if detail != self._setup_reported:
            self._setup_reported = detail
            self.message(who + detail_block(detail))
        if self._setup_failures >= SETUP_FAILURES:
            self.stop(
                StopReason.SETUP_FAILED,
                f"stopping: {self._setup_failures} workers in a row could not start because "
                "setup_worker raised (its traceback is above)",
            )

    def _charge_timeout(self, task: Task, index: int, seconds: float) -> list[Task]:
        """Charge the job that ran past --job-timeout; returns the rest of its batch."""
        at = task.lo + index
        kind = FailureKind.JOB_TIMEOUT
        error = kind.text(f"job ran over --job-timeout ({seconds:.1f} s)")
        self._charge(self.queue.new(task.unit, at, at + 1, task.attempt), kind, error, "")
        return [
            self.queue.new(task.unit, lo, hi, task.attempt)
            for lo, hi in ((task.lo, at), (at + 1, task.hi))
            if lo < hi
        ]

    def _lost_task(self, task: Task, why: Failure) -> list[Task]:
        """A batch came back without results: the pieces to run again, uncharged, to
        isolate the culprit; a single job is charged instead."""
        if task.size == 1:
            self._charge(task, why.kind, why.error, why.traceback)
            return []
        step = -(-task.size // 4)
        return [
            self.queue.new(task.unit, lo, min(lo + step, task.hi), task.attempt)
            for lo in range(task.lo, task.hi, step)
        ]

    def _charge(self, task: Task, kind: FailureKind, error: str, tb: str) -> None:
        if task.attempt <= self.opt.retries:
            self._retry(task.unit, task.lo, task.attempt)
        else:
            self.fail_for_good(task.unit, [Failure(task.lo, kind, error, tb)], task.attempt)

    def fail_for_good(self, unit: Unit, failures: list[Failure], attempts: int) -> None:
        """Record failures durably, then count them resolved; then the stopping rules."""
        if not failures or self.state_failed is not None:
            return  # after a failed write nothing is trusted: they run again on --resume
        records = [
            make_record(
                unit.start + f.index, unit.jobs[f.index], f.error, f.traceback, attempts, f.kind
            )
            for f in failures
        ]
        try:
            self.failures.append(records)
        except StateIOError as exc:
            self.state_failed = exc
            self.stop(StopReason.STATE_FAILED, str(exc))
            return
        self.ledger.resolve(unit, failed=len(records))
        self.failed_this_run += len(records)
        self._streak += len(records)
        self._judge(records[-1])

    def _judge(self, last: FailureRecord) -> None:
        limit = self.opt.max_failures
        if limit is not None:
            if limit and self.failed_this_run >= limit:
                self.stop(
                    StopReason.MAX_FAILURES,
                    f"stopping: --max-failures {limit} reached; finishing the jobs in flight",
                )
        elif self._streak >= BROKEN_STREAK:
            self.stop(
                StopReason.BROKEN_RUN,
                f"stopping: the last {self._streak:,} jobs all failed, which looks like a bug "
                f"rather than bad data. The latest: job {last.seq}: {last.error.splitlines()[0]}"
                "\n  Fix the cause and run again. To let a run go on through failures, pass "
                "--max-failures N (stop after N) or --max-failures 0 (never stop for failures)",
            )
