"""Migrate a PostgreSQL table to a new schema with psycopg 3, resumable by primary key.

The legacy table ``comments_old(id, post_id, author, body, created)`` (the author padded
with spaces, the date as text) is copied into ``comments_new(id, post_id, author, body,
word_count, created_at)``. Each job is a primary-key range ``(first_id, last_id)`` of
``chunk`` rows; ``get_jobs`` pages the table by key (keyset pagination, restarting at
``last``), and ``handle_batch`` reads all the ranges of a batch and writes them with one
``INSERT ... SELECT FROM unnest(...) ON CONFLICT (id) DO UPDATE`` in one transaction, so a
job that runs twice (after a crash, on ``--resume``) is harmless.

    pip install 'psycopg[binary]'       # and a server: yours, or `pip install pgserver`, then
    python examples/postgres_migration.py serve   # a throwaway server; prints its DSN
    tm-run examples/postgres_migration.py 2 dsn=DSN            # kill -9 it halfway, then
    tm-run examples/postgres_migration.py 2 dsn=DSN --resume
    python examples/postgres_migration.py check DSN            # checksums of both tables

``dsn=`` is a libpq connection string or URI; without it, libpq's environment (``PGHOST``,
``PGDATABASE``, ``PGUSER``, ``PGPASSWORD``, ``~/.pgpass``) says where to connect, which
keeps a password out of the checkpoint (KEY=VALUE arguments are stored in it). On first
use the demo table is created with ``rows=`` rows (default 100,000); ``chunk=`` rows per
job (default 200).

One connection per worker thread, opened in ``setup_worker(dsn)`` and re-opened when it is
found closed (the server restarted): the failed attempt is retried after ``--retry-delay``
on a fresh connection. See ``postgres_migration_async.py`` for the same with an
``AsyncConnectionPool``.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import threading
import time
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg

RECONNECT_FOR = 60.0  # seconds get_jobs waits for a server that went away (a restart)
Row = tuple[int, int, str, str, str]  # comments_old
NewRow = tuple[int, int, str, str, int, datetime]  # comments_new

CREATE = """
CREATE TABLE IF NOT EXISTS comments_new (
    id bigint PRIMARY KEY, post_id integer NOT NULL, author text NOT NULL,
    body text NOT NULL, word_count integer NOT NULL, created_at timestamptz NOT NULL)
"""
# The demo's legacy table: ids with gaps (as after deletions), authors padded, text dates.
DEMO_TABLE = """
CREATE TABLE comments_old (
    id bigint PRIMARY KEY, post_id integer NOT NULL, author text NOT NULL,
    body text NOT NULL, created text NOT NULL)
"""
DEMO_ROWS = """
INSERT INTO comments_old
SELECT i + i / 7, i %% 997, '  user' || (i %% 5000) || ' ',
       'comment ' || i || repeat(' lorem ipsum', i %% 9),
       to_char(timestamp '2020-01-01' + i * interval '37 seconds', 'YYYY-MM-DD HH24:MI:SS')
FROM generate_series(1, %s) AS i
"""
READ = """
SELECT o.id, o.post_id, o.author, o.body, o.created
FROM unnest(%s::bigint[], %s::bigint[]) AS r(lo, hi)
JOIN comments_old AS o ON o.id BETWEEN r.lo AND r.hi
"""
UPSERT = """
INSERT INTO comments_new (id, post_id, author, body, word_count, created_at)
SELECT * FROM unnest(%s::bigint[], %s::integer[], %s::text[], %s::text[], %s::integer[],
                     %s::timestamptz[])
ON CONFLICT (id) DO UPDATE SET post_id = EXCLUDED.post_id, author = EXCLUDED.author,
    body = EXCLUDED.body, word_count = EXCLUDED.word_count, created_at = EXCLUDED.created_at
"""


def transform(row: Row) -> NewRow:
    """An old ``comments_old`` row as a ``comments_new`` row."""
    comment_id, post_id, author, body, created = row
    created_at = datetime.strptime(created, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)
    return comment_id, post_id, author.strip(), body, len(body.split()), created_at


def prepare(conn: psycopg.Connection[Any], rows: int) -> None:
    """Create the demo table (``rows`` rows) if there is none, and the new table."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(20131)")  # two first runs at once
        if conn.execute("SELECT to_regclass('comments_old')").fetchone() == (None,):
            conn.execute(DEMO_TABLE)
            conn.execute(DEMO_ROWS, (rows,))
        conn.execute(CREATE)


def get_jobs(
    last: tuple[int, int] | None = None, dsn: str = "", chunk: str = "200", rows: str = "100000"
) -> Iterator[tuple[int, int]]:
    """``(first_id, last_id)`` ranges of ``chunk`` rows in key order, from ``last`` on."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        prepare(conn, int(rows))
    start = last[0] if last is not None else 0  # at last, inclusive: it may not have run
    conn = psycopg.connect(dsn, autocommit=True)
    try:
        while True:
            try:
                # Keyset pagination: one short query per range, no transaction held open,
                # and the same ranges again on --resume or after a reconnect.
                ids = conn.execute(
                    "SELECT id FROM comments_old WHERE id >= %s ORDER BY id LIMIT %s",
                    (start, int(chunk)),
                ).fetchall()
            except psycopg.OperationalError as exc:
                conn.close()  # the server went away: wait for it, then page on from start
                print(f"postgres_migration: get_jobs: {type(exc).__name__}: reconnecting",
                      file=sys.stderr)  # fmt: skip
                conn = reconnect(dsn)
                continue
            if not ids:
                return
            yield ids[0][0], ids[-1][0]
            start = ids[-1][0] + 1
    finally:
        conn.close()


def reconnect(dsn: str, patience: float = RECONNECT_FOR) -> psycopg.Connection[Any]:
    """A new connection, trying for up to ``patience`` seconds (a server restarting)."""
    deadline, delay = time.monotonic() + patience, 0.1
    while True:
        try:
            return psycopg.connect(dsn, autocommit=True)
        except psycopg.OperationalError:
            if time.monotonic() + delay > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 2.0)


def count_jobs(dsn: str = "", chunk: str = "200", rows: str = "100000") -> int:
    """How many ranges there are, for the ETA (a cheap estimate would do as well)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        prepare(conn, int(rows))
        row = conn.execute("SELECT count(*) FROM comments_old").fetchone()
    return -(-int(row[0] if row else 0) // int(chunk))


# One connection per worker thread (a psycopg connection runs one statement at a time).
_local = threading.local()
_dsn = ""
_all: list[psycopg.Connection[Any]] = []
_all_lock = threading.Lock()


def setup_worker(dsn: str = "", **_: str) -> None:
    """Once per worker process: remember where to connect, and connect this thread."""
    global _dsn
    _dsn = dsn
    connection()  # a wrong DSN fails here, once, rather than in every job


def connection() -> psycopg.Connection[Any]:
    """This thread's connection, re-opened if it was found closed or broken."""
    conn: psycopg.Connection[Any] | None = getattr(_local, "conn", None)
    if conn is None or conn.closed or conn.broken:
        conn = _local.conn = psycopg.connect(_dsn)
        with _all_lock:
            _all.append(conn)
    return conn


def handle_batch(ranges: list[tuple[int, int]]) -> None:
    """Read every range of the batch, transform, upsert: one round trip each, one commit."""
    conn = connection()
    try:
        with conn.transaction():
            rows = conn.execute(READ, ([r[0] for r in ranges], [r[1] for r in ranges]))
            new = [transform(row) for row in rows.fetchall()]
            if new:
                conn.execute(UPSERT, [list(column) for column in zip(*new, strict=True)])
    except psycopg.OperationalError as exc:
        conn.close()  # the server went away: the next attempt connects again
        print(f"postgres_migration: {type(exc).__name__}: reconnecting", file=sys.stderr)
        raise


def handle_job(job: tuple[int, int]) -> None:
    """One range alone: what taskmaster runs, job by job, when a whole batch failed."""
    handle_batch([job])


def teardown_worker() -> None:
    with _all_lock:
        for conn in _all:
            conn.close()
        _all.clear()


def checksums(dsn: str = "") -> tuple[int, str, int, str]:
    """``(rows, md5)`` of ``comments_old`` as transformed and of ``comments_new``."""
    with psycopg.connect(dsn) as conn:
        old = conn.execute("SELECT * FROM comments_old ORDER BY id").fetchall()
        new = conn.execute("SELECT * FROM comments_new ORDER BY id").fetchall()
    return len(old), _digest(transform(r) for r in old), len(new), _digest(new)


def _digest(rows: Iterable[tuple[Any, ...]]) -> str:
    md5 = hashlib.md5(usedforsecurity=False)
    for row in rows:  # a timestamp as seconds: the session's time zone does not matter
        values = (v.timestamp() if isinstance(v, datetime) else v for v in row)
        md5.update(repr(tuple(values)).encode())
    return md5.hexdigest()


def serve(folder: str) -> None:
    """A throwaway PostgreSQL server (pip install pgserver) until Enter or Ctrl-D."""
    import pgserver  # type: ignore[import-not-found, unused-ignore]  # optional: only here

    server = pgserver.get_server(folder, cleanup_mode="stop")  # type: ignore[attr-defined, unused-ignore]
    print(f"dsn={server.get_uri()}\n(Enter or Ctrl-D stops the server)", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        sys.stdin.read(1)
    server.cleanup()


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2] if len(sys.argv) > 2 else os.path.join(here, ".pgdata"))
    elif sys.argv[1:2] == ["check"]:
        old_n, old_md5, new_n, new_md5 = checksums(sys.argv[2] if len(sys.argv) > 2 else "")
        same = "equal" if (old_n, old_md5) == (new_n, new_md5) else "DIFFERENT"
        print(f"comments_old: {old_n:,} rows md5 {old_md5} (transformed)")
        print(f"comments_new: {new_n:,} rows md5 {new_md5}: {same}")
        sys.exit(0 if same == "equal" else 1)
    else:
        sys.exit(__doc__)
