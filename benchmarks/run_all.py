"""Run every benchmark script in turn, each in its own process, and print their tables.

    .venv/bin/python benchmarks/run_all.py [--quick] [--only NAME[,NAME]]

Each script is bounded by a timeout and its process group is killed when it runs over.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import tempfile
import time

import benchlib as bl

SCRIPTS = (
    "startup",
    "blob",
    "noop",
    "memory",
    "io_threads",
    "async_io",
    "checkpoint_cost",
    "resume_skip",
    "resolved_ranges",
    "ray_bench",  # prints why it is skipped without ray or root
)
TIMEOUT = 240.0  # per script; a script's own runs are bounded more tightly
TIMEOUTS = {"ray_bench": 480.0}  # starts a cluster, and each row joins it and starts actors
GRACE = 10.0  # seconds a stopped script gets to kill its runs and remove its temp dirs


def run_script(name: str, quick: bool, targets: str) -> tuple[str, float]:
    """Run one script with its output going straight to ours; (status, seconds)."""
    cmd = [bl.PYTHON, str(bl.BENCH_DIR / f"{name}.py"), *(["--quick"] if quick else [])]
    env = {**os.environ, bl.TARGETS_ENV: targets}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, start_new_session=True, env=env)
    try:
        rc = proc.wait(timeout=TIMEOUTS.get(name, TIMEOUT))
        status = "ok" if rc == 0 else f"exit {rc}"
    except subprocess.TimeoutExpired:
        status = f"stopped after {TIMEOUTS.get(name, TIMEOUT):.0f} s"
        proc.terminate()  # the script cleans up on SIGTERM; the kill below is the backstop
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=GRACE)
    finally:
        bl.kill_tree(proc)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=10)
    return status, time.perf_counter() - t0


def parse_only(value: str | None) -> list[str]:
    if not value:
        return list(SCRIPTS)
    names = [v.strip().removesuffix(".py") for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        choices = ", ".join(SCRIPTS)
        raise SystemExit(f"unknown benchmark {', '.join(unknown)}; choose from {choices}")
    return names


def main(argv: list[str]) -> int:
    parser = bl.base_parser(__doc__)
    parser.add_argument("--only", metavar="NAME[,NAME]", help=f"among: {', '.join(SCRIPTS)}")
    args = parser.parse_args(argv)
    names = parse_only(args.only)
    bl.print_header("taskmaster benchmarks: " + ", ".join(names), args)
    print(f"taskmaster: {bl.tm_unavailable() or 'tm-run found'}")
    summary = []
    t0 = time.perf_counter()
    with tempfile.NamedTemporaryFile("w+", prefix="tm-bench-targets-") as targets:
        for name in names:
            sys.stdout.flush()
            status, secs = run_script(name, args.quick, targets.name)
            summary.append([name, status, f"{secs:.0f}"])
        print("\n== summary ==")
        bl.print_table(["benchmark", "status", "seconds"], summary)
        print(f"total: {time.perf_counter() - t0:.0f} s")
        targets.seek(0)
        lines = targets.read().splitlines()
    if lines:
        print("\n== targets (issue 11), each with what was measured beside it ==")
        for line in lines:
            print(line.removeprefix("target: "))
    return 0 if all(status == "ok" for _, status, _ in summary) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
