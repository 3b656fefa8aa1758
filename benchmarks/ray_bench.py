"""tm-run --ray on a 2-actor local Ray cluster, against tm-run local and plain Ray.

Three workloads: no-op int jobs, 5 KB jobs, and 10 ms sleep jobs (2 actors x 8 threads).
Rows per workload: tm-run with 2 local worker processes; tm-run --ray with 2 actors; and the
plain Ray program a user would write (``ray.util.ActorPool.map_unordered`` over chunks of
the same generator, one actor method call per chunk). Each row is a whole process: its wall
time includes joining the cluster and starting its actors; "steady jobs/s" leaves those out
(tm-run: from its first status line with jobs done to its end; ActorPool: from its actors
being ready to its end). The cluster's own start-up is timed apart, once.

The cluster runs inside a private network namespace holding only loopback (Ray binds the
host's interface address otherwise): this script re-runs itself under ``unshare --net``,
which needs root. Without ray or root it prints why and exits 0.

    .venv/bin/python benchmarks/ray_bench.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import benchlib as bl

PORT = 6390
ADDRESS = f"127.0.0.1:{PORT}"
INSIDE = "TM_BENCH_NETNS"  # set once this script runs inside its namespace
TIMEOUT = 240.0
MIB = 1024 * 1024

# name, module, jobs (full, quick), threads, ActorPool chunk, kwargs
WORKLOADS = [
    ("no-op", "noop_jobs", (10_000_000, 2_000_000), 1, 10_000, {}),
    ("5 KB", "blob_jobs", (200_000, 50_000), 1, 1_000, {"size": 5000}),
    ("10 ms sleep", "sleep_jobs", (12_000, 4_000), 8, 800, {}),
]


def skip_reason() -> str | None:
    if importlib.util.find_spec("ray") is None:
        return "ray is not installed (pip install 'taskmaster-runner[ray]')"
    if os.environ.get(INSIDE):
        return None
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return "a private network namespace (unshare --net) needs root and util-linux"
    return None


def reexec_in_netns(argv: list[str]) -> int:
    inner = " ".join([sys.executable, __file__, *argv])
    env = {**os.environ, INSIDE: "1", "RAY_AUTH_MODE": "disabled"}
    env.pop("RAY_ADDRESS", None)
    cmd = ["unshare", "-n", "sh", "-c", f"ip link set lo up && exec {inner}"]
    return subprocess.call(cmd, env=env)


def start_cluster(temp: str) -> tuple[subprocess.Popen[bytes], float]:
    ray = str(Path(sys.executable).parent / "ray")
    log = Path(temp, "start.log")
    t0 = time.perf_counter()
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [ray, "start", "--head", "--port", str(PORT), "--num-cpus", "2"]
            + ["--include-dashboard", "false", "--disable-usage-stats", "--block"]
            + ["--temp-dir", temp],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    deadline = time.monotonic() + 120
    while b"Ray runtime started" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"the Ray head did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.05)
    return proc, time.perf_counter() - t0


def steady_rate(stderr: str) -> tuple[float, float]:
    """(seconds to the first jobs done, jobs/s from then to the end) from JSON log lines."""
    first: tuple[float, int] | None = None
    last: tuple[float, int] | None = None
    for line in stderr.splitlines():
        try:
            doc = json.loads(line)
        except ValueError:
            continue
        if not isinstance(doc, dict) or doc.get("event") not in ("status", "summary"):
            continue
        point = (float(doc["elapsed"]), int(doc["done"]))
        if first is None and point[1] > 0 and doc["event"] == "status":
            first = point
        last = point
    if first is None or last is None or last[0] <= first[0]:
        return 0.0, 0.0
    return first[0], (last[1] - first[1]) / (last[0] - first[0])


def tm_row(
    label: str, module: str, n: int, threads: int, kw: dict[str, Any], ray: bool
) -> list[str]:
    with bl.state_dir() as tmp:
        extra = ["--log-format", "json", "--log-every", "0.5", "--size", "100000"]
        if ray:
            extra += ["--ray", ADDRESS]
        cmd = bl.tm_cmd(module, tmp, workers=2, threads=threads, kwargs={"n": n, **kw}, extra=extra)
        res = bl.run_cmd(cmd, TIMEOUT, memory=True)
    if not res.ok:
        return [label, f"{n:,}", "-", "-", "-", "-", res.why()]
    to_first, rate = steady_rate(res.stderr)
    return [
        label,
        f"{n:,}",
        f"{res.wall:.1f}",
        f"{to_first:.1f}",
        bl.fmt_rate(rate),
        f"{res.peak_rss / MIB:.0f}",
        "",
    ]


def pool_row(module: str, n: int, threads: int, chunk: int, kw: dict[str, Any]) -> list[str]:
    args = [module, str(n), str(threads), str(chunk), json.dumps(kw)]
    res = bl.run_cmd([sys.executable, __file__, "--pool", *args], TIMEOUT, memory=True)
    label = f"ray ActorPool.map_unordered, chunks of {chunk:,}"
    doc = res.json_tail()
    if not res.ok or not doc:
        return [label, f"{n:,}", "-", "-", "-", "-", res.why()]
    rate = doc["done"] / doc["steady"] if doc["steady"] else 0.0
    rss = f"{res.peak_rss / MIB:.0f}"
    return [label, f"{n:,}", f"{res.wall:.1f}", f"{doc['ready']:.1f}", bl.fmt_rate(rate), rss, ""]


# -- the plain Ray program (run as its own process with --pool) ----------------------------


def _chunks(jobs: Iterator[Any], size: int) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for job in jobs:
        chunk.append(job)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def pool_main(module: str, n: int, threads: int, chunk: int, kw: dict[str, Any]) -> None:
    import ray
    from ray.util import ActorPool

    sys.path.insert(0, str(bl.JOBS_DIR))
    mod = importlib.import_module(module)
    t0 = time.perf_counter()
    ray.init(address=ADDRESS, runtime_env={"working_dir": str(bl.JOBS_DIR)}, logging_level="ERROR")

    @ray.remote
    class Runner:
        def __init__(self, name: str, threads: int) -> None:
            self.handle = importlib.import_module(name).handle_job
            self.pool = ThreadPoolExecutor(threads) if threads > 1 else None

        def run(self, jobs: list[Any]) -> int:
            if self.pool is None:
                for job in jobs:
                    self.handle(job)
            else:
                list(self.pool.map(self.handle, jobs))
            return len(jobs)

    actors = [Runner.remote(module, threads) for _ in range(2)]
    ray.get([a.__ray_ready__.remote() for a in actors])
    ready = time.perf_counter() - t0
    t1 = time.perf_counter()
    pool = ActorPool(actors)
    jobs = mod.get_jobs(n=str(n), **{k: str(v) for k, v in kw.items()})
    done = sum(pool.map_unordered(lambda a, c: a.run.remote(c), _chunks(jobs, chunk)))
    steady = time.perf_counter() - t1
    ray.shutdown()
    print(json.dumps({"ready": ready, "steady": steady, "done": done}))


# -- main -----------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    if argv[:1] == ["--pool"]:
        module, n, threads, chunk, kw = argv[1:6]
        pool_main(module, int(n), int(threads), int(chunk), json.loads(kw))
        return 0
    parser = bl.base_parser(__doc__)
    parser.add_argument("--only", metavar="NAME", help="one workload: no-op, 5 KB or sleep")
    args: argparse.Namespace = parser.parse_args(argv)
    reason = skip_reason()
    if reason:
        print(f"ray_bench: skipped: {reason}")
        return 0
    if not os.environ.get(INSIDE):
        return reexec_in_netns(argv)
    bl.exit_on_sigterm()
    bl.print_header("ray: tm-run --ray on a 2-actor local cluster", args)
    temp = tempfile.mkdtemp(prefix="tmray", dir="/tmp")
    proc = None
    try:
        proc, startup = start_cluster(temp)
        print(f"cluster start-up (ray start --head, 2 CPUs): {startup:.1f} s, not in any row\n")
        for name, module, sizes, threads, chunk, kw in WORKLOADS:
            if args.only and args.only not in name:
                continue
            n = sizes[1] if args.quick else sizes[0]
            each = f"{threads} threads each" if threads > 1 else "1 thread each"
            print(f"== {name} jobs, 2 workers/actors, {each} ==")
            rows = [
                tm_row("tm-run, 2 local workers", module, n, threads, kw, ray=False),
                tm_row("tm-run --ray, 2 actors", module, n, threads, kw, ray=True),
                pool_row(module, n, threads, chunk, kw),
            ]
            if module == "noop_jobs":  # the parent's memory, flat in the job count?
                rows.append(tm_row("tm-run --ray, 2 actors, N/4", module, n // 4, 1, kw, True))
            head = ["runner", "jobs", "wall s", "to first s", "steady jobs/s", "peak RSS MiB", ""]
            bl.print_table(head, rows)
            if name == "10 ms sleep":
                print(f"ideal: 2 x {threads} threads / 10 ms = {bl.fmt_rate(2 * threads / 0.01)}")
            print()
        print("peak RSS: the runner's process tree on this host (actors are the raylet's).")
    finally:
        if proc is not None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        shutil.rmtree(temp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
