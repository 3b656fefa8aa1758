"""Tasks: pieces of a unit on their way to a worker, and the queues they wait in."""

from __future__ import annotations

import collections
import heapq
from collections.abc import Iterable

from taskmaster.core.ledger import Unit
from taskmaster.record import record


@record(frozen=False, eq=False)
class Task:
    """Jobs ``unit.jobs[lo:hi]``, on their ``attempt``-th run."""

    task_id: int
    unit: Unit
    lo: int
    hi: int
    attempt: int  # 1 for a first run; every charged loss or failure adds one
    not_before: float = 0.0

    @property
    def size(self) -> int:
        return self.hi - self.lo

    @property
    def first_seq(self) -> int:
        return self.unit.start + self.lo

    def seqs(self) -> str:
        """``"job 7"`` or ``"jobs 7-12"``, for messages."""
        first, last = self.first_seq, self.unit.start + self.hi - 1
        return f"job {first}" if first == last else f"jobs {first}-{last}"


class TaskQueue:
    """Tasks ready to send (in seq order where it matters), delayed retries, and in flight."""

    def __init__(self) -> None:
        self._ids = 0
        self.ready: collections.deque[Task] = collections.deque()
        self.delayed: list[tuple[float, int, Task]] = []
        self.in_flight: dict[int, Task] = {}

    def new(self, unit: Unit, lo: int, hi: int, attempt: int) -> Task:
        self._ids += 1
        return Task(self._ids, unit, lo, hi, attempt)

    def again_first(self, tasks: Iterable[Task]) -> None:
        """Put ``tasks`` at the front, in their order: they hold the lowest seqs."""
        self.ready.extendleft(reversed(list(tasks)))

    def later(self, task: Task) -> None:
        heapq.heappush(self.delayed, (task.not_before, task.task_id, task))

    def release_due(self, now: float) -> None:
        while self.delayed and self.delayed[0][0] <= now:
            self.ready.append(heapq.heappop(self.delayed)[2])

    def next_due(self) -> float | None:
        return self.delayed[0][0] if self.delayed else None

    def pending(self) -> bool:
        """Work not yet sent: ready or delayed."""
        return bool(self.ready or self.delayed)

    def jobs_in_flight(self) -> int:
        return sum(t.size for t in self.in_flight.values())
