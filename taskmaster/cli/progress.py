"""What the user sees: a live rich display on a terminal, plain or JSON status lines elsewhere.

The live display is refreshed by the coordinator's own loop (no refresh thread), so the
parent stays single-threaded and can fork replacement workers safely. rich honours
``NO_COLOR``.
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any, TextIO

from taskmaster.core.stats import RunStats, Snapshot


def duration(seconds: float | None) -> str:
    """``3725`` -> ``"1:02:05"``; None -> ``"?"``."""
    if seconds is None:
        return "?"
    s = int(seconds + 0.5)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def status_fields(snap: Snapshot) -> dict[str, Any]:
    eta = snap.eta
    return {
        "done": snap.done,
        "failed": snap.failed,
        "retried": snap.retried,
        "in_flight": snap.in_flight,
        "total": snap.total,
        "rate": round(snap.rate, 1),
        "watermark": snap.watermark,
        "elapsed": round(snap.elapsed, 1),
        "eta": None if eta is None else round(eta, 1),
        "workers_lost": snap.workers_lost,
        "counting": snap.counting,
    }


def summary_fields(stats: RunStats) -> dict[str, Any]:
    return {
        "done": stats.done,
        "done_this_run": stats.done_this_run,
        "failed": stats.failed,
        "failed_this_run": stats.failed_this_run,
        "retried": stats.retried,
        "skipped": stats.skipped,
        "workers_lost": stats.workers_lost,
        "elapsed": round(stats.elapsed, 3),
        "rate": round(stats.rate, 1),
        "watermark": stats.watermark,
        "finished": stats.finished,
        "exit_code": stats.exit_code,
        "state_file": stats.state_file,
        "failures_file": stats.failures_file,
    }


class PlainReporter:
    """For nohup, cron, CI and pipes: messages as lines, a status line every ``every`` s.

    With ``json_lines``, every line is a JSON object with an ``event`` field, for log
    collectors: ``message``, ``status`` and ``summary``.
    """

    def __init__(
        self, stream: TextIO | None = None, every: float = 30.0, json_lines: bool = False
    ) -> None:
        self.stream = stream or sys.stderr
        self.every = every
        self.json = json_lines
        self._last = time.monotonic()

    def _emit(self, event: str, text: str, fields: dict[str, Any]) -> None:
        if self.json:
            line = json.dumps({"event": event, "time": round(time.time(), 3), **fields})
        else:
            line = f"taskmaster: {text}"
        print(line, file=self.stream, flush=True)

    def message(self, text: str) -> None:
        self._emit("message", text, {"text": text})

    def tick(self, snap: Snapshot) -> None:
        now = time.monotonic()
        if now - self._last < self.every:
            return
        self._last = now
        total = f"/{snap.total:,}" if snap.total is not None else ""
        text = (
            f"done {snap.done:,}{total}, failed {snap.failed:,}, in flight {snap.in_flight:,}, "
            f"rate {snap.rate:,.0f}/s, watermark {snap.watermark:,}"
        )
        if snap.total is not None:
            text += f", ETA {duration(snap.eta)}"
        elif snap.counting:
            text += ", counting jobs..."
        self._emit("status", text, status_fields(snap))

    def finished(self, stats: RunStats) -> None:
        self._emit("summary", summary(stats), summary_fields(stats))

    def close(self) -> None:
        pass


class RichReporter:
    """A live line on stderr: counts, rate, and a bar with an ETA when the total is known."""

    def __init__(self) -> None:
        # Imported here: rich costs ~30 ms of start-up, and a run without a terminal has
        # no use for it.
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            Progress,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
        )

        self.console = Console(stderr=True)
        self.progress = Progress(
            SpinnerColumn(),
            BarColumn(bar_width=30),
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

    def worker_line(self, text: str) -> None:
        """A line a worker wrote to the terminal: printed above the live line, its colours
        kept (called from the relay's thread; rich's console takes its own lock)."""
        from rich.text import Text

        self.console.print(Text.from_ansi(text), soft_wrap=True, highlight=False)

    def tick(self, snap: Snapshot) -> None:
        total = f"/{snap.total:,}" if snap.total is not None else ""
        parts = [f"[green]{snap.done:,}{total} done[/]"]
        if snap.failed:
            parts.append(f"[red]{snap.failed:,} failed[/]")
        if snap.retried:
            parts.append(f"[yellow]{snap.retried:,} retried[/]")
        parts.append(f"{snap.in_flight:,} in flight")
        parts.append(f"{snap.rate:,.0f}/s")
        if snap.total is not None:
            parts.append(f"ETA {duration(snap.eta)}")
        elif snap.counting:
            parts.append("counting jobs...")
        if snap.stopping:
            parts.append("[bold]stopping[/]")
        self.progress.update(
            self._task,
            description=", ".join(parts),
            total=snap.total,
            completed=snap.done + snap.failed,
        )
        self.progress.refresh()

    def finished(self, stats: RunStats) -> None:
        self.close()
        self.console.print(f"taskmaster: {summary(stats)}", markup=False, highlight=False)

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
