"""Pulling jobs from the generator into the window, and cutting them into batches.

The window counts from the watermark, not only what is held: one slow job may be passed by
at most ``--size`` others, so the jobs finished above the watermark, and the checkpoint
that lists them, stay bounded too. On resume, ranges a previous run resolved above its
watermark are skipped when the digest of their jobs is unchanged.
"""

from __future__ import annotations

from typing import Any

from taskmaster import failpoints
from taskmaster.core.ledger import Ledger
from taskmaster.core.ratelimit import TokenBucket
from taskmaster.core.source import JobSource
from taskmaster.core.stats import Counters
from taskmaster.core.tasks import Task, TaskQueue
from taskmaster.options import Options
from taskmaster.store import codec

BATCH_SECONDS = 0.05  # aim for batches of about this much work: short jobs batch, long do not
MAX_BATCH = 16384
# Without --size, the window holds about this much encoded job data, within the bounds below:
# tiny jobs get a wide window, so they can travel in big batches (a batch costs a wake-up of
# the worker and of the parent, whatever its size), and big jobs keep the memory bound.
WINDOW_BYTES = 32 << 20
MIN_WINDOW = 10_000
MAX_AUTO_WINDOW = 100_000
BATCH_BYTES = 1 << 20  # big jobs go in smaller batches: a pipe moves ~1 MiB without stalling


class PullInterrupted(BaseException):
    """Raised by the Ctrl-C handler while get_jobs blocks, so that a stop never waits on it.

    A BaseException, so that the generator and JobSource let it through.
    """


class Puller:
    """Turns the generator's output into first-attempt tasks, one unit at a time."""

    def __init__(
        self,
        opt: Options,
        source: JobSource,
        ledger: Ledger,
        queue: TaskQueue,
        counters: Counters,
        bucket: TokenBucket | None,
    ) -> None:
        self.opt = opt
        self.source = source
        self.ledger = ledger
        self.queue = queue
        self.counters = counters
        self.bucket = bucket
        self.per_job = 0.0  # EWMA of seconds per job, from workers' reports
        self.job_bytes = 0  # encoded size of a job, from the latest unit
        self.pulling = False  # inside get_jobs, where only an exception gets the loop back
        self.stopped = False  # get_jobs was interrupted: it is not called again
        self.batch_seconds = BATCH_SECONDS  # the transport may want longer batches
        self.widest = self.window  # the widest window so far, which the checkpoint records

    @property
    def window(self) -> int:
        """``--size``, or, without it, as many jobs as make about WINDOW_BYTES encoded."""
        if self.opt.size is not None:
            return self.opt.size
        if self.job_bytes <= 0:
            return MIN_WINDOW
        return max(MIN_WINDOW, min(MAX_AUTO_WINDOW, WINDOW_BYTES // self.job_bytes))

    def limit_reached(self) -> bool:
        return self.opt.limit is not None and self.ledger.next_seq >= self.opt.limit

    @property
    def exhausted(self) -> bool:
        """Nothing more will be pulled in this run."""
        return self.source.exhausted or self.limit_reached()

    def observe(self, elapsed: float, jobs: int) -> None:
        """A batch of ``jobs`` took ``elapsed`` seconds: adapt the batch size."""
        each = elapsed / jobs
        self.per_job = each if self.per_job <= 0 else 0.8 * self.per_job + 0.2 * each

    def next_task(self, slots: int) -> Task | None:
        """The next unit as a task; None when the window is full or nothing can be pulled."""
        ledger = self.ledger
        while not (self.exhausted or self.stopped):
            window = self.window
            self.widest = max(self.widest, window)
            room = window - (ledger.next_seq - ledger.watermark)
            if room <= 0:
                return None
            n = min(self.batch_size(slots), room)
            if self.opt.limit is not None:
                n = min(n, self.opt.limit - ledger.next_seq)
            skip_at = ledger.next_resolved_start()
            if skip_at is not None and skip_at > ledger.next_seq:
                n = min(n, skip_at - ledger.next_seq)
            elif skip_at == ledger.next_seq:
                task = self._skip_resolved()
                if task is None:
                    continue
                return task
            jobs = self._from_source(n)
            failpoints.hit("gen.after_pull")
            if jobs:
                return self.queue.new(ledger.open_unit(jobs), 0, len(jobs), 1)
        return None

    def _skip_resolved(self) -> Task | None:
        """At a range a previous run resolved: skip it if its jobs are unchanged."""
        rng = self.ledger.resolved_range_at(self.ledger.next_seq)
        assert rng is not None
        jobs = self._from_source(rng.end - rng.start, max_wait=float("inf"))
        if not jobs:
            return None
        encoded = codec.encode_batch(jobs)
        if (
            len(jobs) == rng.end - rng.start
            and encoded
            and codec.same_batch(jobs, encoded[1], rng.digest)
        ):
            self.ledger.skip_resolved(len(jobs), jobs[-1])
            self.counters.skipped += len(jobs)
            return None
        return self.queue.new(self.ledger.open_unit(jobs), 0, len(jobs), 1)

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

    def interrupt(self) -> None:
        """For signal handlers: get the loop back from a get_jobs that blocks (once)."""
        if self.pulling and not self.stopped:
            self.stopped = True
            raise PullInterrupted

    def batch_size(self, slots: int) -> int:
        if self.opt.batch_size is not None:
            return self.opt.batch_size
        if self.bucket is not None:  # small batches keep job starts smooth under --rate
            return self.bucket.batch
        # Short jobs go in big batches; long jobs alone, so none waits behind another. Until
        # the first result tells how long a job takes, batches are single jobs: a guess too
        # big would park seconds of work behind one thread.
        if self.per_job <= 0:
            return 1
        slots = max(1, slots)
        # Half the window in flight leaves the other half for batches finishing out of order.
        cap = min(MAX_BATCH, self.window // (2 * slots), BATCH_BYTES // max(1, self.job_bytes))
        return max(1, min(cap, int(self.batch_seconds / self.per_job)))
