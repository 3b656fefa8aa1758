"""Workers' prints on a terminal: above the live progress line, never on it.

The run happens on a real pseudo-terminal (stdout and stderr both), as a user's does; the
screen it draws is read back, its escape sequences taken out and cut into lines.
"""

from __future__ import annotations

import os
import pty
import re
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from taskmaster.local.output import OutputRelay

pytestmark = pytest.mark.timeout(60)

JOBS = """\
import os, sys, time

def get_jobs(last=0, n="60"):
    yield from range(int(last or 0), int(n))

def handle_job(i):
    print(f"job {i} says hello")
    print(f"job {i} complains", file=sys.stderr)
    time.sleep(0.01)
"""

ESCAPES = re.compile(rb"\x1b\[[0-9;?]*[A-Za-z]")


def run_on_a_terminal(tmp_path: Path, *args: str) -> tuple[int, list[str]]:
    (tmp_path / "pjobs.py").write_text(JOBS)
    main, sub = pty.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "taskmaster", "pjobs.py", *args],
        cwd=tmp_path,
        stdin=sub,
        stdout=sub,
        stderr=sub,
        close_fds=True,
    )
    os.close(sub)
    screen = b""
    deadline = time.monotonic() + 45
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([main], [], [], 1.0)
            if not ready:
                if proc.poll() is not None:
                    break
                continue
            try:
                chunk = os.read(main, 1 << 16)
            except OSError:  # EIO: every holder of the terminal is gone
                break
            if not chunk:
                break
            screen += chunk
        rc = proc.wait(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(main)
    text = ESCAPES.sub(b"", screen).decode("utf-8", "replace")
    return rc, [line for line in re.split(r"[\r\n]+", text) if line.strip()]


def test_worker_lines_land_whole_above_the_progress_line(tmp_path: Path) -> None:
    rc, lines = run_on_a_terminal(tmp_path, "2")
    assert rc == 0, lines[-5:]
    hello = [line for line in lines if "says hello" in line]
    complaints = [line for line in lines if "complains" in line]
    # each line whole, alone on its screen line: nothing of the live line before or after it
    assert sorted(hello) == sorted(f"job {i} says hello" for i in range(60)), hello[:5]
    assert sorted(complaints) == sorted(f"job {i} complains" for i in range(60))
    assert lines[-1].startswith("taskmaster: 60 jobs done")


def test_without_a_live_line_workers_keep_their_own_streams(tmp_path: Path) -> None:
    """--no-progress: nothing is relayed, and the workers' streams stay the terminal."""
    (tmp_path / "pjobs.py").write_text(JOBS.replace('"60"', '"4"'))
    rc, lines = run_on_a_terminal(tmp_path, "2", "--no-progress", "n=4")
    assert rc == 0
    assert sorted(line for line in lines if "says hello" in line) == [
        f"job {i} says hello" for i in range(4)
    ]


def test_the_relay_hands_over_every_line_and_the_unfinished_last_one() -> None:
    got: list[str] = []
    relay = OutputRelay(got.append)
    pid = os.fork()
    if pid == 0:  # a worker: its writes, in pieces, then an unfinished line
        try:
            os.write(relay.write_fd, b"one\ntw")
            os.write(relay.write_fd, b"o\n" + "tr\u00e8s\n".encode() + b"\xff last")
        finally:
            os._exit(0)
    os.waitpid(pid, 0)
    relay.close()
    assert got == ["one", "two", "tr\u00e8s", "\\xff last"]


def test_a_failing_sink_does_not_block_the_writers() -> None:
    calls: list[str] = []

    def sink(line: str) -> None:
        calls.append(line)
        raise RuntimeError("the display is gone")

    relay = OutputRelay(sink)
    for i in range(2000):  # well past a pipe's 64 KiB if nothing were read
        os.write(relay.write_fd, f"line {i:04d} {'x' * 40}\n".encode())
    relay.close()
    assert len(calls) == 2000
