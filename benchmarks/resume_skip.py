"""Resume skip: how fast taskmaster skips done jobs when get_jobs has no ``last``.

A generator without ``last`` cannot be told where to start, so a resume pulls and skips
the first ``watermark`` jobs. Three runs of the same no-op module, each a whole process:

1. a fresh run to completion (the baseline);
2. a fresh run killed with SIGKILL (the whole process group) once its checkpoint's
   ``watermark`` passes N/2;
3. ``--resume`` of run 2, to completion (from a fresh copy of its state, each time).

Runs 1 and 3 alternate, ``--reps`` times each, and the medians are shown.

The jobs module stamps the wall-clock time of the first handler call of each run, so
"time to first job" is measured from the start of the process. The extra time the resume
needs before its first new job, over the fresh run's, is the skip (and checkpoint load)
time; the skip rate is the watermark divided by it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import benchlib as bl

N_DEFAULT = 5_000_000
N_QUICK = 3_000_000
WORKERS = 2
CHECKPOINT_EVERY = 0.1  # often enough to stop near N/2
TIMEOUT = 120.0
POLL = 0.02


def tm_env(mark: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["BENCH_MARK_FILE"] = str(mark)
    return env


def first_job_after(res: bl.RunResult, mark: Path) -> float | None:
    """Seconds from the start of the process to its first handler call, if it made one."""
    try:
        return float(mark.read_text()) - res.started_at
    except (OSError, ValueError):
        return None


def run_tm(folder: Path, n: int, extra: list[str], **kw: Any) -> tuple[bl.RunResult, float | None]:
    """One tm-run with its state in ``folder``; the result and its time to first job."""
    folder.mkdir(exist_ok=True)
    mark = folder / "first-job"
    mark.unlink(missing_ok=True)
    cmd = bl.tm_cmd(
        "nolast_jobs", str(folder), workers=WORKERS, checkpoint_every=CHECKPOINT_EVERY,
        kwargs={"n": n}, extra=extra,
    )  # fmt: skip
    env = dict(os.environ, BENCH_MARK_FILE=str(mark))
    res = bl.run_cmd(cmd, TIMEOUT, env=env, **kw)
    return res, first_job_after(res, mark)


def kill_at_half(state: Path, n: int) -> Any:
    """A while_running hook: SIGKILL the group once the checkpoint's watermark >= n/2."""

    def hook(proc: subprocess.Popen[Any]) -> None:
        deadline = time.monotonic() + TIMEOUT
        while proc.poll() is None and time.monotonic() < deadline:
            watermark = bl.read_state(state).get("watermark")
            if isinstance(watermark, int) and watermark >= n // 2:
                bl.kill_group(proc)
                return
            time.sleep(POLL)

    return hook


@dataclass
class Runs:
    """The walls and times to first job of the fresh and resumed runs."""

    fresh: list[tuple[float, float]] = field(default_factory=list)
    resumed: list[tuple[float, float]] = field(default_factory=list)


def make_killed_state(root: Path, n: int) -> tuple[Path, int, float] | str:
    """A state dir killed at about N/2: (dir, watermark, wall), or why there is none."""
    folder = root / "killed"
    state = folder / "state.json"
    killed, _ = run_tm(folder, n, [], while_running=kill_at_half(state, n))
    if killed.ok:
        return f"the run finished in {killed.wall:.2f} s before it could be killed at N/2"
    watermark = bl.read_state(state).get("watermark")
    if not isinstance(watermark, int):
        return f"no watermark in the state file after the kill ({killed.why()})"
    (folder / "first-job").unlink(missing_ok=True)
    return folder, watermark, killed.wall


def alternate(root: Path, killed: Path, n: int, reps: int) -> Runs | str:
    """Fresh run, resume of a copy of the killed state, fresh, resume, ..."""
    runs = Runs()
    for i in range(reps):
        res, first = run_tm(root / f"fresh{i}", n, [])
        if not res.ok or first is None:
            return f"fresh run: {res.why() if not res.ok else 'no handler call seen'}"
        runs.fresh.append((res.wall, first))
        copy = root / f"resume{i}"
        shutil.copytree(killed, copy, ignore=shutil.ignore_patterns("*.lock"))
        res, first = run_tm(copy, n, ["--resume"])
        if not res.ok or first is None:
            return f"--resume: {res.why() if not res.ok else 'no handler call seen'}"
        if bl.read_state(copy / "state.json").get("finished") is False:
            return "--resume exited 0 but its state file says finished=false"
        runs.resumed.append((res.wall, first))
    return runs


def measure(n: int, reps: int) -> list[list[str]] | str:
    """The table rows, or why there are none."""
    with bl.state_dir() as tmp:
        root = Path(tmp)
        killed = make_killed_state(root, n)
        if isinstance(killed, str):
            return killed
        folder, watermark, killed_wall = killed
        runs = alternate(root, folder, n, reps)
        if isinstance(runs, str):
            return runs
    return rows(n, watermark, killed_wall, runs)


def rows(n: int, watermark: int, killed_wall: float, runs: Runs) -> list[list[str]]:
    fresh_wall = bl.median([w for w, _ in runs.fresh])
    fresh_first = bl.median([f for _, f in runs.fresh])
    resume_wall = bl.median([w for w, _ in runs.resumed])
    resume_first = bl.median([f for _, f in runs.resumed])
    extra = resume_first - fresh_first
    firsts = [f for _, f in runs.fresh]
    noise = max(firsts) - min(firsts)  # how much the fresh runs' start-up alone varied
    rate = bl.fmt_rate(watermark / extra) if extra > 0 else "too fast to see"
    if extra <= noise:
        rate += f" (extra s within start-up noise of {noise:.3f} s)"
    left = n - watermark
    return [
        ["fresh run, to completion", f"{n:,}", f"{fresh_wall:.2f}", f"{fresh_first:.3f}", "", ""],
        ["fresh run, SIGKILL at watermark >= N/2", f"{watermark:,} done", f"{killed_wall:.2f}"]
        + ["", "", ""],
        ["--resume of that state, to completion", f"{left:,} left", f"{resume_wall:.2f}"]
        + [f"{resume_first:.3f}", f"{extra:.3f}", rate],
        ["(fresh wall x share left, for scale)", "", f"{fresh_wall * left / n:.2f}", "", "", ""],
    ]


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--jobs", type=int, help=f"N (default {N_DEFAULT:,}, quick {N_QUICK:,})")
    parser.add_argument("--reps", type=int, default=3, help="fresh and resumed runs (median)")
    args: argparse.Namespace = parser.parse_args(argv)
    n = args.jobs or (N_QUICK if args.quick else N_DEFAULT)
    bl.print_header(f"resume_skip: {n:,} no-op jobs from a get_jobs without 'last'", args)
    reason = bl.tm_unavailable()
    if reason is not None:
        print(f"taskmaster: not available ({reason})")
        return 0
    result = measure(n, args.reps)
    if isinstance(result, str):
        print(f"taskmaster: {result}")
        return 0
    head = ["run", "jobs", "wall s", "first job s", "extra s", "skipped jobs/s"]
    bl.print_table(head, result)
    bl.print_note(
        f"--checkpoint-every {CHECKPOINT_EVERY:g}, {WORKERS} workers. 'first job s' is from "
        "the process start to its first handler call; 'extra s' is how much later that comes "
        "on the resume than on the fresh run (loading the checkpoint and skipping the "
        "watermark's jobs); skipped jobs/s = watermark / extra s. Fresh and resumed runs "
        "alternate, each resume from its own copy of the killed run's state; medians shown."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
