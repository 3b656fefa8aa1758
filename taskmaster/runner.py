"""Assembling a run: options, the state file and its lock, the source, the transport.

``run`` is the public Python API and what ``tm-run`` calls. It raises TaskmasterError for
bad input and returns RunStats otherwise; it never exits the process.
"""

from __future__ import annotations

import contextlib
import datetime
import functools
import hashlib
import inspect
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from taskmaster.core.events import Transport
from taskmaster.core.ledger import Ledger
from taskmaster.core.loop import Coordinator
from taskmaster.core.source import JobSource, check_kwargs, open_source
from taskmaster.core.stats import Reporter, RunStats, Snapshot, StateSink
from taskmaster.errors import EXIT_INTERRUPTED, CheckpointError, UsageError
from taskmaster.local.signals import counting_signals
from taskmaster.local.transport import LocalTransport
from taskmaster.local.worker import WorkerSpec
from taskmaster.options import Options
from taskmaster.store import checkpoint
from taskmaster.store.checkpoint import State, StateLock
from taskmaster.store.durable import raise_open_file_limit
from taskmaster.store.failures import FailureLog


class QuietReporter:
    def message(self, text: str) -> None:
        pass

    def tick(self, snap: Snapshot) -> None:
        pass


def default_state_file(stem: str, kwargs: dict[str, str], folder: str = ".") -> str:
    """``<stem>.state.json``, or ``<stem>-<hash>.state.json`` when there are kwargs."""
    if kwargs:
        canon = json.dumps(sorted(kwargs.items()), separators=(",", ":"))
        stem = f"{stem}-{hashlib.sha256(canon.encode()).hexdigest()[:8]}"
    return os.path.join(folder, f"{stem}.state.json")


def failures_file_for(state_file: str) -> str:
    base = state_file.removesuffix(".json").removesuffix(".state")
    return base + ".failures.jsonl"


def describe_state(state: State) -> str:
    when = datetime.datetime.fromtimestamp(state.updated).strftime("%Y-%m-%d %H:%M:%S")
    return (
        f"watermark {state.watermark:,}, {state.done:,} done, {state.failed:,} failed, "
        f"last written {when}"
    )


class _StateFile:
    """The checkpoint sink: every write is durable (see checkpoint.write_durable)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, state: State) -> None:
        checkpoint.write_durable(self.path, checkpoint.encode(state))


def _prepare_state(
    options: Options, path: str, target: str, kwargs: dict[str, str], reporter: Reporter
) -> State | None:
    """Validate the existing checkpoint against this run; returns it when resuming."""
    checkpoint.remove_stale_temps(path)
    failures = options.failures_file or failures_file_for(path)
    if options.reset:
        for p in (path, failures):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
    existing = checkpoint.read(path)
    if existing is not None and _no_progress(existing) and _same_run(existing, target, kwargs):
        existing = None  # e.g. get_jobs failed at once: nothing to resume, nothing to protect
    if existing is None:
        if options.resume:
            reporter.message(f"no checkpoint at {path}: starting from the beginning")
        return None
    if not options.resume:
        raise UsageError(
            f"a checkpoint exists at {path} ({describe_state(existing)}"
            f"{', finished' if existing.finished else ''}). Pass --resume to continue it, or "
            "--reset to delete it and start over."
        )
    if not _same_run(existing, target, kwargs):
        raise CheckpointError(
            f"{path} belongs to another run: target {existing.target} with "
            f"{_kw(existing.kwargs)}, not {target} with {_kw(kwargs)}. Use --state-file to "
            "keep separate checkpoints, or --reset to start this one over."
        )
    return existing


def _no_progress(state: State) -> bool:
    return not (state.watermark or state.done or state.failed or state.anchor or state.finished)


def _same_run(state: State, target: str, kwargs: dict[str, str]) -> bool:
    return state.target == target and state.kwargs == kwargs


def _kw(kwargs: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) or "no arguments"


@contextlib.contextmanager
def _signals(coord: Coordinator, reporter: Reporter) -> Iterator[None]:
    """First Ctrl-C/SIGTERM: drain; second: abort. Handlers count (and get the loop back from
    a get_jobs that blocks); the loop acts."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    # interrupt_pull raises if get_jobs blocks: the loop must see the signal all the same.
    with counting_signals(coord.interrupt_pull) as (fd, read_count):

        def on_wake() -> None:
            count = read_count()
            if count == 1 and coord.stopping is None:
                coord.request_stop("interrupted")
                reporter.message(
                    f"stopping: finishing the jobs in flight (up to "
                    f"{coord.opt.drain_timeout:g} s); press Ctrl-C again to stop at once"
                )
            elif count >= 2 and not coord.aborted:
                coord.abort("interrupted twice")
                reporter.message("stopping now: workers killed; their jobs run again on --resume")

        coord.wake_fds.append(fd)
        coord.on_wake = on_wake
        yield


def _takes_arguments(fn: Callable[..., Any]) -> bool:
    try:
        return bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False


def make_local_transport(
    opt: Options,
    handle_job: Callable[[Any], Any] | None,
    setup_worker: Callable[[], Any] | None,
    teardown_worker: Callable[[], Any] | None,
    handle_batch: Callable[[list[Any]], Any] | None = None,
    kwargs: dict[str, str] | None = None,
) -> LocalTransport:
    if handle_job is None and handle_batch is None:
        raise UsageError("a local run needs a handle_job (or handle_batch) function")
    if setup_worker is not None and kwargs and _takes_arguments(setup_worker):
        setup_worker = functools.partial(setup_worker, **kwargs)
    spec = WorkerSpec(
        handle_job, opt.threads, opt.job_timeout, setup_worker, teardown_worker, handle_batch
    )
    return LocalTransport(spec, opt.workers)


def execute(
    opt: Options,
    make_source: Callable[[], JobSource],
    transport: Transport,
    ledger: Ledger,
    base: State,
    sink: StateSink | None,
    failure_log: FailureLog | None,
    reporter: Reporter,
) -> RunStats:
    """Start the transport, open the source, and run the coordinator to its end."""
    try:
        transport.start()  # fork before get_jobs runs, before any thread exists
        source = make_source()
    except KeyboardInterrupt:  # Ctrl-C while a resumed get_jobs yields its first job
        transport.close(kill=True)
        return RunStats(
            done=ledger.done,
            failed=ledger.failed,
            watermark=ledger.watermark,
            interrupted=True,
            exit_code=EXIT_INTERRUPTED,
        )
    except BaseException:
        transport.close(kill=True)
        raise
    coord = Coordinator(opt, source, transport, ledger, base, sink, failure_log, reporter)
    with _signals(coord, reporter):
        return coord.run()


def validate_options(options: dict[str, Any]) -> Options:
    """Options from keyword arguments; a misspelt name is an error, not silently ignored."""
    unknown = set(options) - Options.names()
    if unknown:
        raise UsageError(
            f"unknown option(s) {', '.join(sorted(unknown))}; valid: "
            f"{', '.join(sorted(Options.names()))}"
        )
    return Options(**options)


def run(
    get_jobs: Callable[..., Any],
    handle_job: Callable[[Any], Any] | None,
    *,
    kwargs: dict[str, str] | None = None,
    target: str | None = None,
    reporter: Reporter | None = None,
    setup_worker: Callable[[], Any] | None = None,
    teardown_worker: Callable[[], Any] | None = None,
    handle_batch: Callable[[list[Any]], Any] | None = None,
    transport: Transport | None = None,
    **options: Any,
) -> RunStats:
    """Run ``handle_job`` on every job ``get_jobs(**kwargs)`` yields; see Options for options.

    ``handle_batch(jobs)``, if given, is called with lists of up to ``batch_size`` jobs
    instead; when it raises, ``handle_job`` (if given) retries the batch's jobs one by one.

    With ``state_file``, progress is checkpointed there and ``resume=True`` continues a
    previous run. Raises TaskmasterError for bad input; returns the run's RunStats.
    """
    opt = validate_options(options)
    raise_open_file_limit()  # idle connections must not starve the checkpoint of descriptors
    kwargs = dict(kwargs or {})
    check_kwargs(get_jobs, kwargs)
    reporter = reporter or QuietReporter()
    name = target or f"{get_jobs.__module__}:{get_jobs.__qualname__}"
    lock = StateLock(opt.state_file) if opt.state_file else None
    failure_log = None
    if lock is not None:
        lock.acquire()
    try:
        previous = None
        now = time.time()
        base = State(target=name, kwargs=kwargs, started=now, updated=now, limit=opt.limit)
        if opt.state_file:
            previous = _prepare_state(opt, opt.state_file, name, kwargs, reporter)
            if previous is not None:
                base = State(
                    target=name,
                    kwargs=kwargs,
                    anchor=previous.anchor,  # kept if this run pulls nothing
                    started=previous.started,
                    runs=previous.runs + 1,
                    limit=opt.limit,
                )
                if previous.finished:
                    reporter.message(f"{opt.state_file}: this run already finished; nothing to do")
                    return RunStats(
                        done=previous.done,
                        failed=previous.failed,
                        finished=True,
                        watermark=previous.watermark,
                        exit_code=0,
                        state_file=opt.state_file,
                        failures_file=opt.failures_file or failures_file_for(opt.state_file),
                    )
            # Preflight: one durable write before the generator runs, so an unwritable
            # folder fails before any job does.
            checkpoint.write_durable(opt.state_file, checkpoint.encode(previous or base))
            failure_log = FailureLog(opt.failures_file or failures_file_for(opt.state_file))
        ledger = (
            Ledger.resume(previous.watermark, previous.resolved, previous.done, previous.failed)
            if previous
            else Ledger()
        )
        transport = transport or make_local_transport(
            opt, handle_job, setup_worker, teardown_worker, handle_batch, kwargs
        )
        stats = execute(
            opt,
            lambda: open_source(
                get_jobs,
                kwargs,
                previous.watermark if previous else 0,
                previous.anchor if previous else None,
            ),
            transport,
            ledger,
            base,
            _StateFile(opt.state_file) if opt.state_file else None,
            failure_log,
            reporter,
        )
        stats.state_file = opt.state_file
        stats.failures_file = failure_log.path if failure_log else None
        return stats
    finally:
        if failure_log is not None:
            failure_log.close()
        if lock is not None:
            lock.release()
