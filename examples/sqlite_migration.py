"""Migrate a SQLite table to a new schema, resumable by primary key.

The old table ``users(id, name, email)`` is copied into ``users_v2(id, first_name,
last_name, email, email_domain)``: the name is split, the email trimmed and lower-cased.
Each job is a primary-key range; its handler reads the range and writes it with one
``INSERT OR REPLACE`` per row in one transaction, so running a job twice is harmless.

On first use, a demo ``users`` table (20,000 rows, ids with gaps as after deletions) is
created in ``examples/.demo.sqlite`` (or the file given with ``db=``).

    tm-run examples/sqlite_migration.py 4 --rate 10/s    # 40 jobs; Ctrl-C or kill -9 halfway
    python examples/sqlite_migration.py                  # counts: users, users_v2, differing
    tm-run examples/sqlite_migration.py 4 --resume       # continues at the checkpoint
    python examples/sqlite_migration.py                  # 20,000 and 20,000, 0 differing
    sqlite3 examples/.demo.sqlite "SELECT count(*) FROM users_v2"   # if you have sqlite3

    tm-run examples/sqlite_migration.py 4 db=/tmp/other.sqlite chunk=100 rows=100000

At full speed the demo takes about a second: ``--rate 10/s`` (10 job starts a second)
leaves time to interrupt it. Without it, ``tm-run examples/sqlite_migration.py 4``.

KEY=VALUE arguments are part of the checkpoint's name: resume with the same ones. They
reach ``setup_worker`` too, which opens each worker's connection to ``db``.
``--threads 1`` (the default) is the right choice: SQLite takes one writer at a time, and
each worker process has its own connection.
"""

from __future__ import annotations

import os
import sqlite3
import sys
import threading
from collections.abc import Iterator

DEFAULT_DB = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".demo.sqlite")

FIRST = ["Ada", "Alan", "Barbara", "Edsger", "Frances", "Grace", "John", "Ken", "Radia", "Tony"]
LAST = ["Hopper", "Kay", "Knuth", "Lamport", "Liskov", "Perlman", "Ritchie", "Thompson", "Wirth"]
DOMAINS = ["Example.COM", "example.org", "Mail.Example.net"]


def connect(db: str) -> sqlite3.Connection:
    """A connection for several processes writing at once: WAL, and wait for the lock."""
    conn = sqlite3.connect(db, timeout=60, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA busy_timeout = 60000")
    conn.execute("PRAGMA journal_mode = WAL")
    return conn


def demo_row(i: int) -> tuple[int, str, str]:
    """Row ``i`` of the demo table, the same on every machine."""
    first, last = FIRST[i % len(FIRST)], LAST[i // len(FIRST) % len(LAST)]
    email = f"{first}.{last}{i}@{DOMAINS[i % len(DOMAINS)]}"
    return i, f"{first} {last}", email + (" " if i % 5 == 0 else "")  # stray spaces to clean


def create_demo(conn: sqlite3.Connection, rows: int) -> None:
    """Fill the old-schema ``users`` table with ``rows`` rows, in one transaction."""
    ids = (i for i in range(1, 2 * rows) if i % 8 != 3)  # every 8th id deleted long ago
    conn.execute("BEGIN IMMEDIATE")
    try:
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'users'").fetchone() is None:
            conn.execute(
                "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT NOT NULL, "
                "email TEXT NOT NULL)"
            )
            conn.executemany(
                "INSERT INTO users VALUES (?, ?, ?)", (demo_row(next(ids)) for _ in range(rows))
            )
        conn.execute(
            "CREATE TABLE IF NOT EXISTS users_v2 (id INTEGER PRIMARY KEY, "
            "first_name TEXT NOT NULL, last_name TEXT NOT NULL, email TEXT NOT NULL, "
            "email_domain TEXT NOT NULL)"
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def transform(row: tuple[int, str, str]) -> tuple[int, str, str, str, str]:
    """An old ``users`` row as a ``users_v2`` row."""
    user_id, name, email = row
    first, _, last = name.partition(" ")
    email = email.strip().lower()
    return user_id, first, last, email, email.rpartition("@")[2]


def get_jobs(
    last: tuple[int, int] | None = None,
    db: str = DEFAULT_DB,
    chunk: str = "500",
    rows: str = "20000",
) -> Iterator[tuple[int, int]]:
    """``(first_id, last_id)`` ranges of ``chunk`` rows, in id order, from ``last`` on."""
    conn = connect(os.path.abspath(db))
    try:
        create_demo(conn, int(rows))
        start = last[0] if last is not None else 0  # at last, inclusive: it may not have run
        while True:
            # Keyset pagination: a short query per range, no read transaction held open.
            ids = conn.execute(
                "SELECT id FROM users WHERE id >= ? ORDER BY id LIMIT ?", (start, int(chunk))
            ).fetchall()
            if not ids:
                return
            yield ids[0][0], ids[-1][0]
            start = ids[-1][0] + 1
    finally:
        conn.close()


def count_jobs(db: str = DEFAULT_DB, chunk: str = "500", rows: str = "20000") -> int:
    """How many ranges there are, for the progress bar's total and the ETA."""
    conn = connect(os.path.abspath(db))
    try:
        create_demo(conn, int(rows))
        (count,) = conn.execute("SELECT count(*) FROM users").fetchone()
    finally:
        conn.close()
    return -(-int(count) // int(chunk))


# One connection per worker process, opened by setup_worker, which gets the same KEY=VALUE
# arguments as get_jobs (db=, and the others it ignores).
_conn: sqlite3.Connection | None = None
_lock = threading.Lock()  # a connection is not for two threads at once (--threads > 1)


def setup_worker(db: str = DEFAULT_DB, **_: str) -> None:
    global _conn
    _conn = connect(os.path.abspath(db))


def handle_job(job: tuple[int, int]) -> None:
    first_id, last_id = job
    assert _conn is not None, "setup_worker opens the connection"
    with _lock:
        rows = _conn.execute(
            "SELECT id, name, email FROM users WHERE id BETWEEN ? AND ?", (first_id, last_id)
        ).fetchall()
        # One transaction per range: a bulk write is what makes a migration fast. IMMEDIATE
        # takes the write lock up front, waiting (busy_timeout) for other workers' writes.
        _conn.execute("BEGIN IMMEDIATE")
        try:
            _conn.executemany(
                "INSERT OR REPLACE INTO users_v2 VALUES (?, ?, ?, ?, ?)", map(transform, rows)
            )
            _conn.execute("COMMIT")
        except BaseException:
            _conn.execute("ROLLBACK")
            raise


def teardown_worker() -> None:
    if _conn is not None:
        _conn.close()


def check(db: str = DEFAULT_DB) -> tuple[int, int, int]:
    """``(rows in users, rows in users_v2, users rows missing or wrong in users_v2)``."""
    conn = sqlite3.connect(db)
    try:
        old = {row[0]: transform(row) for row in conn.execute("SELECT * FROM users")}
        new = {row[0]: tuple(row) for row in conn.execute("SELECT * FROM users_v2")}
    finally:
        conn.close()
    return len(old), len(new), sum(new.get(k) != v for k, v in old.items())


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_DB
    if not os.path.exists(path):
        sys.exit(f"{path} does not exist yet: tm-run examples/sqlite_migration.py creates it")
    old, new, differ = check(path)
    print(f"users: {old:,} rows; users_v2: {new:,} rows; missing or different: {differ:,}")
