"""tm-spawn's side: N slave processes on this host, watched until they end.

Each slave gets its own process group, so a terminal's Ctrl-C reaches it once, through
tm-spawn, rather than twice (the group's and the forwarded one), which would make it stop
at once instead of finishing its jobs. A slave gets SIGTERM when tm-spawn dies.

When one slave exits 0 (its master told it the run is finished), tm-spawn closes the
write end of a pipe whose read end every slave holds (``$TASKMASTER_SPAWN_FD``): a slave
that is still looking for a master, having connected a moment too late, leaves too.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

from taskmaster.errors import EXIT_FAILED, EXIT_OK, UsageError
from taskmaster.local.transport import describe_exit

FINISHED_FD_ENV = "TASKMASTER_SPAWN_FD"


def supervise(argv: list[str], env: dict[str, str], count: int, log: Callable[[str], None]) -> int:
    """Run ``count`` copies of ``argv`` to their end; the exit code of the group."""
    read_end, write_end = os.pipe()
    env = {**env, FINISHED_FD_ENV: str(read_end)}
    with _forwarding() as procs:
        try:
            for _ in range(count):
                procs.append(
                    subprocess.Popen(
                        argv,
                        env=env,
                        process_group=0,
                        preexec_fn=_die_with_parent,
                        pass_fds=(read_end,),
                    )
                )
        finally:
            os.close(read_end)
        open_ends = [write_end]
        try:
            codes = _wait_all(procs, open_ends)
        finally:
            for fd in open_ends:
                os.close(fd)
    worst = 0
    for number, (proc, code) in enumerate(zip(procs, codes, strict=True), start=1):
        if code != 0:
            why = describe_exit(code) if code < 0 else f"exited with code {code}"
            log(f"taskmaster: spawn: slave {number} (pid {proc.pid}) {why}")
            worst = worst or (code if code > 0 else EXIT_FAILED)
    return worst


def _wait_all(procs: list[subprocess.Popen[bytes]], open_ends: list[int]) -> list[int]:
    """Wait for every slave; the first that exits 0 closes the pipe (``open_ends``)."""
    while True:
        codes = [proc.poll() for proc in procs]  # every one: a zombie left would spin waitid
        if open_ends and EXIT_OK in codes:
            os.close(open_ends.pop())
        if None not in codes:
            return [proc.wait() for proc in procs]
        with contextlib.suppress(ChildProcessError):
            os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOWAIT)  # until one ends; poll() reaps


@contextlib.contextmanager
def _forwarding() -> Iterator[list[subprocess.Popen[bytes]]]:
    """Pass SIGINT/SIGTERM on to each slave once. The slaves have their own process group,
    so a terminal's Ctrl-C reaches them through tm-spawn only, not twice."""
    procs: list[subprocess.Popen[bytes]] = []

    def forward(signum: int, frame: Any) -> None:
        for proc in procs:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signum)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield procs
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _die_with_parent() -> None:
    # PR_SET_PDEATHSIG: a slave gets SIGTERM (finish, return, leave) when tm-spawn dies.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM, 0, 0, 0)


def finished_fd_from_env() -> int | None:
    """The pipe tm-spawn gives its slaves: end-of-file once a sibling heard the run finished."""
    text = os.environ.pop(FINISHED_FD_ENV, None)
    if text is None:
        return None
    try:
        fd = int(text)
        os.fstat(fd)
    except (ValueError, OSError):
        raise UsageError(
            f"${FINISHED_FD_ENV}={text!r} is not an open file descriptor (it is for "
            "tm-spawn's own slaves): unset it"
        ) from None
    return fd
