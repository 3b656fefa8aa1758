"""tm-spawn's side: N slave processes on this host, watched until they end.

Each slave gets its own process group, so a terminal's Ctrl-C reaches it once, through
tm-spawn, rather than twice (the group's and the forwarded one), which would make it stop
at once instead of finishing its jobs. A slave gets SIGTERM when tm-spawn dies.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

from taskmaster.errors import EXIT_FAILED
from taskmaster.local.transport import describe_exit


def supervise(argv: list[str], env: dict[str, str], count: int, log: Callable[[str], None]) -> int:
    """Run ``count`` copies of ``argv`` to their end; the exit code of the group."""
    with _forwarding() as procs:
        for _ in range(count):
            procs.append(
                subprocess.Popen(argv, env=env, process_group=0, preexec_fn=_die_with_parent)
            )
        codes = [proc.wait() for proc in procs]
    worst = 0
    for number, (proc, code) in enumerate(zip(procs, codes, strict=True), start=1):
        if code != 0:
            why = describe_exit(code) if code < 0 else f"exited with code {code}"
            log(f"taskmaster: spawn: slave {number} (pid {proc.pid}) {why}")
            worst = worst or (code if code > 0 else EXIT_FAILED)
    return worst


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
