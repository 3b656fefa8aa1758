"""The floor under the async row: a bare asyncio program, no taskmaster, no workers.

One process runs 12,800 jobs awaiting ``asyncio.sleep(0.01)``, 64 at a time (one worker's
share of ``async_io.py``), and prints the mean sleep measured inside the job and the share
of the ideal wall time it reached. Not part of ``run_all.py``.

    .venv/bin/python benchmarks/async_floor.py
"""

from __future__ import annotations

import asyncio
import time

N = 12_800
CONCURRENCY = 64
SLEEP = 0.01


async def main() -> None:
    spans: list[float] = []
    gate = asyncio.Semaphore(CONCURRENCY)

    async def job() -> None:
        async with gate:
            start = time.monotonic()
            await asyncio.sleep(SLEEP)
            spans.append(time.monotonic() - start)

    started = time.monotonic()
    await asyncio.gather(*(job() for _ in range(N)))
    wall = time.monotonic() - started
    ideal = N / CONCURRENCY * SLEEP
    print(
        f"{N:,} sleeps of {SLEEP * 1000:g} ms, {CONCURRENCY} at a time: mean sleep "
        f"{1000 * sum(spans) / N:.2f} ms, wall {wall:.2f} s, {ideal / wall:.0%} of ideal"
    )


if __name__ == "__main__":
    asyncio.run(main())
