"""Checkpoint cost: taskmaster on no-op jobs, checkpointing every 1 s vs only at exit.

``--checkpoint-every 1000000`` never fires during a run of a few seconds, so it writes the
final checkpoint only. A third row checkpoints every 0.1 s to make the per-checkpoint cost
big enough to see through the noise. The job count is calibrated so that one run takes
about ``TARGET_S`` seconds, else a 1 s interval would never fire at all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

import benchlib as bl

WORKERS = 2
TARGET_S = 2.5
TARGET_S_QUICK = 1.5
N_MIN, N_MAX = 1_000_000, 40_000_000
CALIBRATE_N = 2_000_000
TIMEOUT = 120.0
INTERVALS = (("at exit only", "1000000"), ("every 1 s", "1"), ("every 0.1 s", "0.1"))


def tm_row(label: str, every: str, n: int) -> bl.Runner:
    def build(tmp: str) -> list[str]:
        kwargs = {"n": n}
        return bl.tm_cmd("noop_jobs", tmp, workers=WORKERS, checkpoint_every=every, kwargs=kwargs)

    row = bl.tm_runner(f"taskmaster, checkpoint {label}", build, n, None)
    row.note = f"--checkpoint-every {every}"
    return row


def calibrate(target_s: float) -> tuple[int, str | None]:
    """A job count for runs of about ``target_s`` seconds, or the reason there is none.

    Jobs/s comes from the difference between a 1-job run (start-up) and a longer one.
    """
    rows = [tm_row("calibration", "1", 1), tm_row("calibration", "1", CALIBRATE_N)]
    one, many = bl.run_alternating(rows, 1, TIMEOUT)
    if one.error is not None or many.error is not None:
        return 0, one.error or many.error
    startup = one.walls[0]
    rate = (CALIBRATE_N - 1) / max(0.05, many.walls[0] - startup)
    n = int(rate * (target_s - startup)) // 1_000_000 * 1_000_000
    return max(N_MIN, min(N_MAX, n)), None


def cost(walls: list[float], base: list[float], pick: Callable[[list[float]], float]) -> str:
    """Extra wall time over the at-exit row, in percent, comparing ``pick`` of each."""
    if not walls or not base:
        return "-"
    return f"{100 * (pick(walls) / pick(base) - 1):+.1f}%"


def report(outcomes: list[bl.Outcome]) -> None:
    base = outcomes[0].walls
    rows = []
    for out in outcomes:
        walls = out.walls
        wall = f"{bl.median(walls):.2f}" if walls else "-"
        spread = f"{min(walls):.2f}-{max(walls):.2f}" if walls else "-"
        costs = [cost(walls, base, bl.median), cost(walls, base, min)]
        rows.append([out.runner.name, wall, spread, bl.fmt_rate(out.rate), *costs, out.note])
    head = ["runner", "wall s (median)", "min-max", "jobs/s", "cost (median)", "cost (best)"]
    bl.print_table([*head, "note"], rows)
    bl.print_unavailable(outcomes)
    every_s = next((o for o in outcomes if o.runner.note.endswith(" 1") and o.results), None)
    goal = "checkpoint every 1 s: cost not measurable (under 2%, or within the spread)"
    if every_s is None or not base:
        bl.report_target(goal, "-", None)
    else:
        best = min(every_s.walls) / min(base) - 1
        spread = (max(base) - min(base)) / min(base)
        what = f"{100 * best:+.1f}% (best runs), at-exit row's own spread {100 * spread:.0f}%"
        if best < 0.02:
            bl.report_target(goal, what, True)
        elif best <= spread:
            bl.report_target(goal, what, None, "within the noise: not measurable here")
        else:
            bl.report_target(goal, what, False)
    bl.print_note(
        "cost = wall time / wall time of the at-exit row - 1, from the medians and from the "
        "fastest runs (the best run is the least disturbed by other load). Target for every "
        "1 s: under 2%. A negative cost, or a difference smaller than the min-max spread, "
        "is noise."
    )


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--reps", type=int, help="runs per row (default 5, quick 3)")
    args: argparse.Namespace = parser.parse_args(argv)
    args.reps = args.reps or (3 if args.quick else 5)
    bl.print_header(f"checkpoint_cost: no-op jobs, {WORKERS} workers, taskmaster only", args)
    reason = bl.tm_unavailable()
    n = 0
    if reason is None:
        n, reason = calibrate(TARGET_S_QUICK if args.quick else TARGET_S)
    if reason is not None:
        print(f"taskmaster: not available ({reason})")
        return 0
    print(f"{n:,} jobs per run (about {TARGET_S_QUICK if args.quick else TARGET_S:g} s each);"
          f" {args.reps} alternating runs per row.")  # fmt: skip
    rows = [tm_row(label, every, n) for label, every in INTERVALS]
    report(bl.run_alternating(rows, args.reps, TIMEOUT))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
