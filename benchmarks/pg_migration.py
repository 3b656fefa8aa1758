"""examples/postgres_migration.py against a bare Pool and a plain loop, on a real PostgreSQL.

A throwaway server (pgserver, on a unix socket) gets a ``comments_old`` table of N rows;
every row below migrates all of it into an emptied ``comments_new`` and must leave both
tables with equal checksums to count. The work is the example's: ranges of 200 rows from
its keyset ``get_jobs``, its transform and its ``unnest`` upsert.

- taskmaster: ``tm-run examples/postgres_migration.py 2`` (``handle_batch``, 100 ranges a
  call), with its checkpoint, failures file and retries on; then ``--batch-size 1`` (one
  range a call, as the Pool does); then the async example, ``--threads 4``.
- ``Pool(2).imap_unordered(handle_job, ranges, chunksize=8)``: the same setup_worker and
  handle_job, nothing else (no checkpoint, no resume, a dead worker loses its chunk).
- one process, ``for r in get_jobs(): handle_job(r)``.

    .venv/bin/python benchmarks/pg_migration.py [--quick] [--rows N] [--reps R]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import sys
import tempfile
import time
from typing import Any

import benchlib as bl

EXAMPLES = bl.BENCH_DIR.parent / "examples"
ROWS_DEFAULT = 100_000
ROWS_QUICK = 50_000
TIMEOUT = 120.0

PEER = """
import multiprocessing, sys
sys.path.insert(0, {examples!r})
import postgres_migration as m
dsn, how = sys.argv[1], sys.argv[2]
if how == "pool":
    ranges = list(m.get_jobs(dsn=dsn))
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(2, initializer=m.setup_worker, initargs=(dsn,)) as pool:
        for _ in pool.imap_unordered(m.handle_job, ranges, chunksize=8):
            pass
else:
    m.setup_worker(dsn)
    for r in m.get_jobs(dsn=dsn):
        m.handle_job(r)
    m.teardown_worker()
print("ok")
"""


def runners(dsn: str, tmp: str) -> list[tuple[str, list[str]]]:
    tm = bl.tm_run_path() or "tm-run"
    state = ["--state-file", os.path.join(tmp, "state.json"), "--no-progress"]
    sync, asyn = (
        str(EXAMPLES / "postgres_migration.py"),
        str(EXAMPLES / "postgres_migration_async.py"),
    )
    peer = [bl.PYTHON, "-c", PEER.format(examples=str(EXAMPLES)), dsn]
    return [
        ("taskmaster, handle_batch (100 ranges a call)", [tm, sync, "2", f"dsn={dsn}", *state]),
        ("taskmaster, --batch-size 1", [tm, sync, "2", f"dsn={dsn}", "--batch-size", "1", *state]),
        ("taskmaster, async, --threads 4", [tm, asyn, "2", f"dsn={dsn}", "--threads", "4", *state]),
        ("Pool(2).imap_unordered, chunksize 8", [*peer, "pool"]),
        ("single process loop", [*peer, "loop"]),
    ]


def reset(dsn: str, tmp: str) -> None:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute("TRUNCATE comments_new")
        conn.execute("CHECKPOINT")  # the previous row's dirty pages are not this row's work
    for name in os.listdir(tmp):
        os.unlink(os.path.join(tmp, name))


def verified(dsn: str, rows: int) -> bool:
    sys.path.insert(0, str(EXAMPLES))
    import postgres_migration as m

    old_n, old_md5, new_n, new_md5 = m.checksums(dsn)
    return old_n == new_n == rows and old_md5 == new_md5


def measure(dsn: str, rows: int, reps: int) -> dict[str, list[float]]:
    walls: dict[str, list[float]] = {}
    errors: dict[str, str] = {}
    with tempfile.TemporaryDirectory(prefix="tm-bench-pg-") as tmp:
        table = runners(dsn, tmp)
        for rep in range(reps):
            for name, cmd in table[rep % len(table) :] + table[: rep % len(table)]:
                if name in errors:
                    continue
                reset(dsn, tmp)
                res = bl.run_cmd(cmd, TIMEOUT)
                if not res.ok:
                    errors[name] = res.why()
                elif not verified(dsn, rows):
                    errors[name] = "comments_new differs from comments_old after the run"
                else:
                    walls.setdefault(name, []).append(res.wall)
        for name, _ in table:
            walls.setdefault(name, [])
    for name, why in errors.items():
        print(f"{name}: {why}")
    return walls


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--reps", type=int, default=3)
    args: argparse.Namespace = parser.parse_args(argv)
    rows = args.rows or (ROWS_QUICK if args.quick else ROWS_DEFAULT)
    try:
        import pgserver  # type: ignore[import-not-found, unused-ignore]
        import psycopg
    except ImportError as exc:
        print(f"pg_migration: skipped, {exc.name} is not installed (pip install -e '.[dev]')")
        return 0
    bl.print_header(f"pg_migration: {rows:,} rows, ranges of 200, 2 workers", args)
    folder = tempfile.mkdtemp(prefix="tm-pg-")
    server: Any = None
    try:
        server = pgserver.get_server(folder, cleanup_mode="stop")
        dsn = server.get_uri()
        sys.path.insert(0, str(EXAMPLES))
        import postgres_migration as m

        t0 = time.perf_counter()
        with psycopg.connect(dsn, autocommit=True) as conn:
            m.prepare(conn, rows)
            conn.execute("VACUUM ANALYZE comments_old")
        print(f"comments_old: {rows:,} rows created in {time.perf_counter() - t0:.1f} s")
        walls = measure(dsn, rows, args.reps)
    finally:
        if server is not None:
            with contextlib.suppress(Exception):
                server.cleanup()
        shutil.rmtree(folder, ignore_errors=True)
    table = []
    for name, values in walls.items():
        if not values:
            table.append([name, "-", "-", "-"])
            continue
        wall = bl.median(values)
        spread = f"{min(values):.2f}-{max(values):.2f}"
        table.append([name, f"{wall:.2f}", spread, bl.fmt_rate(rows / wall)])
    print(f"{args.reps} alternating runs per row; wall time from start to exit, median.")
    bl.print_table(["runner", "wall s", "min-max", "rows/s"], table)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
