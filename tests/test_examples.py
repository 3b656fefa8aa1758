"""The runnable examples in examples/, each run through the real CLI as documented, with
its data, state and failures files in tmp_path."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from conftest import MARKER_VAR, kill_group, wait_until

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class Example:
    """An example module run with ``python -m taskmaster`` from ``folder``."""

    def __init__(self, name: str, folder: Path, marker: str) -> None:
        self.path = EXAMPLES / name
        self.folder = folder
        self.state = folder / f"{self.path.stem}.state.json"
        # No __pycache__ written into examples/: a test's files stay in tmp_path.
        self.env = {**os.environ, MARKER_VAR: marker, "PYTHONDONTWRITEBYTECODE": "1"}
        self.env.pop("TASKMASTER_FAILPOINTS", None)

    def args(self, *extra: str) -> list[str]:
        return [
            sys.executable,
            "-m",
            "taskmaster",
            str(self.path),
            *extra,
            "--state-file",
            str(self.state),
            "--no-progress",
        ]

    def run(self, *extra: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*extra),
            cwd=self.folder,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )

    def start(self, *extra: str) -> subprocess.Popen[str]:
        """A run in its own process group, as a terminal would start it."""
        return subprocess.Popen(
            self.args(*extra),
            cwd=self.folder,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )

    def checkpoint(self) -> dict[str, Any]:
        doc: dict[str, Any] = json.loads(self.state.read_text())
        return doc

    def watermark(self) -> int:
        try:
            return int(self.checkpoint()["watermark"])
        except FileNotFoundError:
            return 0


def load(name: str) -> ModuleType:
    """Import an example in the test process, for its helper functions."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    dont_write, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        spec.loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = dont_write
    return module


def stop(proc: subprocess.Popen[str]) -> tuple[str, str]:
    with contextlib.suppress(subprocess.TimeoutExpired):
        return proc.communicate(timeout=20)
    kill_group(proc)
    return proc.communicate()


def assert_finished(ex: Example, result: subprocess.CompletedProcess[str], jobs: int) -> None:
    assert result.returncode == 0, result.stderr
    state = ex.checkpoint()
    assert (state["finished"], state["done"], state["failed"]) == (True, jobs, 0), state


# --- sqlite_migration.py ---------------------------------------------------------------


def users_v2(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return conn.execute("SELECT * FROM users_v2 ORDER BY id").fetchall()
    finally:
        conn.close()


@pytest.mark.timeout(30)
def test_sqlite_migration_copies_every_row_into_the_new_schema(tmp_path: Path, marker: str) -> None:
    ex = Example("sqlite_migration.py", tmp_path, marker)
    db = tmp_path / "demo.sqlite"
    result = ex.run("2", f"db={db}")
    assert_finished(ex, result, 40)  # 20,000 rows in ranges of 500
    mig = load("sqlite_migration")
    assert mig.check(str(db)) == (20_000, 20_000, 0)
    rows = users_v2(db)
    assert rows[:3] == [
        (1, "Alan", "Hopper", "alan.hopper1@example.org", "example.org"),
        (2, "Barbara", "Hopper", "barbara.hopper2@mail.example.net", "mail.example.net"),
        (4, "Frances", "Hopper", "frances.hopper4@example.org", "example.org"),  # 3: a gap
    ]
    assert rows[4] == (6, "John", "Hopper", "john.hopper6@example.com", "example.com")


@pytest.mark.timeout(45)
def test_sqlite_migration_killed_halfway_resumes_to_a_complete_table(
    tmp_path: Path, marker: str
) -> None:
    ex = Example("sqlite_migration.py", tmp_path, marker)
    db = tmp_path / "demo.sqlite"
    args = ("2", f"db={db}", "chunk=20")  # 1,000 jobs
    # --rate keeps the first run going long enough to be killed in the middle.
    proc = ex.start(*args, "--rate", "500/s", "--checkpoint-every", "0.05")
    try:
        wait_until(lambda: ex.watermark() > 0, 20, "a checkpoint with jobs done")
    finally:
        kill_group(proc, signal.SIGKILL)
        stop(proc)
    assert proc.returncode == -signal.SIGKILL
    copied = len(users_v2(db))
    assert 0 < copied < 20_000, "the run was not killed halfway"
    result = ex.run(*args, "--resume")
    assert_finished(ex, result, 1000)
    assert ex.checkpoint()["runs"] == 2
    assert load("sqlite_migration").check(str(db)) == (20_000, 20_000, 0)


# --- http_fetch_async.py ---------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.mark.timeout(30)
def test_http_fetch_async_fetches_every_url_from_its_own_server(
    tmp_path: Path, marker: str
) -> None:
    ex = Example("http_fetch_async.py", tmp_path, marker)
    result = ex.run("2", "--threads", "50", "count=500", f"port={free_port()}")
    assert_finished(ex, result, 500)
    assert "demo server: 500 pages served" in result.stderr  # each page once: no retries


@pytest.mark.timeout(30)
def test_http_fetch_async_finishes_its_jobs_in_flight_after_ctrl_c_and_resumes(
    tmp_path: Path, marker: str
) -> None:
    # The server is outside tm-run's process group: Ctrl-C stops tm-run (which finishes the
    # requests in flight) and not the server they need.
    ex = Example("http_fetch_async.py", tmp_path, marker)
    args = ("2", "--threads", "20", "count=2000", f"port={free_port()}")
    proc = ex.start(*args, "--rate", "1000/s", "--checkpoint-every", "0.05")
    try:
        wait_until(lambda: ex.watermark() > 0, 20, "a checkpoint with jobs done")
        kill_group(proc, signal.SIGINT)
        _, err = stop(proc)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err
    state = ex.checkpoint()
    assert state["failed"] == 0 and 0 < state["done"] < 2000, state
    result = ex.run(*args, "--resume")
    assert_finished(ex, result, 2000)


@pytest.mark.timeout(30)
def test_http_fetch_async_uses_a_demo_server_started_by_hand(tmp_path: Path, marker: str) -> None:
    ex = Example("http_fetch_async.py", tmp_path, marker)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, str(ex.path), str(port)],
        env=ex.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert server.stdout is not None
        assert server.stdout.readline().startswith("listening on http://127.0.0.1:")
        result = ex.run("2", "--threads", "10", "count=100", f"port={port}")
        assert_finished(ex, result, 100)
        assert "pages served" not in result.stderr  # tm-run started no server of its own
    finally:
        _, err = server.communicate("", timeout=20)  # end of stdin: the server stops
    assert "demo server: 101 pages served" in err  # 100 and get_jobs' look at page 0


@pytest.mark.timeout(30)
def test_http_fetch_async_says_when_its_port_is_taken(tmp_path: Path, marker: str) -> None:
    ex = Example("http_fetch_async.py", tmp_path, marker)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # bound, not listening: no server answers there
        result = ex.run("1", "count=10", f"port={taken.getsockname()[1]}")
    assert result.returncode == 1
    assert "could not listen" in result.stderr and "port=N" in result.stderr


# --- cpu_bound.py ----------------------------------------------------------------------


@pytest.mark.timeout(30)
def test_cpu_bound_counts_primes_block_by_block(tmp_path: Path, marker: str) -> None:
    ex = Example("cpu_bound.py", tmp_path, marker)
    result = ex.run("2", "--threads", "1", "count=300")
    assert_finished(ex, result, 300)
    assert "block 0: 168 primes in [0, 1,000)" in result.stdout
    assert "block 200: 77 primes in [200,000, 201,000)" in result.stdout
    assert load("cpu_bound").count_primes(0) == 168
