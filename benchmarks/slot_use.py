"""Where a sleeping run's time goes: start-up, busy slots, the job itself, the exit.

One tm-run over ``stamped_sleep_jobs`` (10 ms jobs), as in ``io_threads.py`` (2 workers x 8
threads) or, with ``--async``, ``async_io.py`` (2 x 64). Each job stamps its start and end;
this prints when the first job started and the last ended (from tm-run's launch), the mean
job time measured inside the handler, how busy the slots were between those two, and how
long tm-run took to exit after the last job. Not part of ``run_all.py``: it explains the
``% of ideal`` rows, it is not a target.

    .venv/bin/python benchmarks/slot_use.py [--async] [--runs 3]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import benchlib as bl

WORKERS = 2
TIMEOUT = 60.0


def one_run(threads: int, n: int, is_async: bool) -> str:
    with bl.state_dir() as tmp, tempfile.TemporaryDirectory(prefix="tm-stamps-") as stamps:
        env = {**os.environ, "TM_BENCH_STAMPS": stamps}
        if is_async:
            env["TM_BENCH_ASYNC"] = "1"
        cmd = bl.tm_cmd(
            "stamped_sleep_jobs", tmp, workers=WORKERS, threads=threads, kwargs={"n": n}
        )
        launched = time.monotonic()
        res = bl.run_cmd(cmd, TIMEOUT, env=env)
        if not res.ok:
            return f"failed: {res.why()}"
        ended = launched + res.wall
        spans = [
            tuple(map(float, line.split()))
            for path in Path(stamps).iterdir()
            for line in path.read_text().splitlines()
        ]
    first = min(s for s, _ in spans)
    last = max(e for _, e in spans)
    busy = sum(e - s for s, e in spans)
    use = busy / (WORKERS * threads) / (last - first)
    return (
        f"{len(spans):,} jobs, wall {res.wall:.3f} s: first job at +{first - launched:.3f} s, "
        f"last ended at +{last - launched:.3f} s, exit {ended - last:.3f} s later; "
        f"mean job {1000 * busy / len(spans):.2f} ms; slots busy {use:.1%}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--async", dest="is_async", action="store_true")
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args(argv)
    threads, n = (64, 25_600) if args.is_async else (8, 3_200)
    print(f"slot_use: {n:,} jobs of 10 ms, {WORKERS} workers x {threads}"
          + (" (async def)" if args.is_async else " threads"))  # fmt: skip
    for _ in range(args.runs):
        print(one_run(threads, n, args.is_async))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
