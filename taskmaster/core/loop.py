"""The parent loop: pull jobs into the window, hand batches to a transport, take results back.

One step of the loop dispatches what it can, waits for events (or a signal, or a timer),
handles them, and checkpoints when due. It knows nothing of processes or sockets: any
:class:`~taskmaster.core.events.Transport` works, so the local runner and the ZeroMQ master
share every rule about retries, failures and the watermark.

Rules that keep jobs from being lost:
- the watermark passes a seq only when its result arrived, or its failure is fsynced in
  the failures file (failures are written before the checkpoint that counts them);
- a batch held by a worker that died runs again: split into smaller pieces, uncharged,
  until a single job is left; a single job that loses its worker is charged an attempt,
  unless the worker had not started it yet or was stopped for another job's timeout;
- nothing is checkpointed after a failed write to the state folder.
"""

from __future__ import annotations

import collections
import heapq
import random
import textwrap
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from taskmaster import failpoints
from taskmaster.core.events import (
    BatchDone,
    BatchUnreadable,
    Event,
    JobTimedOut,
    TaskSent,
    Transport,
    WorkerLost,
)
from taskmaster.core.ledger import Ledger, Unit
from taskmaster.core.ratelimit import TokenBucket
from taskmaster.core.source import JobSource
from taskmaster.core.stats import Reporter, RunStats, Snapshot, StateSink
from taskmaster.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, StateIOError
from taskmaster.options import Options
from taskmaster.store import codec
from taskmaster.store.checkpoint import Anchor, State
from taskmaster.store.failures import FailureLog, make_record

BATCH_SECONDS = 0.05  # aim for batches of about this much work: short jobs batch, long do not
MAX_BATCH = 4096
BATCH_BYTES = 1 << 20  # big jobs go in smaller batches: a pipe moves ~1 MiB without stalling
TICK = 0.1
SETUP_FAILURES = 3  # workers in a row dying in setup_worker, with no batch done between, stop a run


class PullInterrupted(BaseException):
    """Raised by the Ctrl-C handler while get_jobs blocks, so that a stop never waits on it.

    A BaseException, so that the generator and JobSource let it through.
    """


@dataclass(slots=True, eq=False)
class Task:
    task_id: int
    unit: Unit
    lo: int  # index range in unit.jobs
    hi: int
    attempt: int  # 1 for a first run; every charged loss or failure adds one
    not_before: float = 0.0


class Coordinator:
    def __init__(
        self,
        options: Options,
        source: JobSource,
        transport: Transport,
        ledger: Ledger,
        base_state: State,
        state_sink: StateSink | None,
        failure_log: FailureLog | None,
        reporter: Reporter,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.opt = options
        self.source = source
        self.transport = transport
        self.ledger = ledger
        self.base = base_state
        self.sink = state_sink
        self.failure_log = failure_log
        self.reporter = reporter
        self.clock = clock
        self.stats = RunStats()
        self._initial = (ledger.done, ledger.failed)
        self._task_ids = 0
        self.in_flight: dict[int, Task] = {}
        self.ready: collections.deque[Task] = collections.deque()
        self.delayed: list[tuple[float, int, Task]] = []
        self._timed_out: dict[int, tuple[int, float]] = {}
        self._per_job = 0.0  # EWMA of seconds per job, from workers' reports
        self._job_bytes = 0  # encoded size of a job, from the latest unit
        self.stopping: str | None = None  # why the run stops early, once it does
        self._stop_at = 0.0
        self.aborted = False
        self.io_error: StateIOError | None = None
        self._saved: tuple[int, int, int] | None = None
        self._last_ckpt = 0.0
        self._last_tick = 0.0
        self.wake_fds: list[int] = []
        self.on_wake: Callable[[], None] = lambda: None
        self.pulling = False  # inside get_jobs, where only an exception gets the loop back
        self._setup_failures = 0  # in a row, since a batch was last done
        self._setup_reported: str | None = None  # the setup_worker traceback last shown
        self._pull_stopped = False
        self._t0 = clock()
        self.bucket = TokenBucket(options.rate, self._t0) if options.rate else None

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> RunStats:
        started = self._t0 = self.clock()
        self._last_ckpt = started
        if self.source.notice:
            self.reporter.message(self.source.notice)
        self.reporter.tick(self.snapshot(started))
        try:
            while not self._over():
                self.step()
        finally:
            self.transport.close(kill=self.aborted)
            self.stats.elapsed = self.clock() - started
        self.checkpoint(final=True)
        return self._final_stats()

    def step(self) -> None:
        """One turn: dispatch, wait for events (or a timer), handle them, checkpoint."""
        now = self.clock()
        if self.stopping and now - self._stop_at > self.opt.drain_timeout:
            why = f"jobs still running after --drain-timeout {self.opt.drain_timeout:g} s"
            self.reporter.message(f"stopping now: {why}; they run again on --resume")
            self.abort(why)
            return
        self._dispatch(now)
        if self._over():
            return
        events = self.transport.wait(self._timeout(now), self.wake_fds)
        self.on_wake()
        for event in events:
            self.handle(event)
        now = self.clock()
        if now - self._last_ckpt >= self.opt.checkpoint_every:
            self.checkpoint()
        if now - self._last_tick >= TICK:
            self._last_tick = now
            self.reporter.tick(self.snapshot(now))

    def _over(self) -> bool:
        if self.aborted:
            return True
        if self.in_flight:
            return False
        if self.stopping:
            return True
        if self.ready or self.delayed:
            return False
        return self.source.exhausted or self._limit_reached()

    def _timeout(self, now: float) -> float:
        timeout = min(TICK, max(0.0, self._last_ckpt + self.opt.checkpoint_every - now))
        if self.delayed:
            timeout = min(timeout, max(0.0, self.delayed[0][0] - now))
        if self.bucket is not None:
            timeout = min(timeout, self.bucket.wait(now))
        return timeout

    # -- stopping --------------------------------------------------------------------------

    def request_stop(self, why: str) -> None:
        """Stop pulling and dispatching; let batches in flight finish (first Ctrl-C)."""
        if self.stopping is None:
            self.stopping = why
            self._stop_at = self.clock()

    def abort(self, why: str) -> None:
        """Stop now: workers are killed, their jobs stay unresolved (second Ctrl-C)."""
        self.request_stop(why)
        self.aborted = True

    # -- dispatch --------------------------------------------------------------------------

    def _dispatch(self, now: float) -> None:
        if self.stopping:
            return
        while self.delayed and self.delayed[0][0] <= now:
            self.ready.append(heapq.heappop(self.delayed)[2])
        bucket = self.bucket
        while self.transport.free_slots() > 0 and (bucket is None or bucket.ready(now)):
            if self.ready:
                self._send(self.ready.popleft())
            elif not self._pull():
                break

    def _limit_reached(self) -> bool:
        return self.opt.limit is not None and self.ledger.next_seq >= self.opt.limit

    def _pull(self) -> bool:
        """Pull one unit into the window and send it; False when nothing can be pulled."""
        ledger = self.ledger
        while not (self.source.exhausted or self._limit_reached() or self._pull_stopped):
            # The window counts from the watermark, not only what is held: one slow job may
            # be passed by at most --size others, so the jobs finished above the watermark,
            # and the checkpoint that lists them, stay bounded too.
            room = self.opt.size - (ledger.next_seq - ledger.watermark)
            if room <= 0:
                return False
            n = min(self._batch_size(), room)
            if self.opt.limit is not None:
                n = min(n, self.opt.limit - ledger.next_seq)
            skip_at = ledger.next_resolved_start()
            if skip_at is not None and skip_at > ledger.next_seq:
                n = min(n, skip_at - ledger.next_seq)
            elif skip_at == ledger.next_seq:
                if self._skip_resolved():
                    continue
                return True
            jobs = self._from_source(n)
            failpoints.hit("gen.after_pull")
            if jobs:
                self._send(self._new_task(ledger.open_unit(jobs), 0, len(jobs), 1))
                return True
        if self.source.error is not None and self.stopping is None:
            self.request_stop("get_jobs raised")
        return False

    def _skip_resolved(self) -> bool:
        """At a range a previous run resolved: skip it if its jobs are unchanged."""
        rng = self.ledger.resolved_range_at(self.ledger.next_seq)
        assert rng is not None
        jobs = self._from_source(rng.end - rng.start, max_wait=float("inf"))
        if not jobs:
            return True
        encoded = codec.encode_batch(jobs)
        if len(jobs) == rng.end - rng.start and encoded and codec.digest(encoded[1]) == rng.digest:
            self.ledger.skip_resolved(len(jobs), jobs[-1])
            self.stats.skipped += len(jobs)
            return True
        self._send(self._new_task(self.ledger.open_unit(jobs), 0, len(jobs), 1))
        return False

    def _from_source(self, n: int, max_wait: float = 0.02) -> list[Any]:
        """Up to ``n`` jobs from get_jobs, which is left for good if a stop interrupts it.

        The jobs it yielded in this call are not in the window yet, so the checkpoint does
        not cover them and --resume pulls them again.
        """
        self.pulling = True
        try:
            return self.source.pull(n, max_wait)
        except PullInterrupted:
            return []
        finally:
            self.pulling = False

    def interrupt_pull(self) -> None:
        """For signal handlers: get the loop back from a get_jobs that blocks (once)."""
        if self.pulling and not self._pull_stopped:
            self._pull_stopped = True
            raise PullInterrupted

    def _batch_size(self) -> int:
        if self.opt.batch_size is not None:
            return self.opt.batch_size
        if self.bucket is not None:  # small batches keep job starts smooth under --rate
            return self.bucket.batch
        # Short jobs go in big batches; long jobs alone, so none waits behind another. Until
        # the first result tells how long a job takes, batches are single jobs: a guess too
        # big would park seconds of work behind one thread.
        if self._per_job <= 0:
            return 1
        slots = max(1, self.transport.free_slots() + len(self.in_flight))
        # Half the window in flight leaves the other half for batches finishing out of order.
        cap = min(MAX_BATCH, self.opt.size // (2 * slots), BATCH_BYTES // max(1, self._job_bytes))
        return max(1, min(cap, int(BATCH_SECONDS / self._per_job)))

    def _new_task(self, unit: Unit, lo: int, hi: int, attempt: int) -> Task:
        self._task_ids += 1
        return Task(self._task_ids, unit, lo, hi, attempt)

    def _send(self, task: Task) -> None:
        unit = task.unit
        whole = task.lo == 0 and task.hi == len(unit.jobs)
        jobs = unit.jobs if whole else unit.jobs[task.lo : task.hi]
        encoded = codec.encode_batch(jobs)
        if encoded is None:
            self._isolate_unencodable(task)
            return
        name, payload = encoded
        if whole and unit.digest is None:
            unit.digest = codec.digest(payload)
            self._job_bytes = len(payload) // len(jobs)
        self.in_flight[task.task_id] = task
        if self.bucket is not None:
            self.bucket.take(task.hi - task.lo, self.clock())
        self.transport.send(
            TaskSent(task.task_id, unit.start + task.lo, task.hi - task.lo, name, payload)
        )

    def _isolate_unencodable(self, task: Task) -> None:
        """Fail the jobs that cannot be serialized; send the others in contiguous pieces."""
        unit, bad, start = task.unit, [], task.lo
        pieces: list[Task] = []
        for i in range(task.lo, task.hi):
            try:
                codec.dumps(unit.jobs[i])
            except codec.EncodeError as exc:
                bad.append(
                    (
                        i,
                        f"EncodeError: job of type {type(unit.jobs[i]).__name__} "
                        f"cannot be serialized by pickle or dill ({exc})",
                        "",
                    )
                )
                if i > start:
                    pieces.append(self._new_task(unit, start, i, task.attempt))
                start = i + 1
        if start < task.hi:
            pieces.append(self._new_task(unit, start, task.hi, task.attempt))
        self._fail_for_good(unit, bad, task.attempt)
        self.ready.extendleft(reversed(pieces))

    # -- results ---------------------------------------------------------------------------

    def handle(self, event: Event) -> None:
        if isinstance(event, BatchDone):
            self._on_done(event)
        elif isinstance(event, WorkerLost):
            self._on_lost(event)
        elif isinstance(event, JobTimedOut):
            self._timed_out[event.task_id] = (event.index, event.seconds)
        elif isinstance(event, BatchUnreadable):
            task = self.in_flight.pop(event.task_id, None)
            if task is not None:
                error = f"UnpickleError: the worker could not rebuild the job ({event.error})"
                self._lost_task(task, error, event.traceback)

    def _on_done(self, event: BatchDone) -> None:
        task = self.in_flight.pop(event.task_id, None)
        if task is None:
            return  # a late answer for a batch already re-dispatched: counted once
        failpoints.hit("parent.after_ack_before_wm")
        self._setup_failures = 0
        n = task.hi - task.lo
        self._per_job = (
            event.elapsed / n
            if self._per_job <= 0
            else (0.8 * self._per_job + 0.2 * event.elapsed / n)
        )
        if not event.failures:
            self.ledger.resolve(task.unit, done=n)
            return
        final: list[tuple[int, str, str]] = []
        for failure in event.failures:
            index = task.lo + failure.index
            if task.attempt <= self.opt.retries:
                self._retry(task.unit, index, task.attempt)
            else:
                final.append((index, failure.error, failure.traceback))
        self.ledger.resolve(task.unit, done=n - len(event.failures))
        self._fail_for_good(task.unit, final, task.attempt)

    def _retry(self, unit: Unit, index: int, attempt: int) -> None:
        retry = self._new_task(unit, index, index + 1, attempt + 1)
        delay = self.opt.retry_delay * (2 ** (attempt - 1)) * random.uniform(0.5, 1.5)
        retry.not_before = self.clock() + delay
        heapq.heappush(self.delayed, (retry.not_before, retry.task_id, retry))
        self.stats.retried += 1

    def _on_lost(self, event: WorkerLost) -> None:
        self.stats.workers_lost += 1
        tasks = [t for t in (self.in_flight.pop(i, None) for i in event.task_ids) if t]
        timed_out = {
            t.task_id: self._timed_out.pop(t.task_id) for t in tasks if t.task_id in self._timed_out
        }
        seqs = ", ".join(_seq_range(t) for t in tasks) or "no jobs"
        who = f"worker {event.worker_id} (pid {event.pid}) {event.reason}"
        if self.stopping:  # draining or aborting: nothing is charged or sent any more
            if not event.setup_failed:  # that one was reported, and the run is stopping for it
                self.reporter.message(
                    f"{who} holding {seqs}; they stay unresolved and run again on --resume"
                )
            return
        if event.setup_failed:
            self._on_setup_failed(who, event.detail)
        else:
            self.reporter.message(f"{who} holding {seqs}; they will run again")
        queued = set(event.queued)
        innocent: list[Task] = []
        for task in tasks:
            if task.task_id in timed_out:
                self._on_timed_out(task, *timed_out[task.task_id])
            elif timed_out or task.task_id in queued:
                # Not the cause: the worker was stopped for another job's timeout, or had not
                # started this batch. It runs again as it was, uncharged.
                innocent.append(self._new_task(task.unit, task.lo, task.hi, task.attempt))
            else:
                self._lost_task(task, f"WorkerDied: {who}", "")
        self.ready.extendleft(reversed(innocent))

    def _on_setup_failed(self, who: str, detail: str) -> None:
        """Workers that cannot start would be replaced forever: stop after a few in a row.
        A traceback is shown once, not again for each worker it happens to."""
        self._setup_failures += 1
        if detail != self._setup_reported:
            self._setup_reported = detail
            shown = f":\n{textwrap.indent(detail.rstrip(), '    ')}" if detail.strip() else ""
            self.reporter.message(who + shown)
        if self._setup_failures >= SETUP_FAILURES and self.stopping is None:
            self.reporter.message(
                f"stopping: {self._setup_failures} workers in a row could not start because "
                "setup_worker raised (its traceback is above). Fix it, then run again with "
                "--resume"
            )
            self.request_stop("setup_worker failed")

    def _on_timed_out(self, task: Task, index: int, seconds: float) -> None:
        """Charge the job that ran past --job-timeout; the rest of its batch runs again."""
        at = task.lo + index
        for lo, hi in ((task.lo, at), (at + 1, task.hi)):
            if lo < hi:
                self.ready.appendleft(self._new_task(task.unit, lo, hi, task.attempt))
        self._charge(
            self._new_task(task.unit, at, at + 1, task.attempt),
            f"JobTimeout: job ran over --job-timeout ({seconds:.1f} s)",
            "",
        )

    def _lost_task(self, task: Task, error: str, tb: str) -> None:
        """A batch came back without results: isolate the culprit by splitting, then charge."""
        n = task.hi - task.lo
        if n == 1:
            self._charge(task, error, tb)
            return
        step = max(1, -(-n // 4))
        pieces = [
            self._new_task(task.unit, lo, min(lo + step, task.hi), task.attempt)
            for lo in range(task.lo, task.hi, step)
        ]
        self.ready.extendleft(reversed(pieces))

    def _charge(self, task: Task, error: str, tb: str) -> None:
        if task.attempt <= self.opt.retries:
            self._retry(task.unit, task.lo, task.attempt)
        else:
            self._fail_for_good(task.unit, [(task.lo, error, tb)], task.attempt)

    def _fail_for_good(
        self, unit: Unit, failures: list[tuple[int, str, str]], attempts: int
    ) -> None:
        """Record failures durably, then count them resolved."""
        if not failures:
            return
        records = [
            make_record(unit.start + i, unit.jobs[i], e, tb, attempts) for i, e, tb in failures
        ]
        if self.failure_log is None:
            self.stats.failure_records.extend(records)
        elif self.io_error is None:
            try:
                self.failure_log.append(records)
            except StateIOError as exc:
                self._io_failed(exc)
                return  # not durable, so not resolved: they run again on --resume
        else:
            return
        self.ledger.resolve(unit, failed=len(records))
        if self.opt.max_failures is not None and self._failed_this_run() >= self.opt.max_failures:
            if self.stopping is None:
                self.reporter.message(
                    f"stopping: --max-failures {self.opt.max_failures} reached; finishing the "
                    "jobs in flight. Fix the cause, then run again with --resume"
                )
            self.request_stop(f"--max-failures {self.opt.max_failures} reached")

    def _failed_this_run(self) -> int:
        return self.ledger.failed - self._initial[1]

    def _io_failed(self, exc: StateIOError) -> None:
        if self.io_error is None:
            self.io_error = exc
            self.reporter.message(str(exc))
            self.request_stop("the state folder failed")

    # -- checkpoint and stats --------------------------------------------------------------

    def state(self, final: bool = False) -> State | None:
        """The checkpoint to write now; None when it cannot name the job to resume from."""
        ledger = self.ledger
        wm = ledger.watermark
        anchor = self.base.anchor  # a resumed run that has pulled nothing yet
        lowest = ledger.lowest_open()
        if lowest is not None:
            anchor = Anchor(wm, lowest.jobs[0], codec.job_digest(lowest.jobs[0]))
        elif ledger.tail is not None:
            anchor = Anchor(ledger.tail[0], ledger.tail[1], codec.job_digest(ledger.tail[1]))
        finished = (
            final
            and self.source.exhausted
            and self.source.error is None
            and not (ledger.open_units or self.stopping)
        )
        if anchor is not None and not _storable(anchor.job):
            if not finished:
                return None  # a job that cannot be serialized cannot be handed back as last
            anchor = None  # a finished run is never resumed from its anchor
        elapsed = max(1e-9, self.clock() - self._t0)
        done, failed = ledger.settled()  # an open unit runs again whole on resume
        return State(
            target=self.base.target,
            kwargs=self.base.kwargs,
            watermark=wm,
            anchor=anchor,
            resolved=tuple(ledger.resolved_above()),
            done=done,
            failed=failed,
            finished=finished,
            limit=self.opt.limit,
            started=self.base.started,
            updated=time.time(),
            runs=self.base.runs,
            rate=(ledger.done - self._initial[0]) / elapsed,
        )

    def checkpoint(self, final: bool = False) -> None:
        """Write the state file if anything changed (always at the end)."""
        self._last_ckpt = self.clock()
        if self.sink is None or self.io_error is not None:
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
            self._io_failed(exc)

    def snapshot(self, now: float) -> Snapshot:
        return Snapshot(
            done=self.ledger.done,
            failed=self.ledger.failed,
            retried=self.stats.retried,
            in_flight=sum(t.hi - t.lo for t in self.in_flight.values()),
            watermark=self.ledger.watermark,
            done_this_run=self.ledger.done - self._initial[0],
            elapsed=now - self._t0,
            workers_lost=self.stats.workers_lost,
            stopping=self.stopping is not None,
            total=self.total(),
        )

    def total(self) -> int | None:
        total = self.opt.total if self.opt.total is not None else self.source.total
        if total is not None and self.opt.limit is not None:
            total = min(total, self.opt.limit)
        return total

    def _final_stats(self) -> RunStats:
        s = self.stats
        s.done, s.failed = self.ledger.done, self.ledger.failed
        s.done_this_run = self.ledger.done - self._initial[0]
        s.failed_this_run = self._failed_this_run()
        s.watermark = self.ledger.watermark
        s.finished = self.source.exhausted and not self.stopping and not self.ledger.open_units
        s.generator_error = self.source.error
        s.interrupted = self.stopping is not None and self.io_error is None
        if self.io_error is not None:
            s.exit_code = self.io_error.exit_code
        elif self.source.error is not None or _stopped_by_failures(self.stopping):
            s.exit_code = EXIT_FAILED
        elif self.stopping:
            s.exit_code = EXIT_INTERRUPTED
        else:
            s.exit_code = EXIT_FAILED if self.ledger.failed else EXIT_OK
        return s


def _stopped_by_failures(why: str | None) -> bool:
    """Stops that end a run as failed (exit 1), not as interrupted."""
    return why is not None and ("max-failures" in why or why == "setup_worker failed")


def _storable(job: Any) -> bool:
    try:
        codec.dumps(job)
    except codec.EncodeError:
        return False
    return True


def _seq_range(task: Task) -> str:
    first = task.unit.start + task.lo
    last = task.unit.start + task.hi - 1
    return f"job {first}" if first == last else f"jobs {first}-{last}"
