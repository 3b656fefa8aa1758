"""``count_jobs()`` in a forked child, so a run starts at once and its total arrives later.

A ``SELECT count(*)`` on a big table can take minutes; the run should not wait for it. The
child is forked after the workers (so they never inherit its pipe) and before the parent
calls ``get_jobs`` or starts any thread, so forking is as safe as it is for a worker. It
dies with the parent, and is killed when the run ends first.
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
from collections.abc import Callable
from typing import Any

_PR_SET_PDEATHSIG = 1


class BackgroundCount:
    """The result of ``count_jobs(**kwargs)``, once its child has written it."""

    def __init__(self, count_jobs: Callable[..., Any], kwargs: dict[str, str]) -> None:
        self.value: int | None = None
        self.error: str | None = None
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child; its result is checked through the pipe
            os.close(read)
            _child(count_jobs, kwargs, write)
        os.close(write)
        self.fd: int | None = read
        self.pid: int | None = pid
        self._data = b""

    @property
    def pending(self) -> bool:
        return self.fd is not None

    def poll(self) -> None:
        """Take the result if the child wrote it (never blocks)."""
        if self.fd is None or not select.select([self.fd], [], [], 0)[0]:
            return
        chunk = os.read(self.fd, 4096)
        if chunk:
            self._data += chunk
            return
        self._finish()

    def _finish(self) -> None:
        text = self._data.decode(errors="replace")
        kind, _, rest = text.partition(" ")
        if kind == "ok":
            try:
                self.value = int(rest)
            except ValueError:
                self.error = f"count_jobs() returned {rest!r}, not a number"
        else:
            self.error = rest or "count_jobs() died before answering"
        self.close()

    def close(self) -> None:
        """Stop the child if it still counts, and reap it."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGKILL)
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self.pid, 0)
            self.pid = None


def _child(count_jobs: Callable[..., Any], kwargs: dict[str, str], fd: int) -> None:
    import ctypes  # in the child only

    code = 0
    try:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
        try:
            answer = f"ok {int(count_jobs(**kwargs))}"
        except BaseException as exc:
            answer = f"error count_jobs() failed ({exc!r})"[:2000]
        os.write(fd, answer.encode())
    except BaseException:
        code = 1
    finally:
        os._exit(code)
