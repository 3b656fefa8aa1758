"""The local transport: forked worker processes, one duplex pipe each.

No queue is shared between workers: a worker SIGKILLed while holding a shared queue's lock
would wedge the others. The parent waits on every pipe and every process sentinel at once,
so it learns of a death the moment it happens and knows exactly which batches the dead
worker held. It then starts a replacement.

The parent never blocks writing to a worker: a worker whose job holds the GIL stops reading
its pipe, and a blocked write would stall every other worker's results and Ctrl-C with it.
What a pipe does not take at once waits in the worker's outbox until it is writable.
"""

from __future__ import annotations

import collections
import dataclasses
import itertools
import multiprocessing
import os
import pickle
import selectors
import signal
import socket
import struct
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess

from taskmaster.core.events import (
    BatchDone,
    BatchUnreadable,
    Event,
    JobTimedOut,
    Stop,
    TaskSent,
    WorkerLost,
)
from taskmaster.local.worker import (
    EXIT_PARENT_GONE,
    EXIT_SETUP_FAILED,
    EXIT_TIMEOUT,
    SetupFailed,
    WorkerSpec,
    worker_main,
)

_CAUSES = {
    signal.SIGKILL: "the OOM killer, or someone ran kill -9",
    signal.SIGSEGV: "a crash in C code (segfault)",
    signal.SIGBUS: "a crash in C code (bus error)",
    signal.SIGABRT: "an abort() in C code",
    signal.SIGTERM: "someone sent SIGTERM to the worker",
    signal.SIGALRM: "its --job-timeout watchdog: a job held the GIL past the limit, so the "
    "worker could not stop it; C code that never releases the GIL?",
}


_STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def describe_exit(exitcode: int | None) -> str:
    """Why a worker process ended, in words, with the likely causes."""
    if exitcode is None:
        return "vanished"
    if exitcode < 0:
        try:
            sig = signal.Signals(-exitcode)
        except ValueError:
            return f"was killed by signal {-exitcode}"
        cause = _CAUSES.get(sig)
        return f"was killed by {sig.name}" + (f" ({cause})" if cause else "")
    if exitcode == EXIT_TIMEOUT:
        return "was stopped because a job ran past --job-timeout"
    if exitcode == EXIT_PARENT_GONE:
        return "lost its parent"
    if exitcode == EXIT_SETUP_FAILED:
        return "could not start: setup_worker raised"
    return (
        f"exited with code {exitcode} (the handler called os._exit(), or sys.exit() outside a job?)"
    )


def _framed(data: bytes) -> tuple[bytes, bytes]:
    """``data`` framed as ``Connection.send_bytes`` frames it, for the worker's recv_bytes."""
    size = len(data)
    if size > 0x7FFFFFFF:
        return struct.pack("!iQ", -1, size), data
    return struct.pack("!i", size), data


@dataclass(slots=True, eq=False)
class _Handle:
    worker_id: int
    process: BaseProcess
    conn: Connection  # the parent reads the worker's results from it
    sock: socket.socket  # the same pipe, for writes that never block
    # task ids in the order they were sent; a dict keeps that order, unlike a set
    held: dict[int, None] = field(default_factory=dict)
    outbox: collections.deque[memoryview] = field(default_factory=collections.deque)
    stopping: bool = False
    setup_error: str = ""  # the traceback a worker sent when its setup_worker raised


class LocalTransport:
    """N forked workers with ``threads + prefetch`` batch slots each."""

    def __init__(self, spec: WorkerSpec, workers: int, prefetch: int = 1) -> None:
        self.spec = spec
        self.n_workers = workers
        self.slots_each = spec.threads + prefetch
        self._ctx = multiprocessing.get_context("fork")
        self._workers: dict[int, _Handle] = {}
        self._next_id = 0
        self.lost = 0

    def describe(self) -> str:
        return f"{self.n_workers} worker processes x {self.spec.threads} threads"

    def start(self) -> None:
        for _ in range(self.n_workers):
            self._spawn()

    def _spawn(self) -> None:
        worker_id = self._next_id
        self._next_id += 1
        parent_end, child_end = self._ctx.Pipe(duplex=True)
        # other workers' pipe ends (both handles on each) and this one's: see worker_main
        inherited = [
            fd for h in self._workers.values() for fd in (h.conn.fileno(), h.sock.fileno())
        ]
        inherited.append(parent_end.fileno())
        process = self._ctx.Process(
            target=worker_main,
            args=(child_end, self.spec, os.getpid(), inherited),
            name=f"taskmaster-worker-{worker_id}",
            daemon=True,
        )
        # A signal handled during fork runs in the at-fork hooks, which swallow exceptions:
        # a Ctrl-C there would be lost. Held back, it arrives once the worker is registered
        # (and so is killed if that Ctrl-C ends the run).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
            child_end.close()
            sock = socket.socket(fileno=os.dup(parent_end.fileno()))
            self._workers[worker_id] = _Handle(worker_id, process, parent_end, sock)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)

    def pids(self) -> list[int]:
        return [h.process.pid for h in self._workers.values() if h.process.pid is not None]

    def free_slots(self) -> int:
        return sum(self.slots_each - len(h.held) for h in self._workers.values() if not h.stopping)

    def send(self, task: TaskSent) -> None:
        handle = max(
            (h for h in self._workers.values() if not h.stopping),
            key=lambda h: self.slots_each - len(h.held),
        )
        handle.held[task.task_id] = None
        # Header and payload go as two messages so the payload is never copied into a pickle.
        header = pickle.dumps(dataclasses.replace(task, payload=b""), protocol=5)
        self._post(handle, *_framed(header), *_framed(task.payload))

    def _post(self, handle: _Handle, *parts: bytes) -> None:
        handle.outbox.extend(memoryview(part) for part in parts)
        self._flush(handle)

    def _flush(self, handle: _Handle) -> None:
        """Write what the worker's pipe takes now; the rest waits for it to be writable."""
        outbox = handle.outbox
        while outbox:
            try:
                sent = handle.sock.sendmsg(
                    list(itertools.islice(outbox, 64)), [], socket.MSG_DONTWAIT
                )
            except BlockingIOError:
                return
            except OSError:  # the worker died: its sentinel reports it, with its batches
                outbox.clear()
                return
            while sent and outbox:
                if len(outbox[0]) <= sent:
                    sent -= len(outbox.popleft())
                else:
                    outbox[0] = outbox[0][sent:]
                    sent = 0

    def wait(self, timeout: float | None, wake_fds: list[int]) -> list[Event]:
        with selectors.PollSelector() as selector:
            for h in self._workers.values():
                selector.register(h.conn, selectors.EVENT_READ, h)
                selector.register(h.process.sentinel, selectors.EVENT_READ, h)
                if h.outbox:
                    selector.register(h.sock, selectors.EVENT_WRITE, h)
            for fd in wake_fds:
                selector.register(fd, selectors.EVENT_READ, None)
            ready = selector.select(timeout)
        events: list[Event] = []
        dead: list[_Handle] = []
        for key, _ in ready:
            handle = key.data
            if handle is None:
                continue  # a wake fd: the caller reads it
            if key.fileobj is handle.sock:
                self._flush(handle)
            elif key.fileobj is handle.conn:
                if not self._drain(handle, events):
                    dead.append(handle)
            else:
                dead.append(handle)  # its sentinel
        for handle in dict.fromkeys(dead):
            self._drain(handle, events)  # results it sent before dying still count
            events.append(self._bury(handle))
        return events

    def _drain(self, handle: _Handle, events: list[Event]) -> bool:
        """Read every message waiting on a worker's pipe; False when the pipe is closed."""
        conn = handle.conn
        try:
            while conn.poll():
                event = pickle.loads(conn.recv_bytes())
                if isinstance(event, SetupFailed):
                    handle.setup_error = event.traceback or event.error
                    continue
                if isinstance(event, (BatchDone, BatchUnreadable)):
                    handle.held.pop(event.task_id, None)
                events.append(event)
        except (EOFError, OSError):
            return False
        return True

    def _bury(self, handle: _Handle) -> Event:
        handle.process.join(timeout=5)
        handle.conn.close()
        handle.sock.close()
        handle.outbox.clear()
        del self._workers[handle.worker_id]
        held = tuple(handle.held)
        self.lost += 1
        if not handle.stopping:
            self._spawn()
        setup_failed = handle.process.exitcode == EXIT_SETUP_FAILED
        return WorkerLost(
            handle.worker_id,
            handle.process.pid or 0,
            held,
            describe_exit(handle.process.exitcode),
            queued=held if setup_failed else self._never_started(held),
            setup_failed=setup_failed,
            detail=handle.setup_error,
        )

    def _never_started(self, held: tuple[int, ...]) -> tuple[int, ...]:
        """The held batches a dead worker had certainly not started.

        Runner threads take batches from the worker's queue in the order they were sent, and
        every result the worker sent before dying has been read, so at most ``threads`` of
        the held batches (the oldest) were running. An async worker starts every batch at
        once, so none is certain.
        """
        return () if self.spec.is_async else held[self.spec.threads :]

    def kill_worker_holding(self, task_id: int) -> None:
        """Kill the worker holding a task, e.g. one whose job hung past its timeout."""
        for handle in self._workers.values():
            if task_id in handle.held and handle.process.pid:
                os.kill(handle.process.pid, signal.SIGKILL)

    def close(self, kill: bool = False) -> None:
        """Stop every worker: politely (Stop, then join), or at once with SIGKILL."""
        for handle in self._workers.values():
            handle.stopping = True
            if kill and handle.process.pid:
                os.kill(handle.process.pid, signal.SIGKILL)
            else:
                self._post(handle, *_framed(pickle.dumps(Stop())))
        for handle in list(self._workers.values()):
            handle.process.join(timeout=5 if kill else 30)
            if handle.process.is_alive() and handle.process.pid:
                os.kill(handle.process.pid, signal.SIGKILL)
                handle.process.join()
            handle.conn.close()
            handle.sock.close()
        self._workers.clear()


__all__ = ["LocalTransport", "describe_exit", "JobTimedOut"]
