"""The window ledger: the watermark never passes an unresolved seq, whatever the pull sizes,
completion orders and partial resolves; ``held`` is the window's occupancy; the resolved
ranges above the watermark are exactly the units resolved there; resume skips them."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from taskmaster.core.ledger import Ledger, ResolvedRange, Unit

# -- unit tests ------------------------------------------------------------------------------


def test_fresh_ledger_is_empty() -> None:
    ledger = Ledger()
    assert ledger.watermark == 0
    assert ledger.held == 0
    assert ledger.open_units == 0
    assert ledger.lowest_open() is None
    assert ledger.resolved_above() == []
    assert ledger.tail is None


def test_units_get_consecutive_seqs_and_tail() -> None:
    ledger = Ledger()
    a = ledger.open_unit(["a", "b", "c"])
    b = ledger.open_unit(["d"])
    assert (a.start, a.end, b.start, b.end) == (0, 3, 3, 4)
    assert ledger.next_seq == 4
    assert ledger.held == 4
    assert ledger.tail == (3, "d")
    assert ledger.watermark == 0
    assert ledger.lowest_open() is a


def test_empty_unit_is_refused() -> None:
    with pytest.raises(ValueError):
        Ledger().open_unit([])


def test_watermark_waits_for_the_lowest_unit() -> None:
    ledger = Ledger()
    a = ledger.open_unit([0, 1])
    b = ledger.open_unit([2, 3])
    c = ledger.open_unit([4])
    ledger.resolve(b, done=2)
    assert ledger.watermark == 0, "b resolved first: a still holds the watermark"
    assert ledger.resolved_above() == [ResolvedRange(2, 4, None)]
    ledger.resolve(a, done=1)
    assert ledger.watermark == 0, "a is only half resolved"
    ledger.resolve(a, failed=1)
    assert ledger.watermark == 4
    assert ledger.resolved_above() == []
    assert ledger.lowest_open() is c
    ledger.resolve(c, done=1)
    assert ledger.watermark == 5
    assert (ledger.done, ledger.failed, ledger.held) == (4, 1, 0)


def test_resolved_range_keeps_the_unit_digest() -> None:
    ledger = Ledger()
    ledger.open_unit([0])
    b = ledger.open_unit([1, 2])
    b.digest = "d1"
    ledger.resolve(b, done=2)
    assert ledger.resolved_above() == [ResolvedRange(1, 3, "d1")]


def test_settled_counts_leave_out_jobs_of_open_units() -> None:
    # A resumed run runs an open unit again whole: a checkpoint counting its resolved jobs
    # would count them twice over all runs.
    ledger = Ledger.resume(0, [], done=5, failed=1)
    a = ledger.open_unit(list(range(4)))
    b = ledger.open_unit(list(range(3)))
    ledger.resolve(a, done=2, failed=1)
    ledger.resolve(b, done=3)
    assert (ledger.done, ledger.failed) == (10, 2)
    assert ledger.settled() == (8, 1)
    ledger.resolve(a, failed=1)
    assert ledger.settled() == (10, 3) == (ledger.done, ledger.failed)


def test_resolve_more_than_remaining_is_refused() -> None:
    ledger = Ledger()
    a = ledger.open_unit([0, 1])
    with pytest.raises(ValueError):
        ledger.resolve(a, done=3)
    ledger.resolve(a, done=2)
    with pytest.raises(ValueError, match="resolving"):
        ledger.resolve(a, done=1)  # the unit is closed
    assert ledger.done == 2


def test_resolving_nothing_is_a_no_op() -> None:
    ledger = Ledger()
    a = ledger.open_unit([0])
    ledger.resolve(a)
    assert ledger.watermark == 0 and a.remaining == 1


def test_resume_starts_at_the_watermark_and_skips_resolved_ranges() -> None:
    ranges = [ResolvedRange(20, 30, "x"), ResolvedRange(40, 45, "y")]
    ledger = Ledger.resume(10, ranges, done=25, failed=3)
    assert (ledger.watermark, ledger.next_seq, ledger.done, ledger.failed) == (10, 10, 25, 3)
    assert ledger.next_resolved_start() == 20
    assert ledger.resolved_range_at(20) == ranges[0]
    assert ledger.resolved_range_at(21) is None
    a = ledger.open_unit(list(range(10, 20)))
    assert ledger.next_resolved_start() == 20
    ledger.skip_resolved(10, "job29")
    assert ledger.next_seq == 30 and ledger.tail == (29, "job29")
    assert ledger.next_resolved_start() == 40
    assert ledger.watermark == 10
    assert ledger.resolved_above() == ranges, "nothing is pruned while 10..19 is open"
    ledger.resolve(a, done=10)
    assert ledger.watermark == 30
    assert ledger.resolved_above() == [ranges[1]]
    assert ledger.done == 35


def test_resume_ignores_ranges_below_the_watermark_and_empty_ones() -> None:
    ledger = Ledger.resume(10, [ResolvedRange(2, 5, "a"), ResolvedRange(12, 12, "b")])
    assert ledger.resolved_above() == []
    assert ledger.next_resolved_start() is None


def test_reopened_range_is_not_claimed_resolved_while_open() -> None:
    # A resumed run finds different jobs at a range the last run resolved, so it runs them:
    # until they are resolved again the checkpoint must not list that range as resolved.
    ledger = Ledger.resume(0, [ResolvedRange(5, 10, "old")])
    low = ledger.open_unit(list(range(5)))
    again = ledger.open_unit(list(range(5, 10)))
    assert ledger.resolved_above() == []
    again.digest = "new"
    ledger.resolve(again, done=5)
    assert ledger.resolved_above() == [ResolvedRange(5, 10, "new")]
    ledger.resolve(low, done=5)
    assert ledger.resolved_above() == [] and ledger.watermark == 10


# -- the property test -----------------------------------------------------------------------


class LedgerMachine(RuleBasedStateMachine):
    """Drives a Ledger the way the coordinator does and checks it against a per-seq model."""

    @initialize(
        resume=st.booleans(),
        watermark=st.integers(0, 50),
        gaps=st.lists(st.tuples(st.integers(0, 6), st.integers(1, 8)), max_size=4),
    )
    def start(self, resume: bool, watermark: int, gaps: list[tuple[int, int]]) -> None:
        self.resolved_seqs: set[int] = set()  # the model: seqs resolved, one by one
        self.open: dict[int, Unit] = {}
        self.remaining: dict[int, int] = {}  # the model's own count per open unit
        self.done_units: dict[int, tuple[int, str | None]] = {}  # start -> (end, digest)
        self.old_ranges: dict[int, ResolvedRange] = {}  # from the previous run, not yet met
        self.last_wm = 0
        self.settled = [0, 0]  # done, failed of closed units (and of the previous run)
        self.open_counts: dict[int, list[int]] = {}
        if not resume:
            self.ledger = Ledger()
            return
        ranges, at = [], watermark
        for gap, length in gaps:
            start = at + gap + 1  # the watermark itself is unresolved
            ranges.append(ResolvedRange(start, start + length, f"d{start}"))
            at = start + length
        self.ledger = Ledger.resume(watermark, ranges, done=7, failed=1)
        self.settled = [7, 1]
        self.resolved_seqs.update(range(watermark))
        for r in ranges:
            self.resolved_seqs.update(range(r.start, r.end))
            self.old_ranges[r.start] = r
        self.last_wm = watermark

    def _room_to_next_range(self) -> int | None:
        later = [s for s in self.old_ranges if s >= self.ledger.next_seq]
        return min(later) - self.ledger.next_seq if later else None

    @precondition(lambda self: self._room_to_next_range() != 0)
    @rule(n=st.integers(1, 9))
    def pull(self, n: int) -> None:
        room = self._room_to_next_range()
        if room is not None:
            n = min(n, room)
        start = self.ledger.next_seq
        unit = self.ledger.open_unit([f"job{s}" for s in range(start, start + n)])
        unit.digest = f"d{start}"
        self.open[start] = unit
        self.remaining[start] = n
        assert self.ledger.tail == (start + n - 1, f"job{start + n - 1}")

    @precondition(lambda self: self._room_to_next_range() == 0)
    @rule(unchanged=st.booleans())
    def meet_old_range(self, unchanged: bool) -> None:
        rng = self.old_ranges.pop(self.ledger.next_seq)
        assert self.ledger.next_resolved_start() == rng.start
        assert self.ledger.resolved_range_at(rng.start) == rng
        if unchanged:  # same jobs as last time: skipped
            self.ledger.skip_resolved(rng.end - rng.start, f"job{rng.end - 1}")
            self.done_units[rng.start] = (rng.end, rng.digest)
            return
        # the jobs changed since: they run again
        self.resolved_seqs.difference_update(range(rng.start, rng.end))
        unit = self.ledger.open_unit([f"new{s}" for s in range(rng.start, rng.end)])
        unit.digest = f"new{rng.start}"
        self.open[rng.start] = unit
        self.remaining[rng.start] = rng.end - rng.start

    @precondition(lambda self: bool(self.open))
    @rule(data=st.data())
    def resolve(self, data: st.DataObject) -> None:
        start = data.draw(st.sampled_from(sorted(self.open)), label="unit")
        left = self.remaining[start]
        done = data.draw(st.integers(0, left), label="done")
        failed = data.draw(st.integers(0, left - done), label="failed")
        unit = self.open[start]
        before = (self.ledger.done, self.ledger.failed)
        self.ledger.resolve(unit, done=done, failed=failed)
        assert (self.ledger.done, self.ledger.failed) == (before[0] + done, before[1] + failed)
        self.remaining[start] -= done + failed
        counts = self.open_counts.setdefault(start, [0, 0])
        counts[0] += done
        counts[1] += failed
        if self.remaining[start] == 0:
            del self.open[start], self.remaining[start]
            self.settled[0] += counts[0]
            self.settled[1] += counts[1]
            del self.open_counts[start]
            self.resolved_seqs.update(range(unit.start, unit.end))
            self.done_units[start] = (unit.end, unit.digest)

    @invariant()
    def watermark_never_passes_an_unresolved_seq(self) -> None:
        wm = self.ledger.watermark
        missing = [s for s in range(wm) if s not in self.resolved_seqs]
        assert not missing, f"watermark {wm} passed unresolved seqs {missing}"
        lowest_unresolved = min(
            [*self.open, self.ledger.next_seq]
        )  # nothing pulled at or above next_seq is resolved yet
        assert wm == lowest_unresolved, "the watermark lags behind what is resolved"

    @invariant()
    def watermark_is_monotonic(self) -> None:
        wm = self.ledger.watermark
        assert wm >= self.last_wm
        self.last_wm = wm

    @invariant()
    def held_is_the_jobs_of_open_units(self) -> None:
        assert self.ledger.held == sum(len(u.jobs) for u in self.open.values())
        assert self.ledger.open_units == len(self.open)
        lowest = self.ledger.lowest_open()
        if self.open:
            assert lowest is self.open[min(self.open)]
        else:
            assert lowest is None

    @invariant()
    def settled_counts_leave_out_open_units(self) -> None:
        assert self.ledger.settled() == tuple(self.settled)

    @invariant()
    def resolved_above_lists_exactly_the_units_resolved_above(self) -> None:
        wm = self.ledger.watermark
        expected = sorted(
            [
                ResolvedRange(s, end, digest)
                for s, (end, digest) in self.done_units.items()
                if s >= wm
            ]
            + [r for r in self.old_ranges.values()],
            key=lambda r: r.start,
        )
        assert self.ledger.resolved_above() == expected


TestLedgerMachine = LedgerMachine.TestCase
TestLedgerMachine.settings = settings(max_examples=200, stateful_step_count=40, deadline=None)


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(1, 20), min_size=1, max_size=30),
    order=st.randoms(use_true_random=False),
)
def test_any_completion_order_ends_at_the_last_seq(sizes: list[int], order: random.Random) -> None:
    """Pull everything, resolve in a random order one job at a time: the watermark only ever
    stops at the start of an open unit, and ends at the total."""
    ledger = Ledger()
    units = [ledger.open_unit(list(range(n))) for n in sizes]
    steps = [u for u in units for _ in u.jobs]
    order.shuffle(steps)
    last = 0
    for unit in steps:
        ledger.resolve(unit, done=1)
        wm = ledger.watermark
        assert wm >= last
        last = wm
        assert all(u.remaining == 0 for u in units if u.end <= wm)
        assert wm == sum(sizes) or any(u.start == wm and u.remaining for u in units)
    assert ledger.watermark == sum(sizes) == ledger.done
    assert ledger.held == 0 and ledger.resolved_above() == []
