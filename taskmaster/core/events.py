"""The small facts that cross between the coordinator and a transport.

Transports (local processes, ZeroMQ) turn these into bytes their own way; the coordinator
only sees these classes. Exceptions cross as text, never as live objects.
"""

from __future__ import annotations

from typing import Protocol

from taskmaster.record import record
from taskmaster.store.failures import FailureKind


@record
class TaskSent:
    """A batch of jobs for a worker: ``count`` jobs starting at ``first_seq``."""

    task_id: int
    first_seq: int
    count: int
    codec: str
    payload: bytes


@record
class JobFailed:
    index: int  # position in the batch
    error: str  # "Type: message"
    traceback: str
    kind: FailureKind = FailureKind.RAISED


@record
class BatchDone:
    """Every job of a batch ran; the ones in ``failures`` raised."""

    task_id: int
    elapsed: float
    failures: tuple[JobFailed, ...] = ()


@record
class BatchUnreadable:
    """The worker could not decode the batch (a job's class failed to unpickle)."""

    task_id: int
    error: str
    traceback: str


@record
class JobTimedOut:
    """A job ran past --job-timeout; its worker is about to exit."""

    task_id: int
    index: int
    seconds: float


@record
class WorkerLost:
    """A worker is gone; the batches it held must run again.

    ``queued`` lists the held batches the worker had certainly not started (waiting in its
    local queue): they did not cause the death, so they run again uncharged.
    ``setup_failed``: the worker died in ``setup_worker``, before taking any batch;
    ``detail`` is then the user's traceback of it (empty if the worker could not send it).
    """

    worker_id: int
    pid: int
    task_ids: tuple[int, ...]
    reason: str
    queued: tuple[int, ...] = ()
    setup_failed: bool = False
    detail: str = ""


@record
class Stop:
    """Tells a worker to finish what it holds and exit."""


@record
class Notice:
    """Something the user should know that no rule acts on, from the transport: e.g. that
    no Ray actor could be placed for a while. The coordinator shows it as a message."""

    text: str


Event = BatchDone | BatchUnreadable | JobTimedOut | WorkerLost | Notice


class Transport(Protocol):
    """Gives batches to workers and reports what came back.

    ``wait`` blocks until an event arrives, a file descriptor in ``wake_fds`` is readable
    or ``timeout`` passes. A transport never drops a batch silently: a batch sent is
    answered by a BatchDone, a BatchUnreadable, or its id in a WorkerLost.

    ``batch_seconds`` is how much work short jobs are batched into: more where a batch
    costs more to hand over.
    """

    batch_seconds: float

    def start(self) -> None: ...

    def free_slots(self) -> int: ...

    def send(self, task: TaskSent) -> None: ...

    def wait(self, timeout: float | None, wake_fds: list[int]) -> list[Event]: ...

    def close(self, kill: bool = False) -> None: ...
