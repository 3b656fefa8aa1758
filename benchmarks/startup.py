"""Start-up: a run with no jobs, and how soon the first job starts after get_jobs yields it.

Rows, each a whole process timed from start to exit: the interpreter alone
(``python -c pass``), the smallest ``multiprocessing.Pool(2)`` script that maps over no
jobs, and ``tm-run`` with 2 workers over a ``get_jobs`` that yields nothing (state file
and final checkpoint included); then the Pool script and that tm-run again under
``python -S``, without the editable install's path finder. Then ``tm-run`` over one job:
the job module stamps the system's monotonic clock when it yields job 0 and when the
handler starts it, in a worker.
"""

from __future__ import annotations

import argparse
import os
import sys
import sysconfig
from pathlib import Path

import benchlib as bl

WORKERS = 2
REPS = 15
TIMEOUT = 30.0
START_TARGET = 1.5  # tm-run with no jobs, at most this many times the Pool script
FIRST_JOB_TARGET = 0.050  # seconds from the yield of job 0 to its handler's start

POOL_SCRIPT = (
    "import multiprocessing as mp\n"
    "def f(x):\n"
    "    return x\n"
    "if __name__ == '__main__':\n"
    f"    with mp.get_context('fork').Pool({WORKERS}) as pool:\n"
    "        n = sum(1 for _ in pool.imap_unordered(f, [], chunksize=100))\n"
    "    print('{\"jobs\": %d}' % n)\n"
)


# The same tm-run under ``python -S``: no site, so no .pth files, and so not the path finder
# that an editable install (``make install``) adds to every start of this venv's Python. A
# user's ``pip install`` has no such finder; these rows bound what the two rows above would
# be for them (without site's own few ms, in both).
TM_NO_SITE = (
    "import sys; sys.path[:0] = {paths!r}; sys.argv[0] = 'tm-run'\n"
    "from taskmaster.cli.run import run_command; run_command()"
)


def runners(tm_reason: str | None) -> list[bl.Runner]:
    def python(_tmp: str) -> list[str]:
        return [bl.PYTHON, "-c", "print('{\"jobs\": 0}')"]

    def pool(_tmp: str) -> list[str]:
        return [bl.PYTHON, "-c", POOL_SCRIPT]

    def tm(tmp: str) -> list[str]:
        return bl.tm_cmd("first_jobs", tmp, workers=WORKERS, kwargs={"n": 0})

    def pool_no_site(_tmp: str) -> list[str]:
        return [bl.PYTHON, "-S", "-c", POOL_SCRIPT]

    def tm_no_site(tmp: str) -> list[str]:
        paths = [str(bl.BENCH_DIR.parent), sysconfig.get_paths()["purelib"]]
        return [bl.PYTHON, "-S", "-c", TM_NO_SITE.format(paths=paths), *tm(tmp)[1:]]

    return [
        bl.Runner("python -c print(...)", python, 0, key="python", note="the interpreter alone"),
        bl.Runner(f"Pool({WORKERS}) script, no jobs", pool, 0, key="pool"),
        bl.tm_runner(f"taskmaster tm-run {WORKERS} workers, no jobs", tm, 0, tm_reason),
        bl.Runner("  the Pool script, python -S", pool_no_site, 0, key="pool_s", note="no site"),
        bl.Runner(
            "  the tm-run, python -S",
            tm_no_site,
            0,
            is_tm=True,
            unavailable=tm_reason,
            key="tm_s",
            note="no site",
        ),
    ]


def first_job_latencies(reps: int) -> tuple[list[float], str | None]:
    """Seconds from the yield of job 0 to its handler's start, one per run."""
    out: list[float] = []
    for _ in range(reps):
        with bl.state_dir() as tmp:
            stamp = str(Path(tmp) / "stamp")
            env = {**os.environ, "TM_BENCH_STAMP": stamp}
            cmd = bl.tm_cmd("first_jobs", tmp, workers=WORKERS, kwargs={"n": 1})
            res = bl.run_cmd(cmd, TIMEOUT, env=env)
            if not res.ok:
                return out, res.why()
            try:
                yielded = float(Path(stamp + ".yield").read_text())
                ran = float(Path(stamp + ".run").read_text())
            except (OSError, ValueError) as exc:
                return out, f"no stamps ({exc})"
            out.append(ran - yielded)
    return out, None


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--reps", type=int, default=REPS)
    args: argparse.Namespace = parser.parse_args(argv)
    bl.print_header(
        f"startup: runs with no jobs, and the first job's latency ({WORKERS} workers)", args
    )
    reason = bl.tm_unavailable()
    outcomes = bl.run_alternating(runners(reason), args.reps, TIMEOUT)
    rows = []
    for out in outcomes:
        walls = out.walls
        wall = f"{bl.median(walls) * 1000:.0f}" if walls else "-"
        spread = f"{min(walls) * 1000:.0f}-{max(walls) * 1000:.0f}" if walls else "-"
        rows.append([out.runner.name, wall, spread, out.note])
    print(f"{args.reps} alternating runs per row; wall time of the whole process tree.")
    bl.print_table(["runner", "wall ms (median)", "min-max", "note"], rows)
    bl.print_unavailable(outcomes)
    tm, pool = bl.find(outcomes, "tm"), bl.find(outcomes, "pool")
    goal = f"start-up (no jobs) <= {START_TARGET}x a Pool({WORKERS}) script with no jobs"
    if tm is None or pool is None:
        bl.report_target(goal, "-", None)
    else:
        tm_s, pool_s = bl.median(tm.walls), bl.median(pool.walls)
        x = tm_s / pool_s
        what = f"{x:.2f}x ({tm_s * 1000:.0f} ms vs {pool_s * 1000:.0f} ms)"
        bl.report_target(goal, what, x <= START_TARGET)
    tm_s_row, pool_s_row = bl.find(outcomes, "tm_s"), bl.find(outcomes, "pool_s")
    if tm_s_row is not None and pool_s_row is not None and tm_s_row.walls and pool_s_row.walls:
        tm_s, pool_s = bl.median(tm_s_row.walls), bl.median(pool_s_row.walls)
        print(
            f"the same under python -S (no site, so no editable-install path finder): "
            f"{tm_s / pool_s:.2f}x ({tm_s * 1000:.0f} ms vs {pool_s * 1000:.0f} ms)"
        )
    goal = f"first job starts <= {FIRST_JOB_TARGET * 1000:.0f} ms after its yield"
    if reason is not None:
        bl.report_target(goal, f"taskmaster not available ({reason})", None)
        return 0
    lat, error = first_job_latencies(args.reps)
    if error is not None:
        print(f"first job latency: {error}")
    if not lat:
        bl.report_target(goal, "-", None)
        return 0
    med = bl.median(lat)
    what = f"median {med * 1000:.1f} ms, max {max(lat) * 1000:.1f} ms over {len(lat)} runs"
    bl.report_target(goal, what, med <= FIRST_JOB_TARGET)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
