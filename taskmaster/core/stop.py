"""Why a run stopped before its end, and what each reason means for the user.

A run that stops early has exactly one :class:`StopReason`, the first one that happened.
Everything that depends on it (the exit code, the closing message, whether a
``--retry-failed`` replay keeps the jobs it did not reach) is read from the tables here,
never from text.
"""

from __future__ import annotations

import enum

from taskmaster.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_IOERR
from taskmaster.record import record


class StopReason(enum.Enum):
    INTERRUPTED = "interrupted"  # Ctrl-C or SIGTERM once: jobs in flight finish
    ABORTED = "aborted"  # twice: workers killed, their jobs stay unresolved
    DRAIN_TIMEOUT = "drain timeout"  # jobs still running after --drain-timeout
    MAX_FAILURES = "max failures"  # --max-failures reached
    BROKEN_RUN = "broken run"  # every job failing: the --halt rule
    SETUP_FAILED = "setup failed"  # workers in a row died in setup_worker
    SOURCE_FAILED = "source failed"  # get_jobs raised
    STATE_FAILED = "state folder failed"  # a write to the state folder failed

    @property
    def exit_code(self) -> int:
        return _EXIT_CODES[self]

    @property
    def is_interruption(self) -> bool:
        """Stopped from outside (a signal or its drain timeout), not by the run's own rules."""
        return self in _INTERRUPTIONS


_INTERRUPTIONS = {StopReason.INTERRUPTED, StopReason.ABORTED, StopReason.DRAIN_TIMEOUT}

_EXIT_CODES = {
    StopReason.INTERRUPTED: EXIT_INTERRUPTED,
    StopReason.ABORTED: EXIT_INTERRUPTED,
    StopReason.DRAIN_TIMEOUT: EXIT_INTERRUPTED,
    StopReason.MAX_FAILURES: EXIT_FAILED,
    StopReason.BROKEN_RUN: EXIT_FAILED,
    StopReason.SETUP_FAILED: EXIT_FAILED,
    StopReason.SOURCE_FAILED: EXIT_FAILED,
    StopReason.STATE_FAILED: EXIT_IOERR,
}

# What to fix before running again; the command to run again depends on the kind of run.
_CAUSES = {
    StopReason.INTERRUPTED: "interrupted",
    StopReason.ABORTED: "interrupted",
    StopReason.DRAIN_TIMEOUT: "interrupted (jobs were still running after --drain-timeout)",
    StopReason.MAX_FAILURES: "stopped at --max-failures; fix the cause of the failures",
    StopReason.BROKEN_RUN: "stopped because every job failed; fix the cause of the failures",
    StopReason.SETUP_FAILED: "stopped because setup_worker raised; fix it",
    StopReason.SOURCE_FAILED: "get_jobs raised; fix get_jobs",
    StopReason.STATE_FAILED: "the state folder failed; fix the folder (space, permissions)",
}


@record
class Ending:
    """How a stopped run is told to the user."""

    reason: StopReason
    retry_failed: bool  # a --retry-failed replay, whose next step is another replay
    watermark: int
    state_file: str | None

    def message(self) -> str:
        if self.retry_failed:
            return (
                f"taskmaster: {_CAUSES[self.reason]}. Every job this replay did not finish "
                "is still in the failures file; run the same command (with --retry-failed) "
                "again to continue"
            )
        where = f" (checkpoint: {self.state_file})" if self.state_file else ""
        return (
            f"taskmaster: {_CAUSES[self.reason]}, at watermark {self.watermark:,}{where}; "
            "run the same command with --resume to continue"
        )


def exit_code(reason: StopReason | None, failed: int) -> int:
    """The exit code of a run: its stop reason's, else 1 if any job failed, else 0."""
    if reason is not None:
        return reason.exit_code
    return EXIT_FAILED if failed else 0
