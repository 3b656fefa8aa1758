"""What the user sees: a live rich display on a terminal, plain status lines elsewhere.

The live display is refreshed by the coordinator's own loop (no refresh thread), so the
parent stays single-threaded and can fork replacement workers safely.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

from .coordinator import RunStats, Snapshot


def _rate(done: int, elapsed: float) -> str:
    return f"{done / elapsed:,.0f}/s" if elapsed > 0 else "-"


class PlainReporter:
    """For logs, cron and pipes: messages as lines, a status line every ``every`` seconds."""

    def __init__(self, stream: TextIO | None = None, every: float = 30.0) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self._last = time.monotonic()

    def message(self, text: str) -> None:
        print(f"taskmaster: {text}", file=self.stream, flush=True)

    def tick(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        self.message(
            f"done {snap.done:,}, failed {snap.failed:,}, in flight {snap.in_flight:,}, "
            f"rate {_rate(snap.done_this_run, snap.elapsed)}, watermark {snap.watermark:,}"
        )

    def close(self) -> None:
        pass


class RichReporter:
    """A live line on stderr: a spinner, counts, rate and elapsed time."""

    def __init__(self) -> None:
        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=self.console,
            auto_refresh=False,
            transient=True,
        )
        self._task = self.progress.add_task("starting", total=None)
        self.progress.start()

    def message(self, text: str) -> None:
        self.progress.console.print(f"taskmaster: {text}", markup=False, highlight=False)
        self.progress.refresh()

    def tick(self, snap: Snapshot) -> None:
        parts = [f"[green]{snap.done:,} done[/]"]
        if snap.failed:
            parts.append(f"[red]{snap.failed:,} failed[/]")
        if snap.retried:
            parts.append(f"[yellow]{snap.retried:,} retried[/]")
        parts.append(f"{snap.in_flight:,} in flight")
        parts.append(_rate(snap.done_this_run, snap.elapsed))
        if snap.stopping:
            parts.append("[bold]stopping[/]")
        self.progress.update(self._task, description=", ".join(parts))
        self.progress.refresh()

    def close(self) -> None:
        self.progress.stop()


def summary(stats: RunStats) -> str:
    """One line for the end of a run."""
    parts = [f"{stats.done_this_run:,} jobs done"]
    if stats.done != stats.done_this_run:
        parts[0] += f" ({stats.done:,} over all runs)"
    parts.append(f"{stats.failed_this_run:,} failed")
    if stats.retried:
        parts.append(f"{stats.retried:,} retried")
    if stats.skipped:
        parts.append(f"{stats.skipped:,} skipped as done before")
    if stats.workers_lost:
        parts.append(f"{stats.workers_lost:,} workers lost and replaced")
    line = ", ".join(parts) + f" in {stats.elapsed:.1f} s ({stats.rate:,.0f} jobs/s)"
    if stats.failed and stats.failures_file:
        line += f"; failures in {stats.failures_file}"
    return line
