"""Memory: peak memory of the whole process tree for 5 KB jobs at two job counts.

Each job is 5,000 distinct bytes built by ``get_jobs`` as it is pulled; the handler does
nothing; 2 worker processes. A runner whose memory is bounded shows a ratio near 1x
between the two sizes; one that holds its input grows with the job count.
"""

from __future__ import annotations

import argparse
import sys

import benchlib as bl
import psutil

SIZES_DEFAULT = (100_000, 1_000_000)
SIZES_QUICK = (10_000, 100_000)
JOB_BYTES = 5000
WINDOW = 10_000
WORKERS = 2
CHUNK = 1000
TIMEOUT = 150.0
PPE_HEADROOM = 1.5  # run Executor.map only with this many times its whole input free


def peer(runner: str, n: int) -> bl.Runner:
    def build(_tmp: str) -> list[str]:
        kwargs = {"n": n, "size": JOB_BYTES}
        return bl.peer_cmd(runner, "blob_jobs", workers=WORKERS, chunk=CHUNK, kwargs=kwargs)

    return bl.Runner(runner, build, n, env=bl.peer_env(), key=runner)


def tm(n: int, reason: str | None) -> bl.Runner:
    def build(tmp: str) -> list[str]:
        kwargs = {"n": n, "size": JOB_BYTES}
        return bl.tm_cmd("blob_jobs", tmp, workers=WORKERS, size=WINDOW, kwargs=kwargs)

    return bl.tm_runner("tm", build, n, reason)


def ppe_skip_reason(n: int) -> str | None:
    """Executor.map submits every chunk up front: skip it when that would not fit."""
    need = n * JOB_BYTES * PPE_HEADROOM
    free = psutil.virtual_memory().available
    if need > free:
        return f"skipped at {n:,} jobs: needs ~{need / bl.MIB:,.0f} MiB, {free / bl.MIB:,.0f} free"
    return None


def runners(sizes: tuple[int, int], tm_reason: str | None) -> list[bl.Runner]:
    rows = []
    for n in sizes:
        ppe = peer("ppe", n)
        ppe.unavailable = ppe_skip_reason(n)
        rows += [tm(n, tm_reason), peer("pool", n), ppe]
    return rows


LABELS = {
    "tm": f"taskmaster tm-run, window {WINDOW:,}",
    "pool": f"Pool.imap_unordered(chunksize={CHUNK})",
    "ppe": f"ProcessPoolExecutor.map(chunksize={CHUNK})",
}


def cell(out: bl.Outcome | None, attr: str) -> tuple[str, float]:
    """Peak MiB (median over reps) as text and as a number (NaN when there is none)."""
    if out is None or out.error is not None or not out.results:
        return "-", float("nan")
    mib = bl.median([getattr(r, attr) for r in out.results]) / bl.MIB
    return f"{mib:,.0f}", mib


def report(outcomes: list[bl.Outcome], sizes: tuple[int, int]) -> None:
    small, large = sizes
    by = {(o.runner.key, o.runner.jobs): o for o in outcomes}
    rows = []
    for key, label in LABELS.items():
        row = [label]
        for attr in ("peak_rss", "peak_pss"):
            (a_txt, a), (b_txt, b) = cell(by[key, small], attr), cell(by[key, large], attr)
            row += [a_txt, b_txt, bl.fmt_ratio(bl.ratio(b, a))]
        walls = [f"{bl.median(by[key, n].walls):.1f}" if by[key, n].results else "-" for n in sizes]
        rows.append(row + ["/".join(walls)])
    s, lg = f"{small:,}", f"{large:,}"
    head = ["runner", f"RSS {s}", f"RSS {lg}", "ratio", f"PSS {s}", f"PSS {lg}", "ratio", "wall s"]
    print("Peak MiB summed over the process tree (sampled every ~20 ms):")
    bl.print_table(head, rows)
    print_errors(outcomes)
    (_, a), (_, b) = cell(by["tm", small], "peak_pss"), cell(by["tm", large], "peak_pss")
    (_, pa), (_, pb) = cell(by["pool", small], "peak_pss"), cell(by["pool", large], "peak_pss")
    goal = f"memory flat: taskmaster's peak PSS at {lg} jobs within 10% of {s}"
    x, px = bl.ratio(b, a), bl.ratio(pb, pa)
    what = f"{bl.fmt_ratio(x)} ({a:,.0f} -> {b:,.0f} MiB; Pool {bl.fmt_ratio(px)})"
    bl.report_target(goal, what, None if x != x else x <= 1.1)


def print_errors(outcomes: list[bl.Outcome]) -> None:
    lines: list[str] = []
    for out in outcomes:
        if out.error is None:
            continue
        if out.runner.is_tm and out.runner.unavailable is not None:
            line = f"taskmaster: not available ({out.error})"
        else:
            line = f"{LABELS[out.runner.key]} at {out.runner.jobs:,} jobs: {out.error}"
        if line not in lines:
            lines.append(line)
    for line in lines:
        print(line)


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--reps", type=int, default=1)
    args: argparse.Namespace = parser.parse_args(argv)
    sizes = SIZES_QUICK if args.quick else SIZES_DEFAULT
    title = f"memory: {JOB_BYTES:,}-byte jobs, {sizes[0]:,} vs {sizes[1]:,} jobs, {WORKERS} workers"
    bl.print_header(title, args)
    outcomes = bl.run_alternating(
        runners(sizes, bl.tm_unavailable()), args.reps, TIMEOUT, memory=True
    )
    report(outcomes, sizes)
    bl.print_note(
        "RSS counts pages shared between the parent and its forked workers once per process;"
        " PSS splits them, so the PSS sum is the tree's real footprint. Executor.map submits"
        " every chunk before it yields its first result, so it holds the input it has not"
        " yet handed to a worker."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
