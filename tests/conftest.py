"""Shared test harness: job modules with a ledger oracle, running the real CLI, and checks
that no process outlives its test.

The oracle: every handler appends its job to ``ledger/<pid>-<thread>`` with one O_APPEND
write after the job's work, before the result goes back, so "acked => in the ledger". A
kill between the write and the ack only makes an allowed duplicate.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

MARKER_VAR = "TASKMASTER_TEST_MARKER"

# The state files' key (store/keys.py) of every test and every process it starts: never the
# user's own ~/.config/taskmaster/state.key.
_KEY_DIR = tempfile.mkdtemp(prefix="tm-test-key-")
os.environ["TASKMASTER_KEY_FILE"] = os.path.join(_KEY_DIR, "state.key")
atexit.register(shutil.rmtree, _KEY_DIR, True)

LEDGER_MODULE = """
import os, threading, time

N = int(os.environ.get("TM_N", "1000"))
LEDGER = os.environ["TM_LEDGER"]
SLEEP = float(os.environ.get("TM_SLEEP", "0"))
_fds = {}


def get_jobs(last=0, **kwargs):
    yield from range(int(last), N)


def record(job):
    key = (os.getpid(), threading.get_ident())
    fd = _fds.get(key)
    if fd is None:
        fd = _fds[key] = os.open(
            os.path.join(LEDGER, "%d-%d" % key), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
    os.write(fd, b"%d\\n" % job)


def handle_job(job):
    if SLEEP:
        time.sleep(SLEEP)
    record(job)
"""


def pytest_configure(config: pytest.Config) -> None:
    # The Ctrl-C tests send SIGINT as a terminal would. A suite started in the background by
    # a script (``make test &``, ``nohup``) inherits SIGINT ignored, and so would every
    # process it starts (tm-run then keeps ignoring it, as it should): take it back here.
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def wait_until(predicate: Callable[[], object], timeout: float, what: str = "condition") -> None:
    """Poll ``predicate`` until true; fail the test with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.01)


def marked_pids(marker: str) -> list[int]:
    """Live processes whose environment carries ``marker`` (orphans included)."""
    found = []
    needle = f"{MARKER_VAR}={marker}".encode()
    for proc in psutil.process_iter(["pid"]):
        try:
            with open(f"/proc/{proc.pid}/environ", "rb") as f:
                if needle in f.read().split(b"\0") and proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        except (OSError, psutil.Error):
            continue
    return found


class Job:
    """A job module in a temp folder, run through the real CLI with a ledger oracle."""

    def __init__(self, folder: Path, marker: str, source: str = LEDGER_MODULE) -> None:
        self.folder = folder
        self.marker = marker
        self.ledger = folder / "ledger"
        self.ledger.mkdir(exist_ok=True)
        self.module = folder / "jobs.py"
        self.module.write_text(textwrap.dedent(source))
        self.state = folder / "jobs.state.json"
        self.failures_path = folder / "jobs.failures.jsonl"
        self.env = {**os.environ, MARKER_VAR: marker, "TM_LEDGER": str(self.ledger)}
        self.env.pop("TASKMASTER_FAILPOINTS", None)

    def args(self, *extra: str) -> list[str]:
        return [sys.executable, "-m", "taskmaster", str(self.module), *extra]

    def remote_args(self, command: str, *extra: str) -> list[str]:
        """The command line of tm-master, tm-slave or tm-spawn (``command``: master, slave,
        spawn) on this job module."""
        return [sys.executable, "-m", "taskmaster.cli.remote", command, str(self.module), *extra]

    def run(self, *extra: str, timeout: float = 45, **env: str) -> subprocess.CompletedProcess[str]:
        """Run ``python -m taskmaster jobs.py EXTRA...`` to its end."""
        return subprocess.run(
            self.args(*extra),
            cwd=self.folder,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, *extra: str, **env: str) -> subprocess.Popen[str]:
        """Start a run in its own process group (so the group can be killed like a terminal's)."""
        return subprocess.Popen(
            self.args(*extra),
            cwd=self.folder,
            env={**self.env, **env},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def counts(self) -> collections.Counter[int]:
        """How many times each job ran, over all ledger files."""
        c: collections.Counter[int] = collections.Counter()
        for path in self.ledger.iterdir():
            for line in path.read_bytes().splitlines():
                c[int(line)] += 1
        return c

    def checkpoint(self) -> dict[str, object]:
        doc: dict[str, object] = json.loads(self.state.read_text())
        return doc

    def failures(self) -> list[dict[str, object]]:
        if not self.failures_path.exists():
            return []
        return [json.loads(line) for line in self.failures_path.read_text().splitlines()]

    def workers(self, proc: subprocess.Popen[str]) -> list[int]:
        try:
            return [c.pid for c in psutil.Process(proc.pid).children()]
        except psutil.NoSuchProcess:
            return []


def kill_group(proc: subprocess.Popen[str], sig: int = signal.SIGKILL) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, sig)


@pytest.fixture
def marker() -> Iterator[str]:
    """A marker put in the environment of every process a test starts; after the test,
    no process carrying it may remain (orphaned workers included)."""
    mark = uuid.uuid4().hex
    yield mark
    deadline = time.monotonic() + 5
    left = marked_pids(mark)
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = marked_pids(mark)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    assert not left, f"processes outlived the test: {left}"


@pytest.fixture
def job(tmp_path: Path, marker: str) -> Job:
    """A ledger job module in ``tmp_path``."""
    return Job(tmp_path, marker)


@pytest.fixture
def make_job(tmp_path: Path, marker: str) -> Callable[[str], Job]:
    """Like ``job``, with a module source of the test's own."""
    return lambda source: Job(tmp_path, marker, source)
