"""Faults in jobs, workers, the generator and the state folder, through the real CLI.

The crash matrix is one table in the style of loky's and CPython's deadlock tests: each row
makes job 7 (of 30) misbehave one way and states what the run must end with.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pytest
from conftest import Job
from faultlib import (
    FAULT_MODULE,
    assert_checkpoint_safe,
    failed_seqs,
)

from taskmaster import checkpoint

N = 30
BAD = 7
ONE_BY_ONE = ("--batch-size", "1")  # a death then charges exactly the job that caused it


@pytest.fixture
def fault_job(make_job: Callable[[str], Job]) -> Job:
    return make_job(FAULT_MODULE)


@dataclass(frozen=True)
class Fault:
    fault: str
    args: tuple[str, ...] = ()
    exit: int = 1
    failures: tuple[tuple[int, str, int], ...] = ()  # (seq, error prefix, attempts)
    runs: int | None = None  # times seq 7 ran, where that is deterministic
    says: tuple[str, ...] = ()  # in stderr
    yielded: int = N  # jobs get_jobs yields before it ends or raises
    bad: int = BAD
    traceback_ok: bool = False
    error_has: str = ""  # in the failure record's error
    env: dict[str, str] = field(default_factory=dict)


DIED = ((BAD, "WorkerDied: worker ", 3),)


CRASH_MATRIX = {
    "raise": Fault("raise", failures=((BAD, "ValueError: job 7 is bad", 3),), runs=3),
    "sys-exit-is-a-job-failure": Fault("sys_exit", failures=((BAD, "SystemExit: 3", 3),), runs=3),
    "os-exit-0-is-a-death": Fault(
        "os_exit", ONE_BY_ONE, failures=DIED, runs=3, says=("exited with code 0",)
    ),
    "sigkill-self": Fault("sigkill", ONE_BY_ONE, failures=DIED, runs=3, says=("SIGKILL",)),
    "segfault": Fault(
        "segv",
        ONE_BY_ONE,
        failures=DIED,
        runs=3,
        says=("SIGSEGV", "Fatal Python error: Segmentation fault"),
    ),
    "hang-past-job-timeout": Fault(
        "hang",
        ("--job-timeout", "1", "--retries", "1"),
        failures=((BAD, "JobTimeout: ", 2),),
        runs=2,
        says=("--job-timeout",),
    ),
    "unserializable-generator-object": Fault(
        "genobj", failures=((BAD, "EncodeError: job of type generator ", 1),), runs=0
    ),
    "unserializable-socket": Fault(
        "socket", failures=((BAD, "EncodeError: job of type socket ", 1),), runs=0
    ),
    "unserializable-last-job": Fault(
        "genobj", failures=((N - 1, "EncodeError: job of type generator ", 1),), bad=N - 1
    ),
    "generator-raises": Fault(
        "gen_raise",
        runs=0,
        yielded=BAD,
        says=("get_jobs raised RuntimeError: get_jobs broke at 7", "--resume"),
        traceback_ok=True,
    ),
    "error-at-unpickle": Fault(
        "unpickle_error",
        failures=((BAD, "UnpickleError: ", 3),),
        runs=0,
        error_has="RuntimeError: this job cannot be rebuilt",
    ),
    "exit-at-unpickle": Fault(
        "unpickle_exit", failures=((BAD, "UnpickleError: ", 3),), runs=0, error_has="SystemExit: 5"
    ),
    "crash-at-unpickle": Fault(
        "unpickle_crash", ONE_BY_ONE, failures=DIED, runs=0, says=("SIGSEGV",)
    ),
}


@pytest.mark.parametrize("case", CRASH_MATRIX.values(), ids=CRASH_MATRIX.keys())
def test_crash_matrix(fault_job: Job, case: Fault) -> None:
    job = fault_job
    result = job.run(
        "2",
        "--retry-delay",
        "0",
        *case.args,
        TM_N=str(N),
        TM_FAULT=case.fault,
        TM_BAD=str(case.bad),
        **case.env,
    )
    err = result.stderr
    assert result.returncode == case.exit, err
    for text in case.says:
        assert text in err, f"{text!r} not in stderr:\n{err}"
    if not case.traceback_ok:
        assert "Traceback (most recent call last)" not in err, err

    records = job.failures()
    assert [r["seq"] for r in records] == [seq for seq, _, _ in case.failures], err
    for record, (_, prefix, attempts) in zip(records, case.failures, strict=True):
        assert str(record["error"]).startswith(prefix), record
        assert record["attempts"] == attempts, record
        if prefix.startswith("EncodeError"):
            assert "cannot be serialized by pickle or dill" in str(record["error"])
        assert case.error_has in str(record["error"]), record

    counts = job.counts()
    failed = failed_seqs(job)
    never_ran = [i for i in range(case.yielded) if counts[i] == 0 and i not in failed]
    assert not never_ran, f"jobs that never ran: {never_ran}\n{err}"
    assert not [i for i in counts if i >= case.yielded], "ran jobs get_jobs never yielded"
    if case.runs is not None:
        assert counts[case.bad] == case.runs, err

    state = checkpoint.read(str(job.state))
    assert state is not None
    assert state.watermark == case.yielded
    assert state.finished == (case.yielded == N)
    if case.fault == "sys_exit":  # a job failure, not a worker death
        assert "WorkerDied" not in err and "worker 0" not in err, err


def test_resume_that_pulls_nothing_keeps_the_resume_point(fault_job: Job) -> None:
    """A resumed run whose get_jobs raises before its first job must not lose its anchor:
    the next resume would start get_jobs from the beginning under the old seqs."""
    job = fault_job
    first = job.run("2", TM_N="40", TM_FAULT="gen_raise", TM_BAD="20")
    assert first.returncode == 1, first.stderr
    assert assert_checkpoint_safe(job) == 20
    # the resume restarts get_jobs at last=19, which raises before yielding anything
    second = job.run("2", "--resume", TM_N="40", TM_FAULT="gen_raise", TM_BAD="19")
    assert second.returncode == 1, second.stderr
    assert "get_jobs raised" in second.stderr
    assert assert_checkpoint_safe(job) == 20
    third = job.run("2", "--resume", TM_N="40")
    assert third.returncode == 0, third.stderr
    state = job.checkpoint()
    assert state["finished"] is True and state["watermark"] == 40, state
    counts = job.counts()
    assert sorted(counts) == list(range(40))
    assert all(counts[i] == 1 for i in range(19)), "jobs below the watermark ran again"
