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
import contextlib
import itertools
import mmap
import os
import select
import signal
import socket
import time
from collections.abc import Callable
from typing import cast

from taskmaster.core.events import (
    BatchDone,
    BatchUnreadable,
    Event,
    JobTimedOut,
    TaskSent,
    WorkerLost,
)
from taskmaster.core.pull import BATCH_SECONDS
from taskmaster.local.child import Child, Conn
from taskmaster.local.output import OutputRelay
from taskmaster.local.wire import STOP, Ring, _Frames, frame_head, parse_result, task_frame
from taskmaster.local.worker import (
    EXIT_PARENT_GONE,
    EXIT_SETUP_FAILED,
    EXIT_TIMEOUT,
    SetupFailed,
    WorkerSpec,
    worker_main,
)
from taskmaster.record import field, record, replace

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


SLOT_BYTES = 2 << 20  # a batch payload up to this size goes through the worker's ring
RING_BYTES = 64 << 20  # at most this much shared memory per worker (mapped; touched as used)
SEND_BUFFER = 4 << 20  # bytes the kernel holds for a worker (capped by net.core.wmem_max)
_READ = select.POLLIN | select.POLLPRI
_WRITE = select.POLLOUT


@record(frozen=False, eq=False)
class _Handle:
    worker_id: int
    process: Child
    sock: socket.socket  # the parent's end of the pipe (non-blocking)
    frames: _Frames  # the worker's results, taken as they come
    ring: Ring
    free: list[int]  # the ring's free slots
    slot_of: dict[int, int] = field(default_factory=dict)  # task id -> its slot in the ring
    # task ids in the order they were sent; a dict keeps that order, unlike a set
    held: dict[int, None] = field(default_factory=dict)
    outbox: collections.deque[memoryview] = field(default_factory=collections.deque)
    stopping: bool = False
    setup_error: str = ""  # the traceback a worker sent when its setup_worker raised


class LocalTransport:
    """N forked workers with ``threads + prefetch`` batch slots each."""

    batch_seconds = BATCH_SECONDS  # a pipe write and a wake-up: cheap

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        output: Callable[[str], None] | None = None,
        prefetch: int = 1,
    ) -> None:
        self.spec = spec
        self._output = output  # where the workers' terminal lines go, if not the terminal
        self.relay: OutputRelay | None = None  # its pipe, from start until close
        self.n_workers = workers
        self.slots_each = spec.threads + prefetch
        self._workers: dict[int, _Handle] = {}
        self._next_id = 0
        # One poll set for the run, kept up to date: what each fd in it stands for
        self._poll = select.poll()
        self._fds: dict[int, tuple[_Handle | None, str]] = {}
        self._wake_fds: list[int] = []

    def start(self) -> None:
        if self._output is not None:
            self.relay = OutputRelay(self._output)
            self.spec = replace(self.spec, output_fd=self.relay.write_fd)
        for _ in range(self.n_workers):
            self._spawn()

    def _spawn(self) -> None:
        worker_id = self._next_id
        self._next_id += 1
        sock, child_end = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        # other workers' pipe ends and this one's: see worker_main
        inherited = [h.sock.fileno() for h in self._workers.values()]
        inherited.append(sock.fileno())
        slot_bytes = max(1, min(SLOT_BYTES, RING_BYTES // self.slots_each))
        ring = Ring(mmap.mmap(-1, slot_bytes * self.slots_each), slot_bytes)
        others = tuple(h.ring.memory for h in self._workers.values())
        process = Child(
            worker_main, (Conn(child_end), self.spec, os.getpid(), inherited, ring, others)
        )
        # A signal handled during fork runs in the at-fork hooks, which swallow exceptions:
        # a Ctrl-C there would be lost. Held back, it arrives once the worker is registered
        # (and so is killed if that Ctrl-C ends the run).
        held = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            process.start()
            child_end.close()
            frames = _Frames(sock.fileno())
            free = list(range(self.slots_each))
            handle = _Handle(worker_id, process, sock, frames, ring, free)
            self._workers[worker_id] = handle
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, held)
        # Big batches cross in one write; the window still bounds what the pipes hold.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)
        sock.setblocking(False)
        self._watch(sock.fileno(), handle, "conn", _READ)
        self._watch(process.sentinel, handle, "sentinel", _READ)

    def _watch(self, fd: int, handle: _Handle | None, kind: str, events: int) -> None:
        self._fds[fd] = (handle, kind)
        self._poll.register(fd, events)

    def _unwatch(self, fd: int) -> None:
        if self._fds.pop(fd, None) is not None:
            self._poll.unregister(fd)

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
        size = len(task.payload)
        if size > handle.ring.slot_bytes or not handle.free:
            self._post(handle, *task_frame(task))
            return
        slot = handle.free.pop()
        handle.slot_of[task.task_id] = slot
        start = slot * handle.ring.slot_bytes
        handle.ring.memory[start : start + size] = task.payload
        self._post(handle, *task_frame(task, slot))

    def _post(self, handle: _Handle, *parts: bytes) -> None:
        handle.outbox.extend(memoryview(part) for part in parts)
        self._flush(handle)

    def _flush(self, handle: _Handle) -> None:
        """Write what the worker's pipe takes now; the rest waits for it to be writable."""
        outbox = handle.outbox
        while outbox:
            try:
                parts = list(itertools.islice(outbox, 64))
                sent = handle.sock.sendmsg(parts, [], socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            except OSError:  # the worker died: its sentinel reports it, with its batches
                outbox.clear()
                break
            while sent and outbox:
                if len(outbox[0]) <= sent:
                    sent -= len(outbox.popleft())
                else:
                    outbox[0] = outbox[0][sent:]
                    sent = 0
        fd = handle.sock.fileno()
        if fd in self._fds:  # ask to hear when it is writable only while something waits
            self._poll.modify(fd, _READ | _WRITE if outbox else _READ)

    def wait(self, timeout: float | None, wake_fds: list[int]) -> list[Event]:
        if wake_fds != self._wake_fds:  # a caller's wake fds, kept until they change
            for fd in self._wake_fds:
                self._unwatch(fd)
            for fd in wake_fds:
                self._watch(fd, None, "wake", _READ)
            self._wake_fds = list(wake_fds)
        ready = self._poll.poll(None if timeout is None else max(0, int(timeout * 1000 + 0.5)))
        events: list[Event] = []
        dead: list[_Handle] = []
        for fd, mask in ready:
            handle, kind = self._fds.get(fd, (None, ""))
            if handle is None:
                continue  # a wake fd (the caller reads it), or a worker buried just now
            if kind == "sentinel":
                dead.append(handle)
                continue
            if mask & _WRITE:
                self._flush(handle)
            if mask & ~_WRITE and not self._drain(handle, events):
                dead.append(handle)
        for handle in dict.fromkeys(dead):
            self._drain(handle, events)  # results it sent before dying still count
            events.append(self._bury(handle))
        return events

    def _drain(self, handle: _Handle, events: list[Event]) -> bool:
        """Read every message waiting on a worker's pipe; False when the pipe is closed."""
        frames, alive = handle.frames, True
        while alive:
            try:
                alive = frames.read()
            except BlockingIOError:
                break
            except OSError:
                alive = False
            for data in frames.messages():
                message = parse_result(data)
                if isinstance(message, SetupFailed):
                    handle.setup_error = message.traceback or message.error
                    continue
                event = cast(Event, message)
                if isinstance(event, (BatchDone, BatchUnreadable)):
                    handle.held.pop(event.task_id, None)
                    slot = handle.slot_of.pop(event.task_id, None)
                    if slot is not None:  # decoded: the worker reads it no more
                        handle.free.append(slot)
                events.append(event)
        return alive

    def _release(self, handle: _Handle) -> None:
        """A worker that has exited: its fds leave the poll set, its pipe and ring close."""
        self._unwatch(handle.sock.fileno())
        self._unwatch(handle.process.sentinel)
        handle.sock.close()
        handle.process.close()
        handle.ring.memory.close()
        handle.outbox.clear()

    def _bury(self, handle: _Handle) -> Event:
        handle.process.join(timeout=5)
        self._release(handle)
        del self._workers[handle.worker_id]
        held = tuple(handle.held)
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
                self._post(handle, frame_head(len(STOP)), STOP)
        for handle in list(self._workers.values()):
            if not kill:
                self._flush_blocking(handle, 30.0)
            handle.process.join(timeout=5 if kill else 30)
            if handle.process.is_alive() and handle.process.pid:
                os.kill(handle.process.pid, signal.SIGKILL)
                handle.process.join()
            self._release(handle)
        self._workers.clear()
        if self.relay is not None:
            self.relay.close()
            self.relay = None

    def _flush_blocking(self, handle: _Handle, timeout: float) -> None:
        """Finish writing a stopping worker's outbox (its Stop last), while it still reads."""
        deadline = time.monotonic() + timeout
        while handle.outbox and handle.process.is_alive():
            _, writable, _ = select.select([], [handle.sock], [], 0.1)
            if writable:
                self._flush(handle)
            if time.monotonic() > deadline:
                return


__all__ = ["LocalTransport", "describe_exit", "JobTimedOut"]
