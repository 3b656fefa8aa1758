"""The worker process: receive batches on a pipe, run ``handle_job`` on threads, report back.

One reader (the main thread) takes batches off the pipe into a local queue as soon as they
arrive, so the parent never blocks on a busy worker; ``threads`` runner threads (or one
asyncio loop for ``async def`` handlers) run them and send one result per batch. With
``--job-timeout``, the reader also watches how long each thread's job has run and, past the
limit, reports the job and exits: a thread cannot be killed, its process can. A job stuck in
C code that holds the GIL stops the reader as well; a timer the reader keeps pushing back
(SIGALRM) then ends the process. (Running batches on the reader itself when there is one
thread was measured slower on a busy machine, and so is not done.)

Payloads come through the worker's shared-memory ring (see :class:`Ring`); the pipe
carries their headers, the results, and payloads too big for a ring slot.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes  # loaded in the parent: forked workers inherit it and start sooner
import faulthandler
import inspect
import mmap
import operator
import os
import pickle
import queue
import select
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from taskmaster.core.code import JobCode
from taskmaster.core.events import (
    BatchDone,
    BatchUnreadable,
    JobFailed,
    JobTimedOut,
    Stop,
    TaskSent,
)
from taskmaster.errors import describe_error
from taskmaster.local.child import Conn
from taskmaster.local.output import relay_terminal, whole_lines
from taskmaster.local.wire import (  # noqa: F401  (_Frames: tests reach it here)
    DONE,
    DONE_TAG,
    Ring,
    _Frames,
    parse_message,
)
from taskmaster.record import record
from taskmaster.store import codec
from taskmaster.store.failures import FailureKind

if TYPE_CHECKING:
    import asyncio  # imported when a handler is async: it costs ~20 ms at start-up

EXIT_TIMEOUT = 3  # the worker exits with this after reporting a JobTimedOut
EXIT_PARENT_GONE = 4
EXIT_SETUP_FAILED = 5  # setup_worker raised: the worker never took a batch
WATCHDOG_GRACE = 1.0  # seconds past --job-timeout and a poll before SIGALRM ends a stuck worker


@record
class SetupFailed:
    """Sent by a worker whose setup_worker raised, just before it exits: the parent reports
    it once for all the workers it happens to, instead of each printing its traceback."""

    error: str
    traceback: str


def _poll_interval(job_timeout: float) -> float:
    """How often the reader checks the running jobs' ages under --job-timeout."""
    return min(1.0, job_timeout / 4)


@record
class WorkerSpec:
    """What a worker runs; inherited through fork, never pickled."""

    code: JobCode
    threads: int = 1
    job_timeout: float | None = None
    output_fd: int | None = None  # the parent's OutputRelay pipe, for a terminal's output

    @property
    def handle_job(self) -> Callable[[Any], Any] | None:
        return self.code.handle_job

    @property
    def handle_batch(self) -> Callable[[list[Any]], Any] | None:
        return self.code.handle_batch

    @property
    def setup(self) -> Callable[[], Any] | None:
        return self.code.setup()

    @property
    def teardown(self) -> Callable[[], Any] | None:
        return self.code.teardown_worker

    @property
    def is_async(self) -> bool:
        return self.code.is_async


_consume: Callable[[Iterable[Any]], None] = collections.deque(
    maxlen=0
).extend  # runs an iterator to its end, keeping nothing


def _die_with_parent(parent_pid: int) -> None:
    # PR_SET_PDEATHSIG: the kernel SIGKILLs us the moment the parent dies, even by kill -9.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):
        pass  # not Linux: the reader still exits on the pipe's EOF
    if os.getppid() != parent_pid:  # the parent died before prctl took effect
        os._exit(EXIT_PARENT_GONE)


class Worker:
    def __init__(self, conn: Conn, spec: WorkerSpec, ring: Ring | None = None) -> None:
        self.conn = conn
        self.spec = spec
        self.ring = ring
        self.inbox: queue.SimpleQueue[TaskSent | Stop] = queue.SimpleQueue()
        self.send_lock = threading.Lock()
        # per runner thread: (task_id, index, started) of the job it runs, for --job-timeout
        self.current: list[tuple[int, int, float] | None] = [None] * spec.threads

    def send(self, event: object) -> None:
        if isinstance(event, BatchDone) and not event.failures:
            data = DONE.pack(DONE_TAG, event.task_id, event.elapsed)
        else:
            data = pickle.dumps(event, protocol=5)
        with self.send_lock:
            self.conn.send_bytes(data)

    def decode(self, task: TaskSent) -> list[Any] | None:
        try:
            jobs: list[Any] = codec.loads(task.codec, task.payload)
            return jobs
        except BaseException as exc:
            error, tb = describe_error(exc)
            self.send(BatchUnreadable(task.task_id, error, tb))
            return None

    def run_batch(self, task: TaskSent, slot: int) -> None:
        jobs = self.decode(task)
        if jobs is None:
            return
        started = time.perf_counter()
        if self.spec.handle_batch is not None:
            failures = self.run_handle_batch(jobs, task.task_id, slot)
        else:
            failures = self.run_jobs(jobs, task.task_id, slot)
        self.send(BatchDone(task.task_id, time.perf_counter() - started, tuple(failures)))

    def run_handle_batch(self, jobs: list[Any], task_id: int, slot: int) -> list[JobFailed]:
        """One ``handle_batch(jobs)`` call; if it raises, each job alone through handle_job."""
        assert self.spec.handle_batch is not None
        if self.spec.job_timeout is not None:
            self.current[slot] = (task_id, 0, time.monotonic())
        try:
            self.spec.handle_batch(jobs)
            return []
        except BaseException as exc:
            if self.spec.handle_job is None:
                error, tb = describe_error(exc)
                return [JobFailed(i, error, tb) for i in range(len(jobs))]
        finally:
            self.current[slot] = None
        return self.run_jobs(jobs, task_id, slot)

    def run_jobs(self, jobs: list[Any], task_id: int, slot: int) -> list[JobFailed]:
        handle = self.spec.handle_job
        assert handle is not None
        failures: list[JobFailed] = []
        if self.spec.job_timeout is None:
            # The loop runs in C (map, consumed by a deque that keeps nothing); a failure
            # is located by what the iterator has left, and the loop resumes after it.
            rest = iter(jobs)
            while True:
                try:
                    _consume(map(handle, rest))
                    break
                except BaseException as exc:
                    index = len(jobs) - operator.length_hint(rest) - 1
                    failures.append(JobFailed(index, *describe_error(exc)))
        else:
            current, clock = self.current, time.monotonic
            for index, job in enumerate(jobs):
                current[slot] = (task_id, index, clock())
                try:
                    handle(job)
                except BaseException as exc:
                    failures.append(JobFailed(index, *describe_error(exc)))
            current[slot] = None
        return failures

    def runner(self, slot: int) -> None:
        while True:
            task = self.inbox.get()
            if isinstance(task, Stop):
                return
            self.run_batch(task, slot)

    def check_timeouts(self) -> None:
        limit = self.spec.job_timeout
        if limit is None:
            return
        now = time.monotonic()
        for entry in list(self.current):
            if entry is not None and now - entry[2] > limit:
                self.send(JobTimedOut(entry[0], entry[1], now - entry[2]))
                os._exit(EXIT_TIMEOUT)
        # The watchdog: a job in C code that never releases the GIL stops this thread too,
        # so nothing above can run. If it is not pushed back in time, SIGALRM kills the
        # process (after faulthandler dumped every thread's stack).
        signal.setitimer(signal.ITIMER_REAL, limit + _poll_interval(limit) + WATCHDOG_GRACE)

    def read_loop(self, on_task: Callable[[TaskSent | Stop], None]) -> None:
        limit = self.spec.job_timeout
        interval = None if limit is None else _poll_interval(limit)
        self.check_timeouts()  # arms the watchdog
        fd = self.conn.fileno()
        frames = _Frames(fd)
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        timeout_ms = None if interval is None else max(1, int(interval * 1000))
        while True:
            try:
                if poller.poll(timeout_ms) and not frames.read():
                    os._exit(EXIT_PARENT_GONE)  # the parent is gone: nobody wants our results
            except OSError:
                os._exit(EXIT_PARENT_GONE)
            for data in frames.messages():
                msg = parse_message(data, self.ring)
                on_task(msg)
                if isinstance(msg, Stop):
                    if limit is not None:
                        signal.setitimer(signal.ITIMER_REAL, 0)  # idle from now on
                    return
            self.check_timeouts()

    def run_threads(self) -> None:
        runners = [
            threading.Thread(target=self.runner, args=(i,), name=f"tm-runner-{i}", daemon=True)
            for i in range(self.spec.threads)
        ]
        for t in runners:
            t.start()

        def on_task(msg: TaskSent | Stop) -> None:
            if isinstance(msg, Stop):
                for _ in runners:
                    self.inbox.put(msg)
            else:
                self.inbox.put(msg)

        self.read_loop(on_task)
        for t in runners:
            t.join()

    def run_async(self, loop: asyncio.AbstractEventLoop) -> None:
        import asyncio

        inbox: asyncio.Queue[TaskSent | Stop] = asyncio.Queue()
        thread = threading.Thread(
            target=loop.run_until_complete, args=(self._async_main(inbox),), daemon=True
        )
        thread.start()

        def on_task(msg: TaskSent | Stop) -> None:
            loop.call_soon_threadsafe(inbox.put_nowait, msg)

        self.read_loop(on_task)
        thread.join()

    async def _async_main(self, inbox: asyncio.Queue[TaskSent | Stop]) -> None:
        import asyncio

        gate = asyncio.Semaphore(self.spec.threads)
        running: set[asyncio.Task[None]] = set()
        while True:
            msg = await inbox.get()
            if isinstance(msg, Stop):
                break
            batch = asyncio.ensure_future(self._async_batch(msg, gate))
            running.add(batch)
            batch.add_done_callback(running.discard)
        if running:
            await asyncio.gather(*running)

    async def _async_batch(self, task: TaskSent, gate: asyncio.Semaphore) -> None:
        import asyncio

        jobs = self.decode(task)
        if jobs is None:
            return
        failures: list[JobFailed] = []
        started = time.perf_counter()
        timeout = self.spec.job_timeout
        handle = self.spec.handle_job
        assert handle is not None

        async def one(index: int, job: Any) -> None:
            async with gate:
                try:
                    await asyncio.wait_for(handle(job), timeout)
                except TimeoutError:
                    kind = FailureKind.JOB_TIMEOUT
                    failures.append(JobFailed(index, kind.text(f"ran over {timeout} s"), "", kind))
                except BaseException as exc:
                    failures.append(JobFailed(index, *describe_error(exc)))

        await asyncio.gather(*(one(i, job) for i, job in enumerate(jobs)))
        failures.sort(key=lambda f: f.index)
        self.send(BatchDone(task.task_id, time.perf_counter() - started, tuple(failures)))


def worker_main(
    conn: Conn,
    spec: WorkerSpec,
    parent_pid: int,
    close_fds: list[int],
    ring: Ring | None = None,
    other_rings: tuple[mmap.mmap, ...] = (),
) -> None:
    """Entry point of a forked worker process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the parent decides on Ctrl-C
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})  # held in fork
    signal.set_wakeup_fd(-1)  # the parent's wakeup pipe is the parent's alone
    _die_with_parent(parent_pid)
    for fd in close_fds:  # other workers' pipe ends: holding them would hide their EOFs
        with contextlib.suppress(OSError):
            os.close(fd)
    for memory in other_rings:  # other workers' rings: a dead one's pages would linger
        with contextlib.suppress(BufferError, ValueError):
            memory.close()
    if spec.output_fd is not None:
        relay_terminal(spec.output_fd)  # before the line writers, which keep the fds
    whole_lines()  # prints of several workers and threads never mix within a line
    faulthandler.enable(file=sys.stderr, all_threads=True)
    if spec.job_timeout is not None:  # the watchdog's SIGALRM: dump the stacks, then die of it
        faulthandler.register(signal.SIGALRM, file=sys.stderr, all_threads=True, chain=True)
    # With an async handle_job, an async setup_worker/teardown_worker runs on the loop the
    # jobs run on, so what it opens (a connection pool) belongs to that loop.
    loop = None
    if spec.is_async:
        import asyncio  # only for async handlers: it costs start-up time

        loop = asyncio.new_event_loop()
    if spec.setup is not None:
        try:
            _call_hook(spec.setup, loop)
        except BaseException as exc:
            _report_setup_failure(conn, exc)
            os._exit(EXIT_SETUP_FAILED)  # a death the parent knows
    worker = Worker(conn, spec, ring)
    if loop is not None:
        worker.run_async(loop)
    else:
        worker.run_threads()
    if spec.teardown is not None:
        _call_hook(spec.teardown, loop)
    if loop is not None:
        loop.close()


def _report_setup_failure(conn: Conn, exc: BaseException) -> None:
    """The user's traceback of setup_worker to the parent; to stderr, in one write, if the
    pipe is gone."""
    error, tb = describe_error(exc)
    try:
        conn.send_bytes(pickle.dumps(SetupFailed(error, tb), protocol=5))
    except BaseException:
        with contextlib.suppress(OSError):
            os.write(2, (tb or error + "\n").encode(errors="replace"))


def _call_hook(hook: Callable[[], Any], loop: asyncio.AbstractEventLoop | None) -> None:
    """Call setup_worker or teardown_worker; await it on ``loop`` if it is ``async def``."""
    result = hook()
    if inspect.isawaitable(result):
        if loop is None:  # the CLI refuses this at start; the Python API may not
            if inspect.iscoroutine(result):
                result.close()
            raise TypeError("an async setup_worker/teardown_worker needs an async handle_job")
        loop.run_until_complete(result)
