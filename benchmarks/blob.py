"""5 KB jobs: the workload taskmaster exists for, against the process pool a user would write.

10^6 distinct jobs of 5,000 bytes each, built in ``get_jobs``; a no-op handler; 2 worker
processes. Whole process, start to exit. taskmaster runs with every guarantee on: its
window, a checkpoint every second and the batch digests a resume skips by. The peer is
``Pool(2).imap_unordered`` at the chunk size of issue 11 (100) and at the others tried
here, so the target can be read against the pool's best chunk size too.
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl

N_DEFAULT = 1_000_000
N_QUICK = 100_000
JOB_BYTES = 5000
WORKERS = 2
WINDOW = 10_000
CHUNKS = (100, 1000)  # 100 first: the target's peer; 20 was slower than both here
TARGET = 1.3
TIMEOUT = 120.0


def runners(n: int, tm_reason: str | None) -> list[bl.Runner]:
    kwargs = {"n": n, "size": JOB_BYTES}
    rows = []
    for chunk in CHUNKS:

        def build(_tmp: str, chunk: int = chunk) -> list[str]:
            return bl.peer_cmd("pool", "blob_jobs", workers=WORKERS, chunk=chunk, kwargs=kwargs)

        name = f"Pool({WORKERS}).imap_unordered(chunksize={chunk})"
        rows.append(bl.Runner(name, build, n, env=bl.peer_env(), key=f"pool{chunk}"))

    def build_tm(tmp: str) -> list[str]:
        return bl.tm_cmd("blob_jobs", tmp, workers=WORKERS, size=WINDOW, kwargs=kwargs)

    name = f"taskmaster tm-run, window {WINDOW:,}, checkpoint every 1 s"
    rows.append(bl.tm_runner(name, build_tm, n, tm_reason))
    return rows


def report(outcomes: list[bl.Outcome]) -> None:
    rows = []
    for out in outcomes:
        walls = out.walls
        wall = f"{bl.median(walls):.2f}" if walls else "-"
        spread = f"{min(walls):.2f}-{max(walls):.2f}" if walls else "-"
        mb = out.runner.jobs * JOB_BYTES / 1e6 / bl.median(walls) if walls else float("nan")
        rate = bl.fmt_rate(out.rate)
        rows.append([out.runner.name, wall, spread, rate, f"{mb:,.0f}", out.note])
    bl.print_table(["runner", "wall s (median)", "min-max", "jobs/s", "MB/s", "note"], rows)
    bl.print_unavailable(outcomes)
    tm = bl.find(outcomes, "tm")
    pools = [o for o in (bl.find(outcomes, f"pool{c}") for c in CHUNKS) if o is not None]
    first = bl.find(outcomes, f"pool{CHUNKS[0]}")
    for label, peer in (
        (f"chunksize={CHUNKS[0]}", first),
        ("its best chunksize", max(pools, key=lambda o: o.rate) if pools else None),
    ):
        goal = f"5 KB jobs, {WORKERS} workers >= {TARGET}x Pool {label}"
        if tm is None or peer is None:
            bl.report_target(goal, "-", None)
            continue
        x = bl.ratio(tm.rate, peer.rate)
        what = f"{bl.fmt_ratio(x)} ({bl.median(tm.walls):.2f} s vs {peer.runner.name} "
        bl.report_target(goal, what + f"{bl.median(peer.walls):.2f} s)", x >= TARGET)


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--jobs", type=int, help=f"N (default {N_DEFAULT:,}, quick {N_QUICK:,})")
    parser.add_argument("--reps", type=int, default=3)
    args: argparse.Namespace = parser.parse_args(argv)
    n = args.jobs or (N_QUICK if args.quick else N_DEFAULT)
    bl.print_header(f"blob: {n:,} distinct jobs of {JOB_BYTES:,} bytes, {WORKERS} workers", args)
    outcomes = bl.run_alternating(runners(n, bl.tm_unavailable()), args.reps, TIMEOUT)
    print(f"{args.reps} alternating runs per row; wall time of the whole process tree.")
    report(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
