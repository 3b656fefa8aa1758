"""End to end through the real CLI, with the ledger oracle: every job at least once, repeats
only where a checkpoint did not claim them, and the checkpoint never claims more than ran."""

from __future__ import annotations

import base64
import os
import pickle
import random
import re
from collections.abc import Callable
from dataclasses import dataclass

import pytest
from conftest import LEDGER_MODULE, Job, kill_group, wait_until

from taskmaster.store import checkpoint, codec

EXCLUSIVE_MODULE = (
    LEDGER_MODULE
    + """
def get_jobs(last=None, **kwargs):  # restarts AFTER last, like 'WHERE id > last'
    yield from range(0 if last is None else int(last) + 1, N)
"""
)

NO_LAST_MODULE = (
    LEDGER_MODULE
    + """
def get_jobs(**kwargs):  # no 'last': a resume skips by watermark
    yield from range(N)
"""
)


def assert_exactly_once(job: Job, n: int) -> None:
    counts = job.counts()
    missing = sorted(set(range(n)) - set(counts))
    assert not missing, f"jobs never ran: {missing[:20]}"
    repeated = {s: c for s, c in counts.items() if c > 1}
    assert not repeated, f"jobs ran more than once: {dict(list(repeated.items())[:20])}"
    assert sorted(counts) == list(range(n))


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("threads", [1, 4])
def test_every_job_exactly_once(job: Job, workers: int, threads: int) -> None:
    result = job.run(str(workers), "--threads", str(threads), TM_N="2000")
    assert result.returncode == 0, result.stderr
    assert_exactly_once(job, 2000)
    state = job.checkpoint()
    assert state["finished"] is True and state["watermark"] == 2000
    assert state["done"] == 2000 and state["failed"] == 0 and state["resolved"] == []
    assert "2,000 jobs done" in result.stderr and "Traceback" not in result.stderr


def test_kwargs_reach_get_jobs(make_job: Callable[[str], Job]) -> None:
    job = make_job(
        LEDGER_MODULE
        + """
def get_jobs(last=None, start="0", stop="10", step="1"):
    first = int(start) if last is None else int(last)
    yield from range(first, int(stop), int(step))
"""
    )
    result = job.run("2", "start=5", "stop=500", "step=5")
    assert result.returncode == 0, result.stderr
    counts = job.counts()
    assert sorted(counts) == list(range(5, 500, 5)) and set(counts.values()) == {1}
    (state_file,) = job.folder.glob("jobs-*.state.json")
    state = checkpoint.read(str(state_file))
    assert state is not None and state.kwargs == {"start": "5", "stop": "500", "step": "5"}


# -- kill the whole process group, then resume -------------------------------------------------


@dataclass
class Crash:
    """What the files said right after a kill."""

    state: checkpoint.State
    ran: set[int]  # seqs in the ledger at the kill
    executions: int  # ledger lines at the kill, all runs together

    @property
    def claimed(self) -> set[int]:
        """Seqs the checkpoint says are resolved."""
        seqs = set(range(self.state.watermark))
        for r in self.state.resolved:
            seqs.update(range(r.start, r.end))
        return seqs


def ledger_lines(job: Job) -> int:
    return sum(job.counts().values())


def kill_mid_run(job: Job, args: tuple[str, ...], at_least: int, env: dict[str, str]) -> Crash:
    """Start a --resume run, SIGKILL its process group once the ledger has ``at_least``
    lines, and read what it left."""
    proc = job.start(*args, "--resume", **env)
    try:
        wait_until(
            lambda: ledger_lines(job) >= at_least or proc.poll() is not None,
            30,
            f"{at_least} ledger lines",
        )
    finally:
        kill_group(proc)
        proc.communicate(timeout=30)
    # I5: a kill at any instant, even mid-write, leaves a whole, valid checkpoint
    state = checkpoint.read(str(job.state))
    assert state is not None, "the preflight checkpoint is written before any job runs"
    counts = job.counts()
    return Crash(state, set(counts), sum(counts.values()))


def check_crash(crash: Crash, previous: Crash | None, seed: int, window: int) -> None:
    state = crash.state
    # I2, the key invariant: the checkpoint never claims more than was done
    unran = sorted(crash.claimed - crash.ran)
    assert not unran, f"seed {seed}: checkpoint claims jobs that never ran: {unran[:20]}"
    assert state.done + state.failed == len(crash.claimed), (
        f"seed {seed}: counts {state.done}+{state.failed} disagree with what the "
        f"checkpoint claims ({len(crash.claimed)})"
    )
    # I4: monotonic across crashes
    if previous is not None:
        assert state.watermark >= previous.state.watermark, f"seed {seed}: watermark went back"
    # held jobs never exceed the window, so the open part above the watermark is bounded
    assert all(r.start >= state.watermark for r in state.resolved), f"seed {seed}"
    assert not state.finished, f"seed {seed}: the run finished before the kill"


def check_repeats(job: Job, crashes: list[Crash], seed: int) -> None:
    """Every repeat is explained by a crash: the seq ran before it, and that crash's
    checkpoint did not claim it (so it is at or above that crash's watermark)."""
    counts = job.counts()
    unclaimed = [c.ran - c.claimed for c in crashes]
    for seq, count in counts.items():
        if count == 1:
            continue
        causes = [k for k, u in enumerate(unclaimed) if seq in u]
        assert count - 1 <= len(causes), (
            f"seed {seed}: job {seq} ran {count} times but only {len(causes)} crash(es) "
            f"left it unclaimed; watermarks {[c.state.watermark for c in crashes]}"
        )
        assert all(seq >= crashes[k].state.watermark for k in causes)
    # The bound: a run can repeat at most what it executed and its checkpoint did not
    # claim (jobs resolved since its last checkpoint, plus the window in flight).
    bound, before = 0, (0, 0)
    for crash in crashes:
        executed = crash.executions - before[0]
        claimed_here = crash.state.done + crash.state.failed - before[1]
        bound += executed - claimed_here
        before = (crash.executions, crash.state.done + crash.state.failed)
    repeats = sum(c - 1 for c in counts.values())
    assert repeats <= bound, f"seed {seed}: {repeats} repeats, bound {bound}"


def kill_resume_cycles(job: Job, n: int, cycles: int, seed: int) -> list[Crash]:
    rng = random.Random(seed)
    env = {"TM_N": str(n), "TM_SLEEP": "0.001"}
    window = 64
    args = ("2", "--threads", "2", "--size", str(window), "--checkpoint-every", "0.05")
    crashes: list[Crash] = []
    for _ in range(cycles):
        at_least = ledger_lines(job) + rng.randint(n // 20, n // 6)
        crash = kill_mid_run(job, args, at_least, env)
        check_crash(crash, crashes[-1] if crashes else None, seed, window)
        crashes.append(crash)
    result = job.run(*args, "--resume", **env)
    assert result.returncode == 0, f"seed {seed}: {result.stderr}"
    counts = job.counts()
    missing = sorted(set(range(n)) - set(counts))
    assert not missing, f"seed {seed}: jobs never ran: {missing[:20]}"
    assert sorted(counts) == list(range(n)), f"seed {seed}: jobs outside 0..{n - 1} ran"
    final = job.checkpoint()
    assert final["finished"] is True and final["watermark"] == n, f"seed {seed}: {final}"
    assert final["done"] == n and final["resolved"] == [], f"seed {seed}: {final}"
    check_repeats(job, crashes, seed)
    return crashes


def _seed(default: int) -> int:
    return int(os.environ.get("TM_KILL_SEED", default))


def test_kill_and_resume_three_times(job: Job) -> None:
    crashes = kill_resume_cycles(job, 3000, cycles=3, seed=_seed(20240611))
    assert crashes[-1].state.runs == 3  # the third killed run resumed twice
    assert job.checkpoint()["runs"] == 4


def test_kill_and_resume_without_last(make_job: Callable[[str], Job]) -> None:
    job = make_job(NO_LAST_MODULE)
    kill_resume_cycles(job, 2000, cycles=1, seed=_seed(7))


def test_kill_and_resume_generator_that_restarts_after_last(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(EXCLUSIVE_MODULE)
    kill_resume_cycles(job, 2000, cycles=2, seed=_seed(99))


@pytest.mark.parametrize("get_jobs", ["inclusive", "exclusive", "no-last"])
@pytest.mark.parametrize("anchor_resolved", [False, True], ids=["unresolved", "resolved"])
def test_resume_at_the_last_job(
    make_job: Callable[[str], Job], get_jobs: str, anchor_resolved: bool
) -> None:
    """A checkpoint whose anchor is the very last job: unresolved, it runs once more;
    resolved, nothing runs and the run finishes."""
    source = {
        "inclusive": LEDGER_MODULE,
        "exclusive": EXCLUSIVE_MODULE,
        "no-last": NO_LAST_MODULE,
    }[get_jobs]
    job = make_job(source)
    n = 10
    watermark = n if anchor_resolved else n - 1
    state = checkpoint.State(
        target="jobs:get_jobs",
        kwargs={},
        watermark=watermark,
        anchor=checkpoint.Anchor(n - 1, n - 1, codec.job_digest(n - 1)),
        done=watermark,
    )
    job.state.write_bytes(checkpoint.encode(state))
    result = job.run("1", "--resume", TM_N=str(n))
    assert result.returncode == 0, result.stderr
    assert job.counts() == ({} if anchor_resolved else {n - 1: 1})
    final = job.checkpoint()
    assert final["finished"] is True and final["watermark"] == n and final["done"] == n


# -- get_jobs raises ---------------------------------------------------------------------------


RAISING_MODULE = (
    LEDGER_MODULE
    + """
RAISE_AT = int(os.environ.get("TM_RAISE_AT", "-1"))


def fetch(i):
    if i == RAISE_AT and not os.environ.get("TM_FIXED"):
        raise ValueError("row %d is unreadable" % i)
    return i


def get_jobs(last=0, **kwargs):
    for i in range(int(last), N):
        yield fetch(i)
"""
)


def test_generator_raising_then_fixed_and_resumed(make_job: Callable[[str], Job]) -> None:
    job = make_job(RAISING_MODULE)
    env = {"TM_N": "3000", "TM_RAISE_AT": "1234"}
    result = job.run("2", "--threads", "2", **env)
    assert result.returncode == 1, result.stderr
    err = result.stderr
    assert "Traceback (most recent call last)" in err
    assert "ValueError: row 1234 is unreadable" in err
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', err)
    assert (str(job.module), "get_jobs") in frames and (str(job.module), "fetch") in frames
    assert "--resume" in err
    state = job.checkpoint()
    assert state["watermark"] == 1234 and state["done"] == 1234, state
    assert state["finished"] is False and state["resolved"] == []
    assert_exactly_once(job, 1234)

    refused = job.run("2", **env)
    assert refused.returncode == 2 and "--resume" in refused.stderr

    fixed = job.run("2", "--threads", "2", "--resume", TM_FIXED="1", **env)
    assert fixed.returncode == 0, fixed.stderr
    assert_exactly_once(job, 3000)
    final = job.checkpoint()
    assert final["finished"] is True and final["watermark"] == 3000 and final["done"] == 3000


# -- handle_job raises -------------------------------------------------------------------------


FAILING_MODULE = (
    LEDGER_MODULE
    + """
FLAKY_DIR = os.path.join(os.path.dirname(LEDGER), "flaky")


def handle_job(job):
    record(job)  # every attempt is in the ledger
    if job % 97 == 0:
        raise ValueError("bad job %d" % job)
    if job % 50 == 1:  # fails on its first attempt only
        try:
            os.close(os.open(os.path.join(FLAKY_DIR, str(job)), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        raise ConnectionError("flaky %d" % job)
"""
)


def test_failing_jobs_are_retried_then_recorded(make_job: Callable[[str], Job]) -> None:
    job = make_job(FAILING_MODULE)
    (job.folder / "flaky").mkdir()
    n = 1000
    bad = list(range(0, n, 97))
    flaky = [i for i in range(1, n, 50) if i % 97]
    result = job.run("2", "--threads", "2", "--retries", "2", "--retry-delay", "0", TM_N=str(n))
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    assert f"{len(bad)} failed" in result.stderr and "jobs.failures.jsonl" in result.stderr

    records = job.failures()
    assert sorted(r["seq"] for r in records) == bad
    for r in records:
        seq = r["seq"]
        assert r["job"] == repr(seq)
        assert r["codec"] == "pickle"
        assert pickle.loads(base64.b64decode(str(r["payload"]))) == seq
        assert r["error"] == f"ValueError: bad job {seq}"
        tb = str(r["traceback"])
        assert tb.startswith("Traceback") and "in handle_job" in tb and str(job.module) in tb
        assert r["attempts"] == 3

    counts = job.counts()
    assert sorted(counts) == list(range(n))
    for i in range(n):
        expected = 3 if i in bad else 2 if i in flaky else 1
        assert counts[i] == expected, f"job {i} ran {counts[i]} times, not {expected}"

    state = job.checkpoint()
    assert state["watermark"] == n and state["finished"] is True  # the watermark passed them
    assert state["failed"] == len(bad) and state["done"] == n - len(bad)


def test_no_retries_means_one_attempt(make_job: Callable[[str], Job]) -> None:
    job = make_job(FAILING_MODULE)
    (job.folder / "flaky").mkdir()
    result = job.run("1", "--retries", "0", TM_N="100")
    assert result.returncode == 1, result.stderr
    bad_or_flaky = {0, 97, 1, 51}
    assert {r["seq"] for r in job.failures()} == bad_or_flaky
    assert all(r["attempts"] == 1 for r in job.failures())
    assert set(job.counts().values()) == {1}


def test_counts_stay_exact_across_a_resume_of_a_part_done_unit(
    make_job: Callable[[str], Job],
) -> None:
    """Job 40 fails once and waits for its retry when get_jobs raises at 50: the unit
    40..49 is open with 9 jobs done. The resume runs it whole again, so the checkpoint
    must not have counted those 9, or 'done over all runs' ends above the job count."""
    job = make_job(
        RAISING_MODULE
        + """
FLAKY = os.path.join(os.path.dirname(LEDGER), "flaky-40")


def handle_job(job):
    if job == 40 and not os.path.exists(FLAKY):
        open(FLAKY, "w").close()
        raise ConnectionError("flaky 40")
    record(job)
"""
    )
    env = {"TM_N": "100", "TM_RAISE_AT": "50"}
    args = ("1", "--batch-size", "20", "--retry-delay", "1")
    result = job.run(*args, **env)
    assert result.returncode == 1, result.stderr
    parsed = checkpoint.read(str(job.state))
    assert parsed is not None
    claimed = parsed.watermark + sum(r.end - r.start for r in parsed.resolved)
    assert parsed.done + parsed.failed == claimed, parsed
    result = job.run(*args, "--resume", TM_FIXED="1", **env)
    assert result.returncode == 0, result.stderr
    final = job.checkpoint()
    assert final["done"] == 100 and final["watermark"] == 100, final
    assert "(100 over all runs)" in result.stderr
