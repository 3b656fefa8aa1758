"""No-op jobs: what each runner costs per job when the job itself costs nothing.

Integer jobs 0..N-1, a handler that returns at once, 2 worker processes. Every row is a
whole process, timed from start to exit (interpreter start-up and imports included), and
the rows alternate A B C A B C ... so a noisy moment hits every row alike.
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl

N_DEFAULT = 20_000_000  # issue 11's size: 10^9 jobs in under 160 s needs 6.25 M/s
N_QUICK = 2_000_000
PPE_SHARE = 10  # Executor.map holds all its input: N/10 jobs; compare jobs/s, not time
SLOW_PEER_SHARE = 100  # joblib and mpire are 10-40x slower: N/100 jobs
TARGET = 1.0  # taskmaster's jobs/s over the plain loop's
STRETCH = 1.5
TIMEOUT = 120.0
BUDGET = 30.0  # a row stops repeating once its runs took this many seconds
WORKERS = 2
CHUNK = 1000


def peer(name: str, runner: str, jobs: int, note: str = "", chunk: int = CHUNK) -> bl.Runner:
    def build(_tmp: str) -> list[str]:
        return bl.peer_cmd(runner, "noop_jobs", workers=WORKERS, chunk=chunk, kwargs={"n": jobs})

    return bl.Runner(name, build, jobs, env=bl.peer_env(), note=note, key=runner)


def runners(n: int, tm_reason: str | None) -> list[bl.Runner]:
    slow = n // SLOW_PEER_SHARE
    slow_note = f"N/{SLOW_PEER_SHARE} jobs (slow peer)"
    rows = [
        peer("plain loop, 1 process (ceiling)", "plain", n, "no workers at all"),
        peer("multiprocessing.Queue, batches of 1000", "mpqueue", n, "transport floor"),
        peer("Pool.imap_unordered(chunksize=1000)", "pool", n),
        peer(
            "ProcessPoolExecutor.map(chunksize=1000)",
            "ppe",
            n // PPE_SHARE,
            f"N/{PPE_SHARE} jobs: it reads all input first",
        ),
    ]
    if bl.has_module("joblib"):
        rows.append(peer("joblib generator_unordered, batch 1000", "joblib", slow, slow_note))
    if bl.has_module("mpire"):
        rows.append(peer("mpire imap_unordered(chunk_size=1000)", "mpire", slow, slow_note))

    def build_tm(tmp: str) -> list[str]:
        return bl.tm_cmd("noop_jobs", tmp, workers=WORKERS, checkpoint_every=1, kwargs={"n": n})

    rows.append(bl.tm_runner("taskmaster tm-run, checkpoint every 1 s", build_tm, n, tm_reason))
    return rows


def report(outcomes: list[bl.Outcome]) -> None:
    rows = []
    for out in outcomes:
        walls = out.walls
        spread = f"{min(walls):.2f}-{max(walls):.2f}" if walls else "-"
        wall = f"{bl.median(walls):.2f}" if walls else "-"
        jobs = f"{out.runner.jobs:,}"
        rows.append([out.runner.name, jobs, wall, spread, bl.fmt_rate(out.rate), out.note])
    head = ["runner", "jobs", "wall s (median)", "min-max", "jobs/s", "note"]
    bl.print_table(head, rows)
    bl.print_unavailable(outcomes)
    bl.print_tm_ratios(outcomes, {"pool": "Pool.imap_unordered", "mpire": "mpire"})
    tm, plain = bl.find(outcomes, "tm"), bl.find(outcomes, "plain")
    goal = f"no-op jobs, {WORKERS} workers >= {TARGET}x a plain loop on one core"
    if tm is None or plain is None:
        bl.report_target(goal + f" (stretch {STRETCH}x)", "-", None)
        return
    x = bl.ratio(tm.rate, plain.rate)
    what = f"{bl.fmt_ratio(x)} ({bl.fmt_rate(tm.rate)} vs {bl.fmt_rate(plain.rate)} jobs/s)"
    bl.report_target(goal, what, x >= TARGET)
    bl.report_target(f"stretch: the same >= {STRETCH}x", bl.fmt_ratio(x), x >= STRETCH)


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--jobs", type=int, help=f"N (default {N_DEFAULT:,}, quick {N_QUICK:,})")
    parser.add_argument("--reps", type=int, default=3)
    args: argparse.Namespace = parser.parse_args(argv)
    n = args.jobs or (N_QUICK if args.quick else N_DEFAULT)
    bl.print_header(f"noop: {n:,} no-op jobs, {WORKERS} worker processes", args)
    rows = runners(n, bl.tm_unavailable())
    outcomes = bl.run_alternating(rows, args.reps, TIMEOUT, budget=BUDGET)
    print(f"{args.reps} alternating runs per row; wall time of the whole process tree.")
    report(outcomes)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
