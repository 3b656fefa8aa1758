"""Exceptions and exit codes.

Every error a user can cause is a :class:`TaskmasterError` carrying the exit code the CLI
uses for it and a message that says what was wrong and what to do next. Only ``cli.py``
turns them into an exit.
"""

from __future__ import annotations

import os

EXIT_OK = 0
EXIT_FAILED = 1  # finished, but some jobs failed for good (or the generator raised)
EXIT_USAGE = 2  # bad usage or input: nothing was run
EXIT_IOERR = 74  # the state folder went bad (full, read-only, fsync error)
EXIT_LOCKED = 75  # another run holds the state file
EXIT_INTERRUPTED = 130  # Ctrl-C or SIGTERM; the checkpoint was written


class TaskmasterError(Exception):
    """An error with a user-facing message and an exit code."""

    exit_code = EXIT_USAGE


class UsageError(TaskmasterError):
    """Bad options or arguments."""


class TargetError(TaskmasterError):
    """The job module cannot be loaded or lacks a function."""


class CheckpointError(TaskmasterError):
    """A state file that is not a valid taskmaster checkpoint, or not this run's."""


class StateIOError(TaskmasterError):
    """Writing the checkpoint or the failures file failed; the last good checkpoint stands."""

    exit_code = EXIT_IOERR


class LockedError(TaskmasterError):
    """Another run is using the same state file."""

    exit_code = EXIT_LOCKED


class GeneratorError(TaskmasterError):
    """``get_jobs`` raised; the jobs pulled before it were finished and checkpointed."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, traceback_text: str) -> None:
        super().__init__(message)
        self.traceback_text = traceback_text


_HERE = os.path.dirname(os.path.abspath(__file__))  # the package: its frames are ours


def describe_error(exc: BaseException) -> tuple[str, str]:
    """``("Type: message", traceback text)`` of an exception, safe for any exception.

    The traceback starts at the user's code: taskmaster's own leading frames are dropped.
    """
    try:
        message = str(exc)
    except Exception:
        message = "<exception with failing __str__>"
    text = f"{type(exc).__name__}: {message}" if message else type(exc).__name__
    tb = exc.__traceback__
    while tb is not None and tb.tb_frame.f_code.co_filename.startswith(_HERE):
        tb = tb.tb_next
    try:
        import traceback  # on the first failure only: it is not needed to start

        return text, "".join(traceback.format_exception(type(exc), exc, tb))
    except Exception:
        return text, ""


def detail_block(detail: str) -> str:
    """``detail`` (a traceback) as a block indented under the line it ends, after a colon;
    "" when it is blank."""
    if not detail.strip():
        return ""
    import textwrap  # only to show a traceback: not on every start

    return ":\n" + textwrap.indent(detail.rstrip(), "    ")
