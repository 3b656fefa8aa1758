"""A worker's stdout and stderr written a whole line at a time.

Several workers (and their threads) share the terminal or the pipe tm-run writes to.
Python's streams hand each piece of a ``print`` to the file on its own (stderr is
write-through) or in blocks of 8 KiB (stdout on a pipe), so two workers' lines, or two
threads' lines, mix within a line. Here each thread collects its text until a newline and
sends its complete lines with one ``os.write``: on a pipe, a write of up to 4 KiB is never
mixed with another.

When the parent draws a live progress line on the terminal, what workers write to that
terminal would land on it, and be overdrawn. Then the workers' stdout and stderr, where they
are that terminal, go into one pipe instead (``OutputRelay``), and the parent prints each
line above its progress line.
"""

from __future__ import annotations

import contextlib
import io
import os
import sys
import threading
from collections.abc import Callable
from typing import Protocol, TextIO, cast, runtime_checkable

FLUSH_PARTIAL = 1 << 16  # a thread's text without a newline goes out past this size anyway


class LineWriter(io.TextIOBase):
    """Text written by any thread goes to ``fd`` in whole lines, one write per batch."""

    def __init__(self, stream: TextIO) -> None:
        super().__init__()
        self._stream = stream
        self._fd = stream.fileno()
        self._encoding = stream.encoding or "utf-8"
        self._pending: dict[int, str] = {}  # per thread: text after its last newline
        self._lock = threading.Lock()

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return self._encoding

    @property
    def errors(self) -> str | None:  # type: ignore[override]
        return "backslashreplace"

    @property
    def buffer(self) -> io.BufferedIOBase:  # for code that writes bytes to sys.stdout.buffer
        return cast(io.BufferedIOBase, self._stream.buffer)

    def fileno(self) -> int:
        return self._fd

    def isatty(self) -> bool:
        return os.isatty(self._fd)

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        me = threading.get_ident()
        with self._lock:
            pending = self._pending.pop(me, "") + text
        head, newline, rest = pending.rpartition("\n")
        if newline:
            self._emit(head + newline)
        if len(rest) > FLUSH_PARTIAL:
            self._emit(rest)
        elif rest:
            with self._lock:
                self._pending[me] = rest
        return len(text)

    def flush(self) -> None:
        """Send every thread's unfinished line (at exit, or when the user flushes)."""
        with self._lock:
            pending, self._pending = self._pending, {}
        for text in pending.values():
            self._emit(text)

    def _emit(self, text: str) -> None:
        data = memoryview(text.encode(self._encoding, "backslashreplace"))
        try:
            while data:
                data = data[os.write(self._fd, data) :]
        except OSError:
            pass  # the terminal or pipe is gone: as print to a closed stream, nothing to do


@runtime_checkable
class LineSink(Protocol):
    """A reporter that prints workers' output lines itself (above a live display)."""

    def worker_line(self, text: str) -> None: ...


class OutputRelay:
    """A pipe for the workers' terminal output, and a thread that hands its lines to a sink.

    The parent keeps the write end open while it may fork workers; ``close`` (once the
    workers are gone) closes it, and the thread ends at EOF, after the last line.
    """

    def __init__(self, sink: Callable[[str], None]) -> None:
        self._sink = sink
        self._read_fd, self.write_fd = os.pipe()
        self._thread = threading.Thread(target=self._pump, name="tm-output", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        rest = b""
        try:
            while chunk := os.read(self._read_fd, 1 << 16):
                *lines, rest = (rest + chunk).split(b"\n")
                for line in lines:
                    self._deliver(line)
            if rest:
                self._deliver(rest)
        except OSError:
            pass
        finally:
            os.close(self._read_fd)

    def _deliver(self, line: bytes) -> None:
        # A sink that fails must not stop the pipe: the workers would block on it.
        with contextlib.suppress(Exception):
            self._sink(line.decode("utf-8", "backslashreplace"))

    def close(self, timeout: float = 5.0) -> None:
        """Close our write end and wait for the lines still in the pipe (bounded: a process a
        job started may hold the pipe open for longer)."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1
        self._thread.join(timeout)


def relay_terminal(relay_fd: int) -> None:
    """In a worker: the streams that are a terminal write into the parent's relay pipe."""
    for fd in (1, 2):
        with contextlib.suppress(OSError):
            if os.isatty(fd):
                os.dup2(relay_fd, fd)
    with contextlib.suppress(OSError):
        os.close(relay_fd)


def whole_lines() -> None:
    """Make this process's sys.stdout and sys.stderr line writers on the real streams (a
    worker forked while the parent's live display held them writes past it)."""
    for name in ("stdout", "stderr"):
        real = getattr(sys, f"__{name}__")
        if real is None:
            continue
        try:
            real.flush()
            setattr(sys, name, LineWriter(real))
        except (OSError, ValueError, io.UnsupportedOperation):
            continue  # no file descriptor (a test's stand-in stream): leave it
