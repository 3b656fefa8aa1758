"""The actor: one long-lived worker process on a Ray cluster, running batch after batch.

It is the local worker's batch runner (``taskmaster.local.worker.Worker``) with Ray method
calls in place of the pipe: each ``run`` call takes one batch and returns its one result
(BatchDone or BatchUnreadable) instead of writing it down a pipe. ``setup_worker`` runs once,
in ``__init__``; if it raises, Ray reports the actor's death with ``actor_init_failed`` set.

Batches start strictly in the order the parent numbered them, at most ``threads`` at once, so
when an actor dies the parent knows which held batches it had certainly not started yet; and
none starts while the result of a finished one-job batch may still be inside (``ack``), so
such a job is not charged for a death that came after it.
"""

from __future__ import annotations

import asyncio
import contextvars
import os
import sys
import time
from typing import Any, cast

import ray

from taskmaster.core.events import BatchDone, BatchUnreadable, TaskSent
from taskmaster.errors import describe_error
from taskmaster.local.child import Conn
from taskmaster.local.worker import Worker, WorkerSpec
from taskmaster.ray.gate import StartGate

Result = BatchDone | BatchUnreadable

# The result of the batch this thread (or asyncio task) runs: Worker.send puts it here.
# (Module-level names reached from the actor classes' methods would be pickled with them;
# this one cannot be, so only _CallWorker, imported by reference on the actor, touches it.)
_result: contextvars.ContextVar[Result | None] = contextvars.ContextVar("tm_result", default=None)


class SetupFailed(Exception):
    """setup_worker raised; the actor cannot take batches."""


class _CallWorker(Worker):
    """A Worker whose results are a method call's return value instead of a pipe message."""

    def __init__(self, spec: WorkerSpec) -> None:
        super().__init__(cast(Conn, None), spec)

    def send(self, event: object) -> None:
        _result.set(cast(Result, event))

    def call(self, task: TaskSent, slot: int) -> Result:
        """Run one batch on this thread; its result."""
        _result.set(None)
        self.run_batch(task, slot)
        result = _result.get()
        assert result is not None
        return result

    async def call_async(self, task: TaskSent, gate: asyncio.Semaphore) -> Result:
        """Run one batch in this asyncio task; its result."""
        _result.set(None)
        await self._async_batch(task, gate)
        result = _result.get()
        assert result is not None
        return result


def _setup(spec: WorkerSpec) -> None:
    if spec.setup is None:
        return
    try:
        spec.setup()
    except BaseException as exc:
        error, tb = describe_error(exc)
        print(tb, file=sys.stderr, flush=True)  # Ray forwards it to the parent's terminal
        raise SetupFailed(f"setup_worker raised {error}") from None


def _where() -> tuple[int, str, str]:
    """This actor's pid, node address and node id, for the parent's messages."""
    context = ray.get_runtime_context()
    ip: str = ray.util.get_node_ip_address()  # type: ignore[no-untyped-call]
    return os.getpid(), ip, context.get_node_id()


def _late(worker: Worker, limit: float) -> list[tuple[int, int, float]]:
    now = time.monotonic()
    return [
        (entry[0], entry[1], now - entry[2])
        for entry in list(worker.current)
        if entry is not None and now - entry[2] > limit
    ]


@ray.remote(concurrency_groups={"control": 1})  # type: ignore[call-overload]
class TaskmasterActor:
    """``threads`` batches at once on Ray's thread pool; calls in the "control" group
    (ready, late, stop) answer while every runner thread is busy."""

    def __init__(self, spec: WorkerSpec) -> None:
        _setup(spec)
        self.spec = spec
        self.worker = _CallWorker(spec)
        self.gate = StartGate(spec.threads)

    @ray.method(concurrency_group="control")
    def ready(self) -> tuple[int, str, str]:
        return _where()

    def run(self, number: int, task: TaskSent) -> Result:
        slot = self.gate.enter(number)  # in the parent's order: see taskmaster.ray.gate
        try:
            return self.worker.call(task, slot)
        finally:
            self.gate.leave(number, slot, task.count == 1)

    @ray.method(concurrency_group="control")
    def ack(self, numbers: list[int]) -> None:
        """The parent has read the results of these one-job batches (see StartGate)."""
        self.gate.ack(numbers)

    @ray.method(concurrency_group="control")
    def late(self, limit: float) -> list[tuple[int, int, float]]:
        """(task_id, index, seconds) of each job running for longer than ``limit``."""
        return _late(self.worker, limit)

    @ray.method(concurrency_group="control")
    def stop(self) -> None:
        if self.spec.teardown is not None:
            self.spec.teardown()


@ray.remote
class TaskmasterAsyncActor:
    """``async def handle_job``: one asyncio loop, ``threads`` jobs at once over all batches,
    --job-timeout applied per job (as in a local async worker)."""

    def __init__(self, spec: WorkerSpec) -> None:
        _setup(spec)
        self.spec = spec
        self.worker = _CallWorker(spec)
        self.gate: asyncio.Semaphore | None = None

    async def ready(self) -> tuple[int, str, str]:
        return _where()

    async def run(self, number: int, task: TaskSent) -> Result:
        if self.gate is None:  # made on the actor's own event loop
            self.gate = asyncio.Semaphore(self.spec.threads)
        return await self.worker.call_async(task, self.gate)

    async def late(self, limit: float) -> list[tuple[int, int, float]]:
        return []

    async def stop(self) -> None:
        if self.spec.teardown is not None:
            self.spec.teardown()


def actor_class(spec: WorkerSpec) -> Any:
    """The actor class for this spec (async handlers get the asyncio actor)."""
    return TaskmasterAsyncActor if spec.is_async else TaskmasterActor
