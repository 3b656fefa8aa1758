"""I/O-bound jobs on threads: each job sleeps 10 ms; 2 worker processes x 8 threads.

With 16 jobs in flight and 10 ms per job the ideal is 1,600 jobs/s; the share of it a
runner reaches is what it loses to dispatch, start-up and tail effects (the wall time
includes interpreter start-up, as for every row).
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl

WORKERS = 2
THREADS = 8
SLEEP = 0.01
N_DEFAULT = 3200
N_QUICK = 1600
CHUNK = 64  # jobs per task for the peer: 8 rounds of 8 threads
TIMEOUT = 60.0


def runners(n: int, tm_reason: str | None) -> list[bl.Runner]:
    def build_peer(_tmp: str) -> list[str]:
        return bl.peer_cmd(
            "pool_threads", "sleep_jobs", workers=WORKERS, threads=THREADS, chunk=CHUNK,
            kwargs={"n": n},
        )  # fmt: skip

    def build_tm(tmp: str) -> list[str]:
        return bl.tm_cmd("sleep_jobs", tmp, workers=WORKERS, threads=THREADS, kwargs={"n": n})

    peer_name = f"Pool({WORKERS}) + ThreadPoolExecutor({THREADS}) per process"
    note = f"chunks of {CHUNK} jobs"
    return [
        bl.Runner(peer_name, build_peer, n, env=bl.peer_env(), note=note, key="pool_threads"),
        bl.tm_runner(f"taskmaster tm-run --threads {THREADS}", build_tm, n, tm_reason),
    ]


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--reps", type=int, default=3)
    args: argparse.Namespace = parser.parse_args(argv)
    n = N_QUICK if args.quick else N_DEFAULT
    ideal = WORKERS * THREADS / SLEEP
    title = f"io_threads: {n:,} jobs of time.sleep({SLEEP}), {WORKERS} workers x {THREADS} threads"
    bl.print_header(title, args)
    outcomes = bl.run_alternating(runners(n, bl.tm_unavailable()), args.reps, TIMEOUT)
    print(f"Ideal: {ideal:,.0f} jobs/s ({n / ideal:.1f} s); {args.reps} alternating runs per row.")
    bl.report_ideal(outcomes, ideal)
    bl.report_ideal_target(outcomes, ideal, "IO-bound threads")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
