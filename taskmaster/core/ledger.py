"""The window's bookkeeping: which seqs are pulled, resolved, and where the watermark is.

Pure: no I/O, no clock, no processes, so property tests can drive it directly.

Jobs are pulled from the generator in *units*, contiguous seq ranges that keep their jobs
in memory until every seq in them is resolved (done, or failed for good and recorded).
The parent therefore keeps a handful of entries per window, not one per job.

Invariant: every seq below :attr:`Ledger.watermark` is resolved. A unit's start is the
watermark only while the unit is the lowest one still open, so the watermark can never
pass a seq whose result has not arrived.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Iterable
from typing import Any

from taskmaster.record import field, record
from taskmaster.store.checkpoint import ResolvedRange


@record(frozen=False, eq=False)
class Unit:
    """A contiguous run of jobs ``[start, start + len(jobs))`` pulled together."""

    start: int
    jobs: list[Any]
    remaining: int
    digest: str | None = None
    done: int = 0  # of its jobs resolved so far, for settled()
    failed: int = 0

    @property
    def end(self) -> int:
        return self.start + len(self.jobs)


@record(frozen=False)
class Ledger:
    """Tracks open units, the watermark, and resolved ranges above it."""

    next_seq: int = 0
    done: int = 0
    failed: int = 0
    held: int = 0  # jobs kept in memory by open units: the window's occupancy
    _open: dict[int, Unit] = field(default_factory=dict)
    _starts: list[int] = field(default_factory=list)  # heap of open starts, lazily pruned
    _resolved: dict[int, ResolvedRange] = field(default_factory=dict)
    # The starts of _resolved, sorted: a resume may bring tens of thousands of ranges, and
    # a scan per pull made that quadratic.
    _resolved_starts: list[int] = field(default_factory=list)
    tail: tuple[int, Any] | None = None  # (seq, job) of the last job pulled

    @classmethod
    def resume(
        cls, watermark: int, resolved: Iterable[ResolvedRange], done: int = 0, failed: int = 0
    ) -> Ledger:
        """A ledger that starts at ``watermark`` with ranges already resolved above it."""
        ledger = cls(next_seq=watermark, done=done, failed=failed)
        for rng in resolved:
            if rng.start >= watermark and rng.end > rng.start:
                ledger._add_resolved(rng)
        return ledger

    def _add_resolved(self, rng: ResolvedRange) -> None:
        if rng.start not in self._resolved:
            bisect.insort(self._resolved_starts, rng.start)
        self._resolved[rng.start] = rng

    def _drop_resolved(self, start: int) -> None:
        if self._resolved.pop(start, None) is not None:
            starts = self._resolved_starts
            del starts[bisect.bisect_left(starts, start)]

    @property
    def watermark(self) -> int:
        starts = self._starts
        while starts and starts[0] not in self._open:
            heapq.heappop(starts)
        return starts[0] if starts else self.next_seq

    @property
    def open_units(self) -> int:
        return len(self._open)

    def lowest_open(self) -> Unit | None:
        wm = self.watermark
        return self._open.get(wm)

    def open_unit(self, jobs: list[Any]) -> Unit:
        """Register jobs just pulled; they get the next seqs."""
        if not jobs:
            raise ValueError("a unit needs at least one job")
        unit = Unit(start=self.next_seq, jobs=jobs, remaining=len(jobs))
        self.next_seq += len(jobs)
        self._open[unit.start] = unit
        # A range the last run resolved whose jobs changed since runs again: until it is
        # resolved again, the checkpoint must not list it as resolved.
        self._drop_resolved(unit.start)
        heapq.heappush(self._starts, unit.start)
        self.held += len(jobs)
        self.tail = (unit.end - 1, jobs[-1])
        return unit

    def skip_resolved(self, count: int, last_job: Any) -> None:
        """Advance past ``count`` seqs that a previous run already resolved."""
        self.next_seq += count
        self.tail = (self.next_seq - 1, last_job)

    def next_resolved_start(self) -> int | None:
        """The start of the next recorded resolved range at or after ``next_seq``."""
        starts = self._resolved_starts
        i = bisect.bisect_left(starts, self.next_seq)
        return starts[i] if i < len(starts) else None

    def is_resolved(self, seq: int) -> bool:
        """Whether ``seq`` (already pulled) is done or failed for good."""
        if seq < self.watermark:
            return True
        if seq >= self.next_seq:
            return False
        # An open unit runs again whole on resume: none of its seqs counts as resolved.
        return all(not unit.start <= seq < unit.end for unit in self._open.values())

    def resolved_range_at(self, seq: int) -> ResolvedRange | None:
        return self._resolved.get(seq)

    def resolve(self, unit: Unit, done: int = 0, failed: int = 0) -> None:
        """Mark ``done + failed`` more jobs of ``unit`` resolved."""
        count = done + failed
        if count <= 0:
            return
        if unit.start not in self._open or count > unit.remaining:
            raise ValueError(f"resolving {count} jobs of unit {unit.start} with {unit.remaining}")
        unit.remaining -= count
        unit.done += done
        unit.failed += failed
        self.done += done
        self.failed += failed
        if unit.remaining == 0:
            was_lowest = unit.start == self.watermark
            del self._open[unit.start]
            self.held -= len(unit.jobs)
            if not was_lowest:
                self._add_resolved(ResolvedRange(unit.start, unit.end, unit.digest))

    def settled(self) -> tuple[int, int]:
        """(done, failed) without the jobs of open units: what a checkpoint may count.

        A resumed run runs an open unit again whole, so its resolved jobs would be
        counted twice over all runs.
        """
        open_units = self._open.values()
        return (
            self.done - sum(u.done for u in open_units),
            self.failed - sum(u.failed for u in open_units),
        )

    def resolved_above(self) -> list[ResolvedRange]:
        """Ranges resolved above the watermark, oldest first; prunes the ones below it."""
        wm = self.watermark
        starts = self._resolved_starts
        # Ranges never overlap, so the ones wholly below the watermark are a prefix.
        gone = 0
        while gone < len(starts) and self._resolved[starts[gone]].end <= wm:
            del self._resolved[starts[gone]]
            gone += 1
        del starts[:gone]
        return [self._resolved[s] for s in starts]
