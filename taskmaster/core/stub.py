"""A transport and a clock for tests: script what the workers report, in-process.

:class:`StubTransport` keeps every batch the coordinator sends in :attr:`held` until the
test says what became of it (:meth:`complete`, :meth:`lose`, :meth:`time_out`,
:meth:`unreadable`); the events come back on the coordinator's next ``wait``. With
:class:`FakeClock`, retry delays, checkpoint intervals and drain timeouts are the test's
to advance. Nothing here starts a process, opens a socket or touches a file::

    transport, clock = StubTransport(slots=2), FakeClock()
    coord = Coordinator(opt, JobSource(iter(range(8))), transport, Ledger(), base,
                        None, None, QuietReporter(), clock=clock)
    coord.step()                      # dispatches two batches
    transport.lose([1])               # the worker holding batch 1 died
    coord.step()                      # the batch is split and sent again
"""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterable
from typing import Any

from taskmaster.core.events import (
    BatchDone,
    BatchUnreadable,
    Event,
    JobFailed,
    JobTimedOut,
    TaskSent,
    WorkerLost,
)
from taskmaster.core.pull import BATCH_SECONDS
from taskmaster.store import codec


class FakeClock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class StubTransport:
    """A Transport whose workers are the test: batches wait in ``held`` until scripted."""

    batch_seconds = BATCH_SECONDS

    def __init__(self, slots: int = 4) -> None:
        self.slots = slots
        self.held: dict[int, TaskSent] = {}
        self.sent: list[TaskSent] = []  # every batch ever sent, in order
        self.events: collections.deque[Event] = collections.deque()
        self.on_wait: Callable[[StubTransport, float | None], None] | None = None
        self.started = False
        self.closed: bool | None = None  # None until closed; then whether it was a kill
        self._pid = 0

    # -- the Transport protocol ----------------------------------------------------------

    def start(self) -> None:
        self.started = True

    def free_slots(self) -> int:
        return self.slots - len(self.held)

    def send(self, task: TaskSent) -> None:
        self.held[task.task_id] = task
        self.sent.append(task)

    def wait(self, timeout: float | None, wake_fds: list[int]) -> list[Event]:
        if self.on_wait is not None:
            self.on_wait(self, timeout)
        out = list(self.events)
        self.events.clear()
        return out

    def close(self, kill: bool = False) -> None:
        self.closed = kill

    # -- scripting -----------------------------------------------------------------------

    def jobs(self, task_id: int) -> list[Any]:
        task = self.held[task_id]
        jobs: list[Any] = codec.loads(task.codec, task.payload)
        return jobs

    def seqs(self, task_id: int) -> range:
        task = self.held[task_id]
        return range(task.first_seq, task.first_seq + task.count)

    def complete(
        self, task_id: int, failed: Iterable[int] = (), error: str = "ValueError: boom"
    ) -> None:
        """The batch ran; the jobs at the ``failed`` indexes raised."""
        self.held.pop(task_id)
        failures = tuple(JobFailed(i, error, "") for i in sorted(set(failed)))
        self.events.append(BatchDone(task_id, 0.001, failures))

    def complete_all(self) -> None:
        for task_id in list(self.held):
            self.complete(task_id)

    def lose(
        self,
        task_ids: Iterable[int],
        queued: Iterable[int] = (),
        setup_failed: bool = False,
        detail: str = "",
    ) -> None:
        """A worker holding ``task_ids`` died; it had not started those in ``queued``.
        ``detail``: the traceback of a failed ``setup_worker``."""
        ids = tuple(task_ids)
        for task_id in ids:
            self.held.pop(task_id)
        self._pid += 1
        self.events.append(
            WorkerLost(
                0, self._pid, ids, "was killed by SIGKILL", tuple(queued), setup_failed, detail
            )
        )

    def time_out(self, task_id: int, index: int, seconds: float = 5.0) -> None:
        """A job ran over --job-timeout; its worker exits, holding only that batch."""
        self.events.append(JobTimedOut(task_id, index, seconds))
        self.lose([task_id])

    def unreadable(self, task_id: int) -> None:
        self.held.pop(task_id)
        self.events.append(BatchUnreadable(task_id, "ModuleNotFoundError: gone", ""))
