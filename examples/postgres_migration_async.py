"""The PostgreSQL migration of ``postgres_migration.py`` with ``async def`` handlers and
psycopg's ``AsyncConnectionPool``, opened once per worker in an ``async def setup_worker``.

An ``async def handle_job`` runs ``--threads`` jobs at once on one asyncio loop per worker;
``setup_worker`` and ``teardown_worker``, ``async def`` too, run on that same loop, which
is where the pool (and its background tasks) must live. The pool hands each job a
connection, checks a connection before lending it (``check=``), so one the server closed is
replaced, and waits up to ``timeout`` seconds for one while the server is down.

    pip install 'psycopg[binary]' psycopg-pool
    tm-run examples/postgres_migration_async.py 2 --threads 8 dsn=DSN
    python examples/postgres_migration.py check DSN

Same tables, jobs and KEY=VALUE arguments as ``postgres_migration.py``, plus ``pool=N``
connections per worker (default 8: as many as ``--threads``, more would sit idle).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import postgres_migration as sync  # the tables, the transform and get_jobs are the same
from psycopg_pool import AsyncConnectionPool

_pool: AsyncConnectionPool[Any] | None = None


def get_jobs(
    last: tuple[int, int] | None = None,
    dsn: str = "",
    chunk: str = "200",
    rows: str = "100000",
    pool: str = "8",
) -> Iterator[tuple[int, int]]:
    return sync.get_jobs(last, dsn, chunk, rows)


def count_jobs(dsn: str = "", chunk: str = "200", rows: str = "100000", pool: str = "8") -> int:
    return sync.count_jobs(dsn, chunk, rows)


async def setup_worker(dsn: str = "", pool: str = "8", **_: str) -> None:
    global _pool
    _pool = AsyncConnectionPool(
        dsn,
        min_size=1,
        max_size=int(pool),
        open=False,
        timeout=10,
        check=AsyncConnectionPool.check_connection,
    )
    await _pool.open(wait=True, timeout=10)  # a wrong DSN fails here, once per worker


async def handle_job(job: tuple[int, int]) -> None:
    assert _pool is not None
    async with _pool.connection() as conn, conn.transaction():
        cursor = await conn.execute(sync.READ, ([job[0]], [job[1]]))
        new = [sync.transform(row) for row in await cursor.fetchall()]
        if new:
            await conn.execute(sync.UPSERT, [list(column) for column in zip(*new, strict=True)])


async def teardown_worker() -> None:
    if _pool is not None:
        await _pool.close()
