"""One frozen Options, built from one defaults table and validated once."""

from __future__ import annotations

import os
from typing import Any

from taskmaster.errors import UsageError
from taskmaster.record import field, fields, record


def default_workers() -> int:
    return os.cpu_count() or 1


def _option(default: Any, help: str, **cli: Any) -> Any:
    """A field of Options with what the command line needs to offer it (see cli/options)."""
    return field(default=default, metadata={"help": help, **cli})


@record
class Options:
    """Everything a run can be told; the CLI and ``taskmaster.run`` both build one.

    This is the one table of defaults: the click options of tm-run and tm-master are built
    from these fields and their help (``taskmaster.cli.options``), and every value is
    checked here, once, whoever built it.
    """

    workers: int = field(
        default_factory=default_workers,
        metadata={"help": "Worker processes.", "short": "-w", "default_text": "CPU count"},
    )
    threads: int = _option(1, "Threads per worker (concurrency for async handlers).", short="-t")
    size: int | None = _option(
        None,
        "Window: most jobs pulled and not yet resolved.",
        default_text="10,000 to 100,000: about 32 MiB of jobs",
    )
    state_file: str | None = _option(
        None,
        "Checkpoint path.",
        path=True,
        default_text="./<module>[-<hash of args>].state.json",
    )
    failures_file: str | None = _option(
        None,
        "Failures file.",
        flag="--failures",
        path=True,
        default_text="beside the state file, .failures.jsonl",
    )
    resume: bool = _option(False, "Continue from the checkpoint.")
    reset: bool = _option(False, "Delete the checkpoint and failures file first.")
    retries: int = _option(2, "Extra attempts for a job that raises or kills its worker.")
    retry_delay: float | None = _option(
        None,
        "Seconds before the first retry; doubles each time, with jitter.",
        default_text="0.1, or 8 while every job fails (an outage)",
    )
    job_timeout: float | None = _option(None, "Seconds a job may run.", default_text="no limit")
    checkpoint_every: float = _option(1.0, "Seconds between checkpoints.")
    drain_timeout: float = _option(30.0, "After Ctrl-C, seconds to let jobs in flight finish.")
    max_failures: int | None = _option(
        None,
        "Stop once this many jobs failed for good; 0: never stop for failures.",
        default_text="stop when 100 jobs in a row failed",
    )
    batch_size: int | None = _option(
        None, "Jobs per batch.", default_text="100 with handle_batch, else adapts to job time"
    )
    limit: int | None = _option(None, "Run only the first N jobs (a later --resume goes on).")
    total: int | None = _option(None, "Jobs in the run, for the ETA.", default_text="count_jobs()")
    rate: float | None = None  # most job starts per second, all workers together (--rate N/s)

    def __post_init__(self) -> None:
        _between("workers", self.workers, 1, 1024)
        _between("threads", self.threads, 1, 4096)
        if self.size is not None:
            _between("size", self.size, 1, 100_000_000)
        _between("retries", self.retries, 0, 1000)
        if self.retry_delay is not None:
            _positive("retry-delay", self.retry_delay, zero_ok=True)
        _positive("checkpoint-every", self.checkpoint_every)
        _positive("drain-timeout", self.drain_timeout, zero_ok=True)
        if self.job_timeout is not None:
            _positive("job-timeout", self.job_timeout)
        if self.max_failures is not None:
            _between("max-failures", self.max_failures, 0, 10**12)  # 0: never stop for it
        if self.limit is not None:
            _between("limit", self.limit, 1, 10**15)
        if self.total is not None:
            _between("total", self.total, 0, 10**18)
        if self.rate is not None and not 0 < self.rate < float("inf"):
            raise UsageError(f"rate must be jobs per second, more than 0, got {self.rate!r}")
        if self.batch_size is not None:
            _between("batch-size", self.batch_size, 1, 1_000_000)
        if self.resume and self.reset:
            raise UsageError(
                "--resume and --reset contradict each other: --resume continues the "
                "checkpoint, --reset deletes it. Pick one."
            )

    @classmethod
    def names(cls) -> set[str]:
        return {f.name for f in fields(cls)}


_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parse_rate(text: str) -> float:
    """``"200/s"``, ``"30/m"``, ``"1000/h"`` or ``"200"`` -> jobs per second."""
    count, _, unit = text.strip().partition("/")
    try:
        value = float(count) / _UNITS[unit or "s"]
    except (ValueError, KeyError):
        raise UsageError(
            f"--rate must look like 200/s, 30/m or 1000/h (jobs per second, minute or hour), "
            f"got {text!r}"
        ) from None
    if not value > 0:
        raise UsageError(f"--rate must be more than 0, got {text!r}")
    return value


def _between(name: str, value: int, low: int, high: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise UsageError(f"--{name} must be a whole number from {low} to {high}, got {value!r}")


def _positive(name: str, value: float, zero_ok: bool = False) -> None:
    ok = isinstance(value, (int, float)) and (value >= 0 if zero_ok else value > 0)
    if not ok or value != value or value == float("inf"):
        least = "0 or more" if zero_ok else "more than 0"
        raise UsageError(f"--{name} must be a number of seconds, {least}, got {value!r}")
