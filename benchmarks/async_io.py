"""Async I/O-bound jobs: ``async def handle_job`` awaits a 10 ms sleep; 2 workers x 64.

With 128 jobs in flight and 10 ms per job the ideal is 12,800 jobs/s; the share of it a
runner reaches is what it loses to dispatch, the event loop, start-up and tail effects.
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl

WORKERS = 2
CONCURRENCY = 64
SLEEP = 0.01
N_DEFAULT = 25_600
N_QUICK = 12_800
CHUNK = 1280  # jobs per task for the peer: 20 rounds of 64 at a time
TIMEOUT = 60.0


def runners(n: int, tm_reason: str | None) -> list[bl.Runner]:
    def build_peer(_tmp: str) -> list[str]:
        return bl.peer_cmd(
            "pool_async", "async_jobs", workers=WORKERS, threads=CONCURRENCY, chunk=CHUNK,
            kwargs={"n": n},
        )  # fmt: skip

    def build_tm(tmp: str) -> list[str]:
        kwargs = {"n": n}
        return bl.tm_cmd("async_jobs", tmp, workers=WORKERS, threads=CONCURRENCY, kwargs=kwargs)

    peer_name = f"Pool({WORKERS}) + asyncio loop per process, {CONCURRENCY} at a time"
    note = f"chunks of {CHUNK} jobs"
    return [
        bl.Runner(peer_name, build_peer, n, env=bl.peer_env(), note=note, key="pool_async"),
        bl.tm_runner(f"taskmaster tm-run --threads {CONCURRENCY}", build_tm, n, tm_reason),
    ]


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args: argparse.Namespace = parser.parse_args(argv)
    n = N_QUICK if args.quick else N_DEFAULT
    ideal = WORKERS * CONCURRENCY / SLEEP
    title = f"async_io: {n:,} jobs awaiting asyncio.sleep({SLEEP}), {WORKERS} x {CONCURRENCY}"
    bl.print_header(title, args)
    outcomes = bl.run_alternating(runners(n, bl.tm_unavailable()), args.reps, TIMEOUT)
    print(f"Ideal: {ideal:,.0f} jobs/s ({n / ideal:.1f} s); {args.reps} alternating runs per row.")
    bl.report_ideal(outcomes, ideal)
    bl.report_ideal_target(outcomes, ideal, "async handlers")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
