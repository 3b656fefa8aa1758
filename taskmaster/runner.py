"""Assembling a run: one path for every kind of run.

``run`` is the public Python API and what ``tm-run`` and ``tm-master`` call; ``--retry-failed``
is the same run over another job source (:mod:`taskmaster.replay`). Every run goes through
:func:`execute`: lock the state file, open the plan (the checkpoint, or the failures file),
build the transport from the one bundle of the user's code, drive the coordinator, close,
and let the plan record the outcome. It raises TaskmasterError for bad input and returns
RunStats otherwise; it never exits the process.
"""

from __future__ import annotations

import bisect
import contextlib
import gc
import hashlib
import json
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from taskmaster.core.code import JobCode
from taskmaster.core.events import Transport
from taskmaster.core.ledger import Ledger
from taskmaster.core.loop import Coordinator
from taskmaster.core.policy import FailureSink
from taskmaster.core.source import JobSource, check_kwargs, open_source
from taskmaster.core.stats import Reporter, RunStats, Snapshot, StateSink
from taskmaster.core.stop import StopReason
from taskmaster.errors import EXIT_INTERRUPTED, CheckpointError, UsageError
from taskmaster.local.counting import BackgroundCount
from taskmaster.local.output import LineSink
from taskmaster.local.signals import counting_signals
from taskmaster.local.transport import LocalTransport
from taskmaster.local.worker import WorkerSpec
from taskmaster.options import Options
from taskmaster.record import field, record, replace
from taskmaster.store import checkpoint, failures
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
    when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(state.updated))
    return (
        f"watermark {state.watermark:,}, {state.done:,} done, {state.failed:,} failed, "
        f"last written {when}"
    )


# -- the one run path ----------------------------------------------------------------------


@record(frozen=False)
class Opened:
    """What a plan opened for a run: the source to pull, the books, where results go."""

    opt: Options
    make_source: Callable[[], JobSource]
    ledger: Ledger
    base: State
    state_sink: StateSink | None
    failures: FailureSink | None
    close: Callable[[], None] = lambda: None
    count_jobs: Callable[..., Any] | None = None  # for the total, answered in the background
    kwargs: dict[str, str] = field(default_factory=dict)


class Plan(Protocol):
    """A kind of run: a fresh or resumed run over get_jobs, or a --retry-failed replay."""

    lock_path: str | None

    def open(self, opt: Options, reporter: Reporter) -> Opened | RunStats:
        """Prepare the run (under the lock); a RunStats when there is nothing to do."""
        ...

    def finish(self, stats: RunStats, opened: Opened) -> RunStats:
        """Record the outcome (after the workers are gone and the files closed)."""
        ...


def local_transport(opt: Options, code: JobCode, shown: Reporter | None = None) -> LocalTransport:
    """Forked workers; a reporter that draws on the terminal gets their terminal output."""
    code.check()
    lines = shown.worker_line if isinstance(shown, LineSink) else None
    return LocalTransport(WorkerSpec(code, opt.threads, opt.job_timeout), opt.workers, lines)


def execute(
    opt: Options,
    plan: Plan,
    code: JobCode,
    reporter: Reporter,
    transport: Transport | None = None,
) -> RunStats:
    """Run ``plan`` to its end with the user's ``code`` (or the ``transport`` given)."""
    raise_open_file_limit()  # idle connections must not starve the checkpoint of descriptors
    lock = StateLock(plan.lock_path) if plan.lock_path else None
    if lock is not None:
        lock.acquire()
    try:
        opened = plan.open(opt, reporter)
        if isinstance(opened, RunStats):
            return opened
        # What exists now (modules, the user's code, the opened state) lasts the run: frozen,
        # the collector leaves it alone, in the parent and in the workers forked from it
        # (whose pages stay shared); unfrozen after, for a program calling taskmaster.run().
        gc.freeze()
        try:
            stats = _drive(
                opened, transport or local_transport(opened.opt, code, reporter), reporter
            )
        finally:
            gc.unfreeze()
            opened.close()
        return plan.finish(stats, opened)
    finally:
        if lock is not None:
            lock.release()


def _drive(opened: Opened, transport: Transport, reporter: Reporter) -> RunStats:
    """Start the transport, open the source, and run the coordinator to its end."""
    ledger = opened.ledger
    try:
        transport.start()  # fork before get_jobs runs, before any thread exists
        source = opened.make_source()
    except KeyboardInterrupt:  # Ctrl-C while a resumed get_jobs yields its first job
        transport.close(kill=True)
        stop = StopReason.INTERRUPTED
        return RunStats(
            done=ledger.done,
            failed=ledger.failed,
            watermark=ledger.watermark,
            stop=stop,
            exit_code=stop.exit_code,
        )
    except BaseException:
        transport.close(kill=True)
        raise
    sinks = (opened.state_sink, opened.failures, reporter)
    coord = Coordinator(opened.opt, source, transport, ledger, opened.base, *sinks)
    count = None
    if opened.count_jobs is not None and opened.opt.total is None and source.total is None:
        count = coord.count = BackgroundCount(opened.count_jobs, opened.kwargs)
    try:
        with _signals(coord, reporter):
            return coord.run()
    finally:
        if count is not None:
            count.close()


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
            if count == 1 and coord.stop is None:
                coord.request_stop(StopReason.INTERRUPTED)
                reporter.message(
                    f"stopping: finishing the jobs in flight (up to "
                    f"{coord.opt.drain_timeout:g} s); press Ctrl-C again to stop at once"
                )
            elif count >= 2 and not coord.aborted:
                coord.abort()
                reporter.message("stopping now: workers killed; their jobs run again on --resume")

        coord.wake_fds.append(fd)
        coord.on_wake = on_wake
        yield


# -- a run over get_jobs, with its checkpoint ------------------------------------------------


class CheckpointedRun:
    """A fresh or resumed run over ``get_jobs``; the checkpoint is kept when there is one."""

    def __init__(
        self,
        opt: Options,
        get_jobs: Callable[..., Any],
        target: str,
        kwargs: dict[str, str],
        count_jobs: Callable[..., Any] | None = None,
    ) -> None:
        self.get_jobs = get_jobs
        self.count_jobs = count_jobs
        self.target = target
        self.kwargs = kwargs
        self.lock_path = opt.state_file
        self.failures_path = (
            opt.failures_file or failures_file_for(opt.state_file) if opt.state_file else None
        )

    def open(self, opt: Options, reporter: Reporter) -> Opened | RunStats:
        now = time.time()
        base = State(
            target=self.target, kwargs=self.kwargs, started=now, updated=now, limit=opt.limit
        )
        previous = None
        sink = log = None
        if opt.state_file:
            previous = self._prepare(opt, opt.state_file, reporter)
            if previous is not None:
                if previous.finished:
                    reporter.message(f"{opt.state_file}: this run already finished; nothing to do")
                    return self._stats(
                        RunStats(
                            done=previous.done,
                            failed=previous.failed,
                            finished=True,
                            watermark=previous.watermark,
                        )
                    )
                base = replace(
                    base,
                    anchor=previous.anchor,  # kept if this run pulls nothing
                    started=previous.started,
                    runs=previous.runs + 1,
                )
                assert self.failures_path is not None
                _forget_unresolved(self.failures_path, previous)
            # Preflight: one durable write before the generator runs, so an unwritable
            # folder fails before any job does.
            checkpoint.write_durable(opt.state_file, checkpoint.encode(previous or base))
            sink = _StateFile(opt.state_file)
            assert self.failures_path is not None
            log = FailureLog(self.failures_path)
        ledger = (
            Ledger.resume(previous.watermark, previous.resolved, previous.done, previous.failed)
            if previous
            else Ledger()
        )
        watermark = previous.watermark if previous else 0
        anchor = previous.anchor if previous else None
        return Opened(
            opt,
            lambda: open_source(self.get_jobs, self.kwargs, watermark, anchor),
            ledger,
            base,
            sink,
            log,
            log.close if log is not None else lambda: None,
            self.count_jobs,
            self.kwargs,
        )

    def finish(self, stats: RunStats, opened: Opened) -> RunStats:
        return self._stats(stats)

    def _stats(self, stats: RunStats) -> RunStats:
        return replace(stats, state_file=self.lock_path, failures_file=self.failures_path)

    def _prepare(self, opt: Options, path: str, reporter: Reporter) -> State | None:
        """Validate the existing checkpoint against this run; returns it when resuming."""
        checkpoint.remove_stale_temps(path)
        if opt.reset:
            for p in (path, self.failures_path):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(p or "")
        existing = checkpoint.read(path)
        if existing is not None and _no_progress(existing) and self._same_run(existing):
            existing = None  # e.g. get_jobs failed at once: nothing to resume, nothing to protect
        if existing is None:
            if opt.resume:
                reporter.message(f"no checkpoint at {path}: starting from the beginning")
            return None
        if not opt.resume:
            raise UsageError(
                f"a checkpoint exists at {path} ({describe_state(existing)}"
                f"{', finished' if existing.finished else ''}). Pass --resume to continue it, "
                "or --reset to delete it and start over."
            )
        if not self._same_run(existing):
            raise CheckpointError(
                f"{path} belongs to another run: target {existing.target} with "
                f"{_kw(existing.kwargs)}, not {self.target} with {_kw(self.kwargs)}. Use "
                "--state-file to keep separate checkpoints, or --reset to start this one over."
            )
        return existing

    def _same_run(self, state: State) -> bool:
        return state.target == self.target and state.kwargs == self.kwargs


class _StateFile:
    """The checkpoint sink: every write is durable (see checkpoint.write_durable)."""

    def __init__(self, path: str) -> None:
        self.path = path

    def write(self, state: State) -> None:
        checkpoint.write_durable(self.path, checkpoint.encode(state))


def _forget_unresolved(path: str, state: State) -> None:
    """Failure lines of jobs the checkpoint does not count: they run again on this resume."""
    starts = [r.start for r in state.resolved]
    ranges = state.resolved

    def resolved(seq: int) -> bool:
        if seq < state.watermark:
            return True
        i = bisect.bisect_right(starts, seq) - 1
        return i >= 0 and ranges[i].start <= seq < ranges[i].end

    failures.forget_unresolved(path, resolved)


def _no_progress(state: State) -> bool:
    return not (state.watermark or state.done or state.failed or state.anchor or state.finished)


def _kw(kwargs: dict[str, str]) -> str:
    return " ".join(f"{k}={v}" for k, v in sorted(kwargs.items())) or "no arguments"


# -- the Python API ----------------------------------------------------------------------------


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
    setup_worker: Callable[..., Any] | None = None,
    teardown_worker: Callable[[], Any] | None = None,
    handle_batch: Callable[[list[Any]], Any] | None = None,
    transport: Transport | None = None,
    count_jobs: Callable[..., Any] | None = None,
    **options: Any,
) -> RunStats:
    """Run ``handle_job`` on every job ``get_jobs(**kwargs)`` yields; see Options for options.

    ``handle_batch(jobs)``, if given, is called with lists of up to ``batch_size`` jobs
    instead; when it raises, ``handle_job`` (if given) retries the batch's jobs one by one.
    ``setup_worker`` gets the ``kwargs`` too when it takes arguments. ``count_jobs(**kwargs)``,
    if given, runs in the background for the ETA while the jobs start.

    With ``state_file``, progress is checkpointed there and ``resume=True`` continues a
    previous run. Raises TaskmasterError for bad input; returns the run's RunStats.
    """
    opt = validate_options(options)
    kwargs = dict(kwargs or {})
    check_kwargs(get_jobs, kwargs)
    code = JobCode(handle_job, handle_batch, setup_worker, teardown_worker, kwargs)
    name = target or f"{get_jobs.__module__}:{get_jobs.__qualname__}"
    plan = CheckpointedRun(opt, get_jobs, name, kwargs, count_jobs)
    return execute(opt, plan, code, reporter or QuietReporter(), transport)


__all__ = ["EXIT_INTERRUPTED", "run", "execute", "CheckpointedRun", "Opened", "Plan"]
