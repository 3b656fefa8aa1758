"""A forked worker process and its end of the pipe, without ``multiprocessing``.

The transport needs little of ``multiprocessing``: fork, a sentinel fd that reports the
child's exit, its exit code, and a socket pair framed as ``Connection.send_bytes`` frames
(see ``taskmaster.local.wire``). Importing ``multiprocessing`` and its connection module
took about 18 ms of a run's start-up, a tenth of it; these few lines do the same.

The child behaves as a ``multiprocessing`` fork child does: stdin is ``/dev/null``, an
exception that escapes the target prints its traceback and exits 1, ``sys.exit(n)`` exits
n, non-daemon threads are waited for, stdout and stderr are flushed, and it leaves by
``os._exit``, so the parent's atexit handlers and buffers never run twice. If the user's code
loaded ``multiprocessing``, its after-fork hooks and exit finalizers run as in its own
children, so a ``multiprocessing.Queue`` made in the parent works in a worker.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from collections.abc import Callable
from typing import Any

from taskmaster.local.wire import frame_head


class Conn:
    """A worker's end of its socket pair: whole frames, written blocking."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock

    def fileno(self) -> int:
        return self._sock.fileno()

    def send_bytes(self, data: bytes | bytearray | memoryview) -> None:
        head = frame_head(len(data))
        if len(data) < 16384:
            self._sock.sendall(head + data)  # one write for the small, common message
        else:
            self._sock.sendall(head)
            self._sock.sendall(data)


class Child:
    """A forked process running ``target(*args)``; ``sentinel`` reads EOF once it exits."""

    def __init__(self, target: Callable[..., Any], args: tuple[Any, ...]) -> None:
        self._target = target
        self._args = args
        self.pid: int | None = None
        self.sentinel = -1
        self._exitcode: int | None = None

    def start(self) -> None:
        read_end, write_end = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: it holds the write end until it exits
            os.close(read_end)
            os._exit(_run_child(self._target, self._args))
        os.close(write_end)
        self.pid, self.sentinel = pid, read_end

    @property
    def exitcode(self) -> int | None:
        """None while it runs; its exit status, or minus the signal that killed it."""
        if self._exitcode is None and self.pid is not None:
            try:
                pid, status = os.waitpid(self.pid, os.WNOHANG)
            except ChildProcessError:
                return None
            if pid:
                self._exitcode = os.waitstatus_to_exitcode(status)
        return self._exitcode

    def is_alive(self) -> bool:
        return self.pid is not None and self.exitcode is None

    def join(self, timeout: float | None = None) -> None:
        """Wait until it has exited (at most ``timeout`` seconds), and reap it."""
        if self.pid is None or self._exitcode is not None:
            return
        if timeout is not None:
            poller = select.poll()  # not select.select: fds may be past 1023
            poller.register(self.sentinel, select.POLLIN)
            if not poller.poll(max(0, int(timeout * 1000))):
                return
        try:
            _, status = os.waitpid(self.pid, 0)  # it has closed the sentinel: it exits
        except ChildProcessError:
            return
        self._exitcode = os.waitstatus_to_exitcode(status)

    def close(self) -> None:
        """Close the sentinel; after join, or when the process is known gone."""
        if self.sentinel >= 0:
            os.close(self.sentinel)
            self.sentinel = -1


def _after_fork_of_multiprocessing() -> None:
    """What a ``multiprocessing`` fork child does first, if the user's code loaded it (a
    ``multiprocessing.Queue`` made in the parent resets its feeder thread this way)."""
    util = sys.modules.get("multiprocessing.util")
    if util is not None:
        util._finalizer_registry.clear()
        util._run_after_forkers()


def _run_child(target: Callable[..., Any], args: tuple[Any, ...]) -> int:
    """The child's life: its exit code, as a ``multiprocessing`` child would have it."""
    code = 1
    try:
        _after_fork_of_multiprocessing()
        if sys.stdin is not None:
            try:
                sys.stdin.close()
                sys.stdin = open(os.devnull)  # noqa: SIM115 (the process's stdin, for good)
            except (OSError, ValueError):
                pass
        target(*args)
        code = 0
    except SystemExit as exc:
        if exc.code is None:
            code = 0
        elif isinstance(exc.code, int):
            code = exc.code
        else:
            sys.stderr.write(str(exc.code) + "\n")
            code = 1
    except BaseException:
        _print_exc()
    finally:
        try:
            threading._shutdown()  # type: ignore[attr-defined]  # non-daemon threads
            util = sys.modules.get("multiprocessing.util")
            if util is not None:
                util._exit_function()  # e.g. a multiprocessing.Queue's feeder flushes
        except BaseException:
            _print_exc()
        for stream in (sys.stdout, sys.stderr):
            try:
                if stream is not None:
                    stream.flush()
            except (AttributeError, ValueError, OSError):
                pass
    return code


def _print_exc() -> None:
    import traceback  # only when something escaped: not on every worker's start

    traceback.print_exc()
