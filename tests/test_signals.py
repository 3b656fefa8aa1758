"""Stopping a run from outside: Ctrl-C, SIGTERM, kill -9 of the parent (also at each named
crash point), and a second run on the same state file. Every stop must leave a checkpoint
that claims nothing undone (I2), no process behind (I6), and a --resume that loses nothing.
"""

from __future__ import annotations

import os
import random
import signal
import sys
from collections.abc import Callable

import pytest
from conftest import Job, kill_group, marked_pids, wait_until
from faultlib import (
    FAULT_MODULE,
    assert_checkpoint_safe,
    assert_no_loss,
    assert_no_stale_temps,
    ledger_lines,
    started,
)

from taskmaster.local.signals import counting_signals
from taskmaster.store import checkpoint

N = 3000
SLOW = {"TM_N": str(N), "TM_SLEEP": "0.002"}  # about 2 s of work on 2 workers x 2 threads
ARGS = ("2", "--threads", "2", "--checkpoint-every", "0.1")


@pytest.fixture
def fault_job(make_job: Callable[[str], Job]) -> Job:
    return make_job(FAULT_MODULE)


def assert_clean_interrupt(rc: int, err: str) -> None:
    assert rc == 130, err
    assert "Traceback" not in err, err
    assert "--resume" in err, err


def resume_to_the_end(job: Job, n: int = N) -> None:
    result = job.run(*ARGS, "--resume", TM_N=str(n))
    assert result.returncode == 0, result.stderr
    assert job.checkpoint()["finished"] is True
    assert_no_loss(job, n)
    assert_no_stale_temps(job)


def test_ctrl_c_drains_checkpoints_and_resumes_without_loss(fault_job: Job, marker: str) -> None:
    job = fault_job
    with started(job, *ARGS, **SLOW) as proc:
        wait_until(lambda: ledger_lines(job) >= 200, 20, "200 jobs done")
        kill_group(proc, signal.SIGINT)  # as a terminal does
        _, err = proc.communicate(timeout=30)
    assert_clean_interrupt(proc.returncode, err)
    assert "finishing the jobs in flight" in err
    wm = assert_checkpoint_safe(job)
    assert 0 < wm < N and job.checkpoint()["finished"] is False
    assert not marked_pids(marker)
    resume_to_the_end(job)
    # a drained stop leaves nothing half done: the resume skips every job that ran
    assert set(job.counts().values()) == {1}


def test_second_ctrl_c_stops_at_once(fault_job: Job, marker: str) -> None:
    job = fault_job
    hung = {"TM_FAULT": "hang", "TM_BAD": "100"}
    with started(job, *ARGS, "--drain-timeout", "300", **SLOW, **hung) as proc:
        wait_until(lambda: job.counts()[100] > 0, 20, "job 100 to hang")
        kill_group(proc, signal.SIGINT)
        assert proc.stderr is not None
        line = proc.stderr.readline()
        assert "stopping" in line, line  # the drain began; it cannot end while 100 hangs
        kill_group(proc, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert_clean_interrupt(proc.returncode, err)
    assert "stopping now" in err
    wait_until(lambda: not marked_pids(marker), 2, "the workers to be gone")
    assert assert_checkpoint_safe(job) <= 100
    resume_to_the_end(job)


def test_drain_timeout_stops_a_drain_that_cannot_end(fault_job: Job) -> None:
    job = fault_job
    hung = {"TM_FAULT": "hang", "TM_BAD": "100"}
    with started(job, *ARGS, "--drain-timeout", "0.5", **SLOW, **hung) as proc:
        wait_until(lambda: job.counts()[100] > 0, 20, "job 100 to hang")
        kill_group(proc, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert_clean_interrupt(proc.returncode, err)
    assert "--drain-timeout" in err
    assert assert_checkpoint_safe(job) <= 100
    resume_to_the_end(job)


def test_ctrl_c_while_get_jobs_blocks(fault_job: Job) -> None:
    """get_jobs runs in the parent's loop; a stop must not wait for it to yield."""
    job = fault_job
    blocked = {"TM_N": "100", "TM_GATES": "50"}  # get_jobs waits for go-50, which never comes
    # batches of one: a batch being filled would wait for the gate with get_jobs
    with started(job, *ARGS, "--batch-size", "1", **blocked) as proc:
        wait_until(lambda: len(job.counts()) == 50, 20, "every job before the gate to run")
        kill_group(proc, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert_clean_interrupt(proc.returncode, err)
    assert assert_checkpoint_safe(job) == 50
    resume_to_the_end(job, 100)
    assert set(job.counts().values()) == {1}


def test_ctrl_c_while_a_resumed_get_jobs_yields_its_first_job(fault_job: Job) -> None:
    job = fault_job
    first = job.run(*ARGS, "--limit", "20", TM_N="50")
    assert first.returncode == 0, first.stderr
    saved = job.state.read_bytes()
    # the resume calls get_jobs(last=19), whose first job waits for go-19, which never comes
    with started(job, *ARGS, "--resume", TM_N="50", TM_GATES="19") as proc:
        wait_until(lambda: len(job.workers(proc)) == 2, 20, "the workers to start")
        kill_group(proc, signal.SIGINT)
        _, err = proc.communicate(timeout=20)
    assert_clean_interrupt(proc.returncode, err)
    assert job.state.read_bytes() == saved
    resume_to_the_end(job, 50)
    assert set(job.counts().values()) == {1}


# exec the command with SIGINT ignored, as a shell starts ``tm-run ... &`` from a script
IGNORING_SIGINT = (
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_IGN); "
    "os.execv(sys.argv[1], sys.argv[1:])"
)


def test_a_run_started_with_sigint_ignored_ignores_it_throughout(fault_job: Job) -> None:
    job = fault_job
    with started(job, *ARGS, prefix=[sys.executable, "-c", IGNORING_SIGINT], **SLOW) as proc:
        wait_until(lambda: ledger_lines(job) >= 200, 20, "200 jobs done")
        kill_group(proc, signal.SIGINT)
        done = ledger_lines(job)
        wait_until(lambda: ledger_lines(job) >= done + 200, 20, "the run to go on after SIGINT")
        assert proc.poll() is None
        os.kill(proc.pid, signal.SIGTERM)  # SIGTERM still stops it, as ever
        _, err = proc.communicate(timeout=30)
    assert_clean_interrupt(proc.returncode, err)
    assert 0 < assert_checkpoint_safe(job) < N
    resume_to_the_end(job)
    assert set(job.counts().values()) == {1}


def test_counting_signals_leaves_an_ignored_sigint_ignored() -> None:
    old = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with counting_signals() as (_fd, count):
            assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            wait_until(lambda: count() >= 1, 5, "SIGTERM to be counted")
            assert count() == 1  # the SIGTERM alone
        assert signal.getsignal(signal.SIGINT) == signal.SIG_IGN
        signal.signal(signal.SIGINT, signal.default_int_handler)
        with counting_signals() as (_fd, count):
            os.kill(os.getpid(), signal.SIGINT)
            wait_until(lambda: count() >= 1, 5, "SIGINT to be counted")
    finally:
        signal.signal(signal.SIGINT, old)


@pytest.mark.parametrize("to", ["parent", "group"])
def test_sigterm_stops_like_ctrl_c(fault_job: Job, to: str) -> None:
    job = fault_job
    with started(job, *ARGS, **SLOW) as proc:
        wait_until(lambda: ledger_lines(job) >= 200, 20, "200 jobs done")
        if to == "parent":
            os.kill(proc.pid, signal.SIGTERM)
        else:  # e.g. a service manager: the workers die of it, their jobs stay unresolved
            kill_group(proc, signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert_clean_interrupt(proc.returncode, err)
    assert 0 < assert_checkpoint_safe(job) < N
    resume_to_the_end(job)


def test_workers_die_with_a_killed_parent(fault_job: Job, marker: str) -> None:
    job = fault_job
    with started(job, *ARGS, **SLOW) as proc:
        wait_until(lambda: ledger_lines(job) >= 200, 20, "200 jobs done")
        workers = job.workers(proc)
        assert len(workers) == 2
        os.kill(proc.pid, signal.SIGKILL)  # the parent only, not its group
        proc.wait()
        wait_until(lambda: not marked_pids(marker), 2, f"workers {workers} to die with the parent")
    assert_checkpoint_safe(job)
    resume_to_the_end(job)


def test_parent_killed_again_and_again(fault_job: Job, marker: str) -> None:
    """Scenario 1: kill -9 the parent at random points, resume, repeat; then finish."""
    job = fault_job
    seed = int(os.environ.get("TM_SEED") or random.randrange(2**32))
    print(f"kill schedule seed {seed}; replay with TM_SEED={seed}")
    rng = random.Random(seed)
    size, crashes = 200, 4
    args = (*ARGS, "--size", str(size), "--checkpoint-every", "0.05", "--resume")
    watermarks = [0]
    for k in range(crashes):
        with started(job, *args, **SLOW) as proc:
            target = ledger_lines(job) + rng.randrange(20, 400)
            wait_until(lambda t=target: ledger_lines(job) >= t, 20, f"{target} jobs, seed {seed}")
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            wait_until(lambda: not marked_pids(marker), 2, f"workers gone after kill {k}")
        wm = assert_checkpoint_safe(job)  # I2, I5
        assert wm >= watermarks[-1], f"watermark went back: {watermarks} then {wm}, seed {seed}"
        watermarks.append(wm)
    resume_to_the_end(job)  # I1
    duplicates = sum(c - 1 for c in job.counts().values())
    # I3: a crash re-runs at most the window and the jobs done since the last checkpoint
    assert duplicates <= crashes * 2 * size, f"{duplicates} re-runs, seed {seed}"


CRASH_POINTS = [
    "ckpt.before_tmp_write",
    "ckpt.after_tmp_write",
    "ckpt.after_fsync",
    "ckpt.after_rename",
    "ckpt.after_dirsync",
    "gen.after_pull",
    "parent.after_ack_before_wm",
]


@pytest.mark.parametrize("count", [1, 2])
@pytest.mark.parametrize("point", CRASH_POINTS)
def test_parent_killed_at_a_crash_point(
    fault_job: Job, marker: str, point: str, count: int
) -> None:
    job = fault_job
    n = 400
    failpoint = {"TASKMASTER_FAILPOINTS": f"{point}=kill@{count}"}
    result = job.run(
        *ARGS, "--checkpoint-every", "0.02", TM_N=str(n), TM_SLEEP="0.001", **failpoint
    )
    assert result.returncode == -signal.SIGKILL, result.stderr
    wait_until(lambda: not marked_pids(marker), 2, "the workers to die with the parent")
    state = checkpoint.read(str(job.state))  # I5: parses, or is absent before the first commit
    if point.startswith("ckpt.") and count == 1:  # the preflight write, before any job
        assert not job.counts()
        renamed = point in ("ckpt.after_rename", "ckpt.after_dirsync")
        assert (state is not None) == renamed
        assert state is None or state.watermark == 0
    assert_checkpoint_safe(job)  # I2
    resume_to_the_end(job, n)  # I1, and the stale temp file is gone


def test_second_run_on_the_same_state_file_is_refused(fault_job: Job) -> None:
    job = fault_job
    n = 600  # 600 x 20 ms on 2 workers: 6 s, so the second run finds the first still going
    with started(job, *ARGS, TM_N=str(n), TM_SLEEP="0.02") as proc:
        wait_until(lambda: ledger_lines(job) >= 20, 20, "the first run to start")
        second = job.run(*ARGS, "--resume", TM_N=str(n))
        assert second.returncode == 75, second.stderr
        assert f"another taskmaster run (pid {proc.pid})" in second.stderr
        assert "Traceback" not in second.stderr
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    counts = job.counts()
    assert sorted(counts) == list(range(n)) and set(counts.values()) == {1}
