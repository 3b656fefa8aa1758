"""What a run reports: live snapshots for the display, and the statistics at its end."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from taskmaster.errors import EXIT_OK, GeneratorError
from taskmaster.store.checkpoint import State
from taskmaster.store.failures import FailureRecord


@dataclass(slots=True)
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

    @property
    def rate(self) -> float:
        return self.done_this_run / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def eta(self) -> float | None:
        """Seconds left at this run's rate, when the total is known."""
        if self.total is None or self.rate <= 0:
            return None
        return max(0, self.total - self.done - self.failed) / self.rate


@dataclass(slots=True)
class RunStats:
    """What a run did; ``taskmaster.run`` returns it."""

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
    interrupted: bool = False
    exit_code: int = EXIT_OK
    state_file: str | None = None
    failures_file: str | None = None
    failure_records: list[FailureRecord] = field(default_factory=list)
    generator_error: GeneratorError | None = None

    @property
    def rate(self) -> float:
        return self.done_this_run / self.elapsed if self.elapsed > 0 else 0.0


class Reporter(Protocol):
    def message(self, text: str) -> None: ...

    def tick(self, snap: Snapshot) -> None: ...


class StateSink(Protocol):
    def write(self, state: State) -> None: ...
