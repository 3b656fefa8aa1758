"""--retry-failed through the real CLI: it never loses a failure record, whatever stops it.

Each test here reproduces a bug of the first build (issue 9): records dropped when
--max-failures stopped a replay, a failures file emptied when setup_worker raised, and the
KEY=VALUE arguments missing from setup_worker under --retry-failed.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path

from conftest import Job, kill_group, wait_until

FLAKY = """
import os

BROKEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "broken")
SETUP_BROKEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "setup-broken")
SEEN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "setup-args")


def get_jobs(last=0, **kwargs):
    yield from range(int(last), 40)


def setup_worker(**kwargs):
    with open(SEEN, "a") as f:
        f.write(repr(sorted(kwargs.items())) + "\\n")
    if os.path.exists(SETUP_BROKEN):
        raise ConnectionError("database is down")


def handle_job(job):
    if job % 2 and os.path.exists(BROKEN):
        raise ValueError("still broken: %d" % job)
"""


def _run(job: Job, *args: str) -> subprocess.CompletedProcess[str]:
    return job.run("1", "--state-file", str(job.state), *args)


def _seed_failures(job: Job) -> list[int]:
    """A first run in which the 20 odd jobs fail for good; returns their seqs."""
    (job.folder / "broken").touch()
    first = _run(job, "--retries", "0", "db=prod")
    assert first.returncode == 1, first.stderr
    seqs = sorted(int(str(r["seq"])) for r in job.failures())
    assert seqs == list(range(1, 40, 2))
    return seqs


def _failed_seqs(path: Path) -> list[int]:
    return sorted(json.loads(line)["seq"] for line in path.read_text().splitlines())


def test_max_failures_keeps_every_record_the_replay_did_not_fix(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(FLAKY)
    seqs = _seed_failures(job)
    replay = _run(job, "--retry-failed", "--retries", "0", "--max-failures", "2", "db=prod")
    assert replay.returncode == 1, replay.stderr
    assert _failed_seqs(job.failures_path) == seqs  # the handler is still broken: all stay
    assert "--max-failures 2" in replay.stderr
    assert "--retry-failed" in replay.stderr.splitlines()[-1]
    assert "--resume" not in replay.stderr.splitlines()[-1]


def test_setup_worker_failing_keeps_the_failures_file_and_fails_the_run(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(FLAKY)
    seqs = _seed_failures(job)
    (job.folder / "broken").unlink()
    (job.folder / "setup-broken").touch()
    replay = _run(job, "--retry-failed", "db=prod")
    assert replay.returncode == 1, replay.stderr
    assert "setup_worker" in replay.stderr
    assert _failed_seqs(job.failures_path) == seqs


def test_setup_worker_gets_the_arguments_under_retry_failed(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(FLAKY)
    _seed_failures(job)
    (job.folder / "broken").unlink()
    (job.folder / "setup-args").unlink()
    replay = _run(job, "--retry-failed", "db=prod")
    assert replay.returncode == 0, replay.stderr
    assert job.failures() == []
    seen = (job.folder / "setup-args").read_text().splitlines()
    assert seen and all(line == "[('db', 'prod')]" for line in seen)


def test_a_replay_that_fixes_half_keeps_the_other_half(make_job: Callable[[str], Job]) -> None:
    job = make_job(FLAKY.replace("job % 2 and", "job % 4 == 1 and"))
    (job.folder / "broken").touch()
    first = _run(job, "--retries", "0")
    assert first.returncode == 1, first.stderr
    assert _failed_seqs(job.failures_path) == list(range(1, 40, 4))
    job.module.write_text(FLAKY.replace("job % 2 and", "job % 8 == 1 and"))
    replay = _run(job, "--retry-failed", "--retries", "0")
    assert replay.returncode == 1, replay.stderr
    assert _failed_seqs(job.failures_path) == list(range(1, 40, 8))


ONE_IN_A_HUNDRED = """
import os, time

N = int(os.environ["TM_N"])
HERE = os.path.dirname(os.path.abspath(__file__))


def get_jobs(last=0, **kwargs):
    yield from range(int(last), N)


def handle_job(job):
    time.sleep(0.0005)
    if job % 100 == 7 and not os.path.exists(os.path.join(HERE, "fixed")):
        raise ValueError("bad row %d" % job)
"""


def test_a_resume_after_kill_records_each_failure_once_and_counts_once(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(ONE_IN_A_HUNDRED)
    n = 30_000
    args = ("1", "--state-file", str(job.state), "--retries", "0", "--checkpoint-every", "0.2")
    proc = job.start(*args, TM_N=str(n))
    try:
        wait_until(lambda: len(job.failures()) >= 60, 40, "failures to be recorded")
        wait_until(lambda: job.checkpoint()["watermark"] > 0, 40, "a checkpoint with progress")
    finally:
        kill_group(proc)
        proc.communicate(timeout=10)
    resumed = job.run(*args, "--resume", TM_N=str(n), timeout=60)
    assert resumed.returncode == 1, resumed.stderr
    seqs = [int(str(r["seq"])) for r in job.failures()]
    assert sorted(seqs) == list(range(7, n, 100))  # each failing job once
    state = job.checkpoint()
    assert (state["done"], state["failed"]) == (n - n // 100, n // 100)
    (job.folder / "fixed").touch()
    replay = job.run("1", "--state-file", str(job.state), "--retry-failed", TM_N=str(n))
    assert replay.returncode == 0, replay.stderr
    assert job.failures() == []
    state = job.checkpoint()
    assert (state["done"], state["failed"]) == (n, 0)
