"""What a run reports: live snapshots for the display, and the statistics at its end."""

from __future__ import annotations

from typing import Protocol

from taskmaster.core.stop import Ending, StopReason
from taskmaster.errors import EXIT_OK, GeneratorError
from taskmaster.record import record
from taskmaster.store.checkpoint import State
from taskmaster.store.failures import FailureRecord


@record(frozen=False)
class Snapshot:
    """What the progress display shows."""

    done: int
    failed: int
    retried: int
    in_flight: int
    watermark: int
    done_this_run: int
    elapsed: float
    workers_lost: int
    stopping: bool
    total: int | None = None  # jobs in the whole run, when known
    counting: bool = False  # count_jobs() has not answered yet

    @property
    def rate(self) -> float:
        return self.done_this_run / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at this run's rate, when the total is known."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done - self.failed) / self.rate


@record
class RunStats:
    """What a run did; ``taskmaster.run`` returns it.

    ``stop`` is why the run ended early (None when it ran to its end); the exit code
    follows from it through one table (:mod:`taskmaster.core.stop`).
    """

    done: int = 0  # all runs together
    failed: int = 0
    done_this_run: int = 0
    failed_this_run: int = 0
    retried: int = 0
    skipped: int = 0  # resolved by a previous run above its watermark
    workers_lost: int = 0
    elapsed: float = 0.0
    watermark: int = 0
    finished: bool = False
    stop: StopReason | None = None
    exit_code: int = EXIT_OK
    state_file: str | None = None
    failures_file: str | None = None
    failure_records: tuple[FailureRecord, ...] = ()
    generator_error: GeneratorError | None = None
    retry_failed: bool = False  # a --retry-failed replay

    @property
    def rate(self) -> float:
        return self.done_this_run / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def interrupted(self) -> bool:
        return self.stop is not None and self.stop.is_interruption

    def ending(self) -> Ending | None:
        """How to tell the user about an early stop; None for a run that ran to its end."""
        if self.stop is None:
            return None
        return Ending(self.stop, self.retry_failed, self.watermark, self.state_file)


@record(frozen=False)
class Counters:
    """What the loop counts while it runs (RunStats is made from them at the end)."""

    retried: int = 0
    skipped: int = 0
    workers_lost: int = 0


class Reporter(Protocol):
    def message(self, text: str) -> None: ...

    def tick(self, snap: Snapshot) -> None: ...


class StateSink(Protocol):
    def write(self, state: State) -> None: ...
