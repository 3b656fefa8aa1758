"""examples/postgres_migration*.py against a real PostgreSQL server that this module starts
and stops itself (pgserver: PostgreSQL in a wheel, on a unix socket; no root, no system
packages). Each test migrates its own database through the real CLI and compares both
tables by checksum: after kill -9 of the process group and --resume, after a worker is
killed, and across a server outage."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import MARKER_VAR, kill_group, wait_until

pgserver = pytest.importorskip("pgserver")
psycopg = pytest.importorskip("psycopg")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
sys.path.insert(0, str(EXAMPLES))
import postgres_migration  # noqa: E402

ROWS = 10_000  # 400 jobs of 25 rows


@pytest.fixture(scope="module")
def server() -> Iterator[Any]:
    """One PostgreSQL server for the module, stopped (and its files removed) after it."""
    folder = tempfile.mkdtemp(prefix="tm-pg-")  # short: the socket lives in it
    srv = pgserver.get_server(folder, cleanup_mode="stop")
    postmaster = srv.get_pid()
    try:
        yield srv
    finally:
        srv.cleanup()
        with contextlib.suppress(psutil.NoSuchProcess):
            psutil.Process(postmaster).wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        assert not psutil.pid_exists(postmaster) or psutil.Process(postmaster).status() == (
            psutil.STATUS_ZOMBIE
        ), "the PostgreSQL server outlived the tests"


@pytest.fixture
def dsn(server: Any) -> Iterator[str]:
    """A fresh database of the module's server for one test."""
    name = "t_" + uuid.uuid4().hex[:12]
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    yield server.get_uri(name)
    with psycopg.connect(server.get_uri(), autocommit=True) as conn:
        conn.execute(f"DROP DATABASE {name} WITH (FORCE)")


class Migration:
    """``python -m taskmaster examples/<module> 2 dsn=...`` with its files in tmp_path."""

    def __init__(self, module: str, folder: Path, marker: str, dsn: str) -> None:
        self.path = EXAMPLES / module
        self.dsn = dsn
        self.state = folder / "migration.state.json"
        self.failures = folder / "migration.failures.jsonl"
        self.folder = folder
        self.env = {**os.environ, MARKER_VAR: marker, "PYTHONDONTWRITEBYTECODE": "1"}
        self.env.pop("TASKMASTER_FAILPOINTS", None)

    def args(self, *extra: str) -> list[str]:
        return [
            sys.executable, "-m", "taskmaster", str(self.path), "2", f"dsn={self.dsn}",
            f"rows={ROWS}", "chunk=25", "--state-file", str(self.state),
            "--failures", str(self.failures), "--no-progress", *extra,
        ]  # fmt: skip

    def run(self, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.args(*extra), cwd=self.folder, env=self.env, capture_output=True, text=True,
            timeout=40, stdin=subprocess.DEVNULL,
        )  # fmt: skip

    def start(self, *extra: str) -> subprocess.Popen[str]:
        return subprocess.Popen(
            self.args(*extra), cwd=self.folder, env=self.env, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
        )  # fmt: skip

    def watermark(self) -> int:
        try:
            return int(json.loads(self.state.read_text())["watermark"])
        except (OSError, ValueError, KeyError):
            return 0

    def migrated(self) -> int:
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            if conn.execute("SELECT to_regclass('comments_new')").fetchone() == (None,):
                return 0
            row = conn.execute("SELECT count(*) FROM comments_new").fetchone()
        return int(row[0])

    def assert_tables_equal(self) -> None:
        old_n, old_md5, new_n, new_md5 = postgres_migration.checksums(self.dsn)
        assert (old_n, new_n) == (ROWS, ROWS)
        assert old_md5 == new_md5, "comments_new differs from comments_old transformed"
        assert not self.failures.exists() or not self.failures.read_text()


@pytest.fixture
def migration(tmp_path: Path, marker: str, dsn: str) -> Callable[[str], Migration]:
    return lambda module: Migration(module, tmp_path, marker, dsn)


def finish(proc: subprocess.Popen[str], timeout: float = 40) -> tuple[int, str]:
    try:
        _, err = proc.communicate(timeout=timeout)
    finally:
        kill_group(proc)
    return proc.returncode, err


@pytest.mark.timeout(60)
def test_kill_9_of_the_group_then_resume_migrates_every_row(
    migration: Callable[[str], Migration],
) -> None:
    m = migration("postgres_migration.py")
    proc = m.start("--rate", "100/s")  # 400 jobs in about 4 s: time to kill it midway
    try:
        wait_until(lambda: m.watermark() > 0, 30, "a checkpoint past the first job")
    finally:
        kill_group(proc)
        proc.communicate(timeout=10)
    assert proc.returncode == -signal.SIGKILL
    assert 0 < m.migrated() < ROWS, "the kill did not land mid-run"
    result = m.run("--resume")
    assert result.returncode == 0, result.stderr
    m.assert_tables_equal()


@pytest.mark.timeout(60)
def test_a_worker_killed_mid_run_loses_no_row(
    migration: Callable[[str], Migration],
) -> None:
    m = migration("postgres_migration.py")
    proc = m.start("--rate", "100/s")
    try:
        wait_until(lambda: m.watermark() > 0, 30, "a checkpoint past the first job")
        workers = [c.pid for c in psutil.Process(proc.pid).children()]
        assert workers
        os.kill(workers[0], signal.SIGKILL)
        code, err = finish(proc)
    finally:
        kill_group(proc)
    assert code == 0, err
    assert "killed by SIGKILL" in err, err
    m.assert_tables_equal()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("module", ["postgres_migration.py", "postgres_migration_async.py"])
def test_the_run_rides_out_a_server_restart(
    migration: Callable[[str], Migration], server: Any, module: str
) -> None:
    from pgserver._commands import pg_ctl

    m = migration(module)
    # The default retries: once every job fails, retries wait 8 s then 16 s (the outage
    # rule), which rides out this 3 s restart; the short 0.1 s delays alone would not.
    proc = m.start("--rate", "100/s")
    try:
        wait_until(lambda: m.watermark() > 0, 30, "a checkpoint past the first job")
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=server.pgdata, user=server.system_user)
        try:
            # The outage lasts 3 s, unless the run gives up (and exits) before.
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(3)
        finally:
            server.ensure_postgres_running()
        assert proc.poll() is None, "the run ended during the outage"
        assert m.watermark() < 400, "the run had finished before the outage"
        code, err = finish(proc)
    finally:
        kill_group(proc)
    assert code == 0, err
    if module == "postgres_migration.py":  # its connections died with the server
        assert "reconnecting" in err, err
    m.assert_tables_equal()


@pytest.mark.timeout(60)
def test_the_async_example_migrates_every_row(migration: Callable[[str], Migration]) -> None:
    m = migration("postgres_migration_async.py")
    result = m.run("--threads", "8")
    assert result.returncode == 0, result.stderr
    m.assert_tables_equal()


@pytest.mark.timeout(60)
def test_retry_failed_reads_the_fixed_row_because_jobs_are_id_ranges(
    migration: Callable[[str], Migration],
) -> None:
    """The failures file stores the job, an id range, not the row: once the bad row is
    fixed in the source, --retry-failed migrates the fixed row."""
    m = migration("postgres_migration.py")
    with psycopg.connect(m.dsn, autocommit=True) as conn:
        postgres_migration.prepare(conn, ROWS)
        conn.execute("UPDATE comments_old SET created = 'yesterday' WHERE id = 5000")
    first = m.run("--retries", "0")
    assert first.returncode == 1, first.stderr
    [failure] = [json.loads(line) for line in m.failures.read_text().splitlines()]
    assert failure["error"].startswith("ValueError: time data 'yesterday'"), failure
    lo, hi = failure["job"].strip("()").split(", ")
    assert int(lo) <= 5000 <= int(hi)
    with psycopg.connect(m.dsn, autocommit=True) as conn:
        query = "SELECT count(*) FROM comments_old WHERE id BETWEEN %s AND %s"
        row = conn.execute(query, (int(lo), int(hi))).fetchone()
        assert row is not None and m.migrated() == ROWS - row[0]  # that range alone is missing
        conn.execute("UPDATE comments_old SET created = '2021-06-01 12:00:00' WHERE id = 5000")
    again = m.run("--retry-failed")
    assert again.returncode == 0, again.stderr
    m.assert_tables_equal()
