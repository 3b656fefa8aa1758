"""Shared helpers for the benchmark scripts: running bounded subprocesses, timing them,
sampling the memory of their process tree, and printing plain-text tables.

Every process is started in a new session (its own process group) and the whole group is
killed with SIGKILL on timeout, on Ctrl-C and after it exits, so nothing is left behind.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

BENCH_DIR = Path(__file__).resolve().parent
JOBS_DIR = BENCH_DIR / "jobs"
PEERS = BENCH_DIR / "peers.py"
PYTHON = sys.executable
SAMPLE_EVERY = 0.02  # seconds between two memory samples
MIB = 1024 * 1024


@dataclass
class RunResult:
    """One finished (or killed) subprocess."""

    returncode: int | None
    wall: float
    stdout: str
    stderr: str
    timed_out: bool = False
    peak_rss: int = 0  # bytes, max over samples of the sum over the process tree
    peak_pss: int = 0  # bytes, same for PSS (0 when not sampled or not readable)
    samples: int = 0
    started_at: float = 0.0  # time.time() just before the start

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out

    def why(self) -> str:
        """A one-line reason for a failed run."""
        if self.timed_out:
            return f"timed out after {self.wall:.0f} s"
        if self.returncode is None:
            return self.stderr.strip()
        lines = [ln for ln in (self.stderr + self.stdout).splitlines() if ln.strip()]
        last = lines[-1].strip() if lines else "no output"
        return f"exit {self.returncode}: {last[:160]}"

    def json_tail(self) -> dict[str, Any]:
        """The last stdout line parsed as JSON (how peers.py reports), or {}."""
        for line in reversed(self.stdout.splitlines()):
            with contextlib.suppress(ValueError):
                doc = json.loads(line)
                if isinstance(doc, dict):
                    return doc
        return {}


@dataclass
class MemorySampler:
    """Samples RSS (and PSS) summed over a process and all its descendants."""

    root_pid: int
    with_pss: bool = True
    peak_rss: int = 0
    peak_pss: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _procs: dict[int, psutil.Process] = field(default_factory=dict)

    def _tree(self) -> list[psutil.Process]:
        try:
            root = self._procs.setdefault(self.root_pid, psutil.Process(self.root_pid))
            kids = root.children(recursive=True)
        except psutil.Error:
            return []
        # Keep Process objects so psutil does not re-read their start times on each sample.
        return [root] + [self._procs.setdefault(k.pid, k) for k in kids]

    def sample(self) -> None:
        rss = pss = 0
        for proc in self._tree():
            try:
                if self.with_pss:
                    info = proc.memory_full_info()
                    rss += info.rss
                    pss += info.pss
                else:
                    rss += proc.memory_info().rss
            except psutil.Error:
                continue
        self.peak_rss = max(self.peak_rss, rss)
        self.peak_pss = max(self.peak_pss, pss)
        self.samples += 1

    def loop(self) -> None:
        while not self._stop.is_set():
            self.sample()
            self._stop.wait(SAMPLE_EVERY)

    def stop(self) -> None:
        self._stop.set()


def kill_group(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL the process group of ``proc`` (its own session), ignoring a gone group."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def kill_tree(proc: subprocess.Popen[Any]) -> None:
    """SIGKILL ``proc``'s group and every descendant, with the groups they lead.

    A benchmark script starts each of its runs in a session of its own, so killing the
    script's group alone would leave those runs behind.
    """
    try:
        kids = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        kids = []
    kill_group(proc)
    for kid in kids:
        with contextlib.suppress(psutil.Error, OSError):
            if os.getpgid(kid.pid) == kid.pid:
                os.killpg(kid.pid, signal.SIGKILL)
            kid.kill()


def run_cmd(
    cmd: Sequence[str],
    timeout: float,
    *,
    memory: bool = False,
    env: dict[str, str] | None = None,
    while_running: Callable[[subprocess.Popen[Any]], None] | None = None,
) -> RunResult:
    """Run ``cmd`` in its own process group, bounded by ``timeout`` seconds.

    ``while_running`` (if given) is called once after the start, in this thread; it may
    kill the group itself (resume_skip does) and must return before the timeout matters.
    """
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started_at = time.time()
        t0 = time.perf_counter()
        try:
            proc = subprocess.Popen(
                list(cmd),
                stdout=out,
                stderr=err,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env=env,
            )
        except OSError as exc:
            return RunResult(None, 0.0, "", f"cannot start {cmd[0]}: {exc}", started_at=started_at)
        sampler = MemorySampler(proc.pid) if memory else None
        thread = threading.Thread(target=sampler.loop, daemon=True) if sampler else None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            kill_group(proc)

        # A blocking wait, ended by a timer at the timeout: Popen.wait(timeout=...) polls
        # with sleeps that grow to 50 ms, which rounded short runs up to the next poll
        # (a 70 ms run measured 114 ms).
        timer = threading.Timer(max(0.1, timeout - (time.perf_counter() - t0)), expire)
        try:
            timer.start()
            if thread:
                thread.start()
            if while_running:
                while_running(proc)
            proc.wait()
        finally:
            wall = time.perf_counter() - t0
            timer.cancel()
            timed_out = expired.is_set()
            kill_group(proc)
            proc.wait()
            if sampler and thread:
                sampler.stop()
                thread.join()
        out.seek(0)
        err.seek(0)
        return RunResult(
            returncode=proc.returncode,
            wall=wall,
            stdout=out.read(),
            stderr=err.read(),
            timed_out=timed_out,
            peak_rss=sampler.peak_rss if sampler else 0,
            peak_pss=sampler.peak_pss if sampler else 0,
            samples=sampler.samples if sampler else 0,
            started_at=started_at,
        )


# --- taskmaster and peers -------------------------------------------------------------


def tm_run_path() -> str | None:
    """The tm-run to benchmark: $TM_RUN, else the one beside this Python, else on PATH."""
    override = os.environ.get("TM_RUN")
    if override:
        return override
    beside = Path(PYTHON).parent / "tm-run"
    if beside.exists():
        return str(beside)
    return shutil.which("tm-run")


def tm_unavailable() -> str | None:
    """None when tm-run can be started, else the reason it cannot."""
    path = tm_run_path()
    if path is None:
        return "no tm-run next to the Python running this, nor on PATH"
    res = run_cmd([path, "--help"], timeout=30)
    if not res.ok:
        return f"tm-run --help failed, {res.why()}"
    return None


def job_module(name: str) -> str:
    return str(JOBS_DIR / f"{name}.py")


def tm_cmd(
    module: str,
    state_dir: str,
    *,
    workers: int = 2,
    threads: int = 1,
    size: int | None = None,  # None: tm-run's own window (see README, --size)
    checkpoint_every: float | str = 1.0,
    kwargs: dict[str, Any] | None = None,
    extra: Sequence[str] = (),
) -> list[str]:
    tm = tm_run_path() or "tm-run"
    cmd = [tm, job_module(module), str(workers), "--threads", str(threads)]
    cmd += [] if size is None else ["--size", str(size)]
    cmd += ["--state-file", str(Path(state_dir) / "state.json")]
    every = checkpoint_every if isinstance(checkpoint_every, str) else f"{checkpoint_every:g}"
    cmd += ["--no-progress", "--checkpoint-every", every, *extra]
    return cmd + [f"{k}={v}" for k, v in (kwargs or {}).items()]


def peer_cmd(
    runner: str,
    module: str,
    *,
    workers: int = 2,
    threads: int = 1,
    chunk: int = 1000,
    kwargs: dict[str, Any] | None = None,
) -> list[str]:
    cmd = [PYTHON, str(PEERS), runner, job_module(module), "--workers", str(workers)]
    cmd += ["--threads", str(threads), "--chunk", str(chunk)]
    return cmd + [f"{k}={v}" for k, v in (kwargs or {}).items()]


def peer_env() -> dict[str, str]:
    """The environment for peers: the jobs folder importable (loky workers re-import)."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(JOBS_DIR), env.get("PYTHONPATH")]))
    return env


@contextlib.contextmanager
def state_dir() -> Iterator[str]:
    """A fresh temp dir for one taskmaster run's state and failures files."""
    with tempfile.TemporaryDirectory(prefix="tm-bench-") as path:
        yield path


def read_state(path: str | Path) -> dict[str, Any]:
    """The JSON state file, or {} when absent or unreadable."""
    try:
        doc = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return {}
    return doc if isinstance(doc, dict) else {}


def has_module(name: str) -> bool:
    """Whether ``name`` imports in this Python (peers that may be absent)."""
    res = run_cmd([PYTHON, "-c", f"import {name}"], timeout=60)
    return res.ok


# --- alternating runs -------------------------------------------------------------------


@dataclass
class Runner:
    """One row of a table: a command to run in a fresh temp dir, and what it should do."""

    name: str
    build: Callable[[str], list[str]]  # temp dir -> command
    jobs: int
    is_tm: bool = False
    env: dict[str, str] | None = None
    note: str = ""
    unavailable: str | None = None  # why it cannot run at all (shown instead of numbers)
    key: str = ""  # a short id for looking a row up (the peers.py runner, or "tm")


@dataclass
class Outcome:
    """What the repetitions of one runner gave."""

    runner: Runner
    results: list[RunResult] = field(default_factory=list)
    error: str | None = None
    reps: int = 0  # the repetitions asked for

    @property
    def note(self) -> str:
        """The row's note, plus why it has fewer runs than asked; "see below" on error."""
        if self.error is not None:
            return "see below"
        if len(self.results) < self.reps:
            cut = f"{len(self.results)} of {self.reps} runs (time budget)"
            return f"{self.runner.note}; {cut}" if self.runner.note else cut
        return self.runner.note

    @property
    def walls(self) -> list[float]:
        return [r.wall for r in self.results]

    @property
    def rate(self) -> float:
        """Jobs per second at the median wall time."""
        return self.runner.jobs / median(self.walls) if self.results else float("nan")


def check_run(runner: Runner, res: RunResult, state: dict[str, Any]) -> str | None:
    """None when the run did every job, else why not."""
    if not res.ok:
        return res.why()
    if runner.is_tm:
        done, finished = state.get("done"), state.get("finished")
        if isinstance(done, int) and done != runner.jobs:
            return f"state file says done={done}, expected {runner.jobs}"
        if finished is False:
            return "exit 0 but the state file says finished=false"
        return None
    count = res.json_tail().get("jobs")
    if count != runner.jobs:
        return f"handled {count} jobs, expected {runner.jobs}"
    return None


def run_once(runner: Runner, timeout: float, memory: bool) -> tuple[RunResult, str | None]:
    with state_dir() as tmp:
        res = run_cmd(runner.build(tmp), timeout, memory=memory, env=runner.env)
        state = read_state(Path(tmp) / "state.json") if runner.is_tm else {}
    return res, check_run(runner, res, state)


def run_alternating(
    runners: Sequence[Runner],
    reps: int,
    timeout: float,
    *,
    memory: bool = False,
    budget: float = float("inf"),
) -> list[Outcome]:
    """Run the rows in turn, ``reps`` rounds, each round starting one row later (A B C,
    B C A, C A B, ...) so no row always follows the same one. A row that fails once is not
    run again, nor one whose runs so far took more than ``budget`` seconds in all."""
    outcomes = [Outcome(r, error=r.unavailable, reps=reps) for r in runners]
    for rep in range(reps):
        shift = rep % max(1, len(outcomes))
        for out in outcomes[shift:] + outcomes[:shift]:
            if out.error is not None or sum(out.walls) > budget:
                continue
            res, error = run_once(out.runner, timeout, memory)
            if error is not None:
                out.error = f"failed in run {rep + 1}: {error}"
            else:
                out.results.append(res)
            print(".", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr, flush=True)
    return outcomes


def tm_runner(
    name: str, build: Callable[[str], list[str]], jobs: int, reason: str | None
) -> Runner:
    return Runner(name, build, jobs, is_tm=True, unavailable=reason, key="tm")


def find(outcomes: Sequence[Outcome], key: str) -> Outcome | None:
    """The outcome of the row with ``key`` when it has numbers, else None."""
    for out in outcomes:
        if out.runner.key == key and out.error is None and out.results:
            return out
    return None


def print_tm_ratios(outcomes: Sequence[Outcome], peers: dict[str, str]) -> None:
    """Taskmaster's jobs/s over each peer's, for the peers (key -> label) that have numbers."""
    tm = find(outcomes, "tm")
    if tm is None:
        return
    for key, label in peers.items():
        other = find(outcomes, key)
        if other is not None:
            print(f"taskmaster jobs/s / {label} jobs/s: {fmt_ratio(ratio(tm.rate, other.rate))}")


def print_unavailable(outcomes: Sequence[Outcome]) -> None:
    """The reason under a table for every row without numbers."""
    for out in outcomes:
        if out.error is None:
            continue
        if out.runner.is_tm and out.runner.unavailable is not None:
            print(f"taskmaster: not available ({out.error})")
        else:
            print(f"{out.runner.name}: {out.error}")


# --- statistics and printing ----------------------------------------------------------


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def fmt_rate(jobs_per_s: float) -> str:
    if jobs_per_s != jobs_per_s:  # NaN
        return "-"
    return f"{jobs_per_s:,.0f}"


def fmt_ratio(x: float) -> str:
    return "-" if x != x else f"{x:.2f}x"


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def print_header(title: str, args: argparse.Namespace) -> None:
    mode = "quick" if getattr(args, "quick", False) else "default"
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    print(f"\n== {title} ==")
    ver = ".".join(map(str, sys.version_info[:3]))
    print(f"CPUs: {os.cpu_count()}  Python: {ver}  mode: {mode}")


def print_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """A plain table; the first and "note" columns are left-aligned, the others right."""
    widths = [len(h) for h in headers]
    left = [i == 0 or h == "note" for i, h in enumerate(headers)]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        pairs = zip(cells, widths, left, strict=True)
        return "  ".join(c.ljust(w) if lft else c.rjust(w) for c, w, lft in pairs).rstrip()

    print(line(headers))
    print("  ".join("-" * w for w in widths))
    for row in rows:
        print(line(row))


def print_note(text: str) -> None:
    """A paragraph of explanation, wrapped to 100 columns."""
    print(textwrap.fill(" ".join(text.split()), width=100))


def report_ideal(outcomes: Sequence[Outcome], ideal: float) -> None:
    """Median wall time, jobs/s and the share of an ideal jobs/s, one row per runner."""
    rows = []
    for out in outcomes:
        wall = f"{median(out.walls):.2f}" if out.results else "-"
        pct = f"{100 * out.rate / ideal:.0f}%" if out.results else "-"
        rows.append(
            [out.runner.name, f"{out.runner.jobs:,}", wall, fmt_rate(out.rate), pct, out.note]
        )
    print_table(["runner", "jobs", "wall s (median)", "jobs/s", "% of ideal", "note"], rows)
    print_unavailable(outcomes)


def exit_on_sigterm() -> None:
    """Turn SIGTERM into SystemExit, so run_all can stop a script and still have its
    ``finally`` blocks kill the script's runs and remove its temp dirs."""
    signal.signal(signal.SIGTERM, lambda _sig, _frame: sys.exit(143))


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    exit_on_sigterm()
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer jobs, for a smoke run")
    return parser


# --- targets (issue 11): one line each, gathered by run_all at the end ------------------

TARGETS_ENV = "TM_BENCH_TARGETS"
PEER_POINTS = 2  # report_ideal_target: how far below the peer's share still counts


def report_target(goal: str, measured: str, met: bool | None, verdict: str = "") -> None:
    """Print a target with what was measured beside it, and keep it for run_all's summary.

    ``met`` is None when the numbers are missing (a row failed or was unavailable), unless
    ``verdict`` says otherwise.
    """
    if not verdict:
        verdict = "no numbers" if met is None else ("met" if met else "NOT met")
    line = f"target: {goal}: {measured} -> {verdict}"
    print(line)
    path = os.environ.get(TARGETS_ENV)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(line + "\n")


def report_ideal_target(outcomes: Sequence[Outcome], ideal: float, what: str) -> None:
    """Two targets for taskmaster's row: >= 90% of ideal (issue 11), with the peer's share
    beside it; and within PEER_POINTS of the peer's share, which is what the runner itself
    loses where the ideal is out of reach of both (asyncio's own timers, see
    ``async_floor.py``; a whole-process start-up that weighs more in a slow hour)."""
    tm = find(outcomes, "tm")
    peers = [o for o in outcomes if not o.runner.is_tm and o.error is None and o.results]
    goal = f"{what} >= 90% of ideal"
    near = f"{what} within {PEER_POINTS} points of the peer's share of ideal"
    if tm is None:
        report_target(goal, "-", None)
        report_target(near, "-", None)
        return
    mine = 100 * tm.rate / ideal
    beside = f", {peers[0].runner.name} {100 * peers[0].rate / ideal:.0f}%" if peers else ""
    report_target(goal, f"taskmaster {mine:.0f}%{beside}", mine >= 90)
    if not peers:
        report_target(near, "-", None)
        return
    theirs = 100 * peers[0].rate / ideal
    report_target(near, f"taskmaster {mine:.0f}%{beside}", mine >= theirs - PEER_POINTS)
