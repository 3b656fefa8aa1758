"""The features users expect (issue 6) through the real CLI: status lines, tm-status,
--limit, --dry-run, handle_batch, async handlers, setup_worker; and the --rate bucket."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable

from conftest import LEDGER_MODULE, Job, wait_until

from taskmaster.core.ratelimit import TokenBucket


def tm_status(job: Job, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            "from taskmaster.cli.run import status_command; status_command()",
            *args,
        ],
        cwd=job.folder,
        env=job.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def assert_exactly_once(job: Job, n: int) -> None:
    counts = job.counts()
    assert sorted(counts) == list(range(n)), "some jobs never ran"
    assert set(counts.values()) == {1}, "some jobs ran twice"


def test_json_status_lines_and_summary(job: Job) -> None:
    result = job.run(
        "2", "--log-format", "json", "--log-every", "0.05", "--total", "400",
        TM_N="400", TM_SLEEP="0.002",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    statuses = [e for e in events if e["event"] == "status"]
    assert statuses, result.stderr
    assert {"done", "failed", "in_flight", "rate", "watermark", "eta", "total"} <= set(statuses[0])
    assert statuses[0]["total"] == 400
    summary = events[-1]
    assert summary["event"] == "summary" and summary["done"] == 400 and summary["exit_code"] == 0


def test_plain_status_lines_show_the_eta_when_the_total_is_known(job: Job) -> None:
    result = job.run("2", "--log-every", "0.05", "--total", "300", TM_N="300", TM_SLEEP="0.002")
    assert result.returncode == 0, result.stderr
    lines = [ln for ln in result.stderr.splitlines() if ln.startswith("taskmaster: done")]
    assert lines and all("/300" in ln and "ETA" in ln for ln in lines), result.stderr


def test_tm_status_of_a_running_and_a_finished_run(make_job: Callable[[str], Job]) -> None:
    job = make_job(
        LEDGER_MODULE + "\ndef handle_job(job):\n    if job == 3:\n        raise KeyError(job)\n"
        "    time.sleep(SLEEP)\n    record(job)\n"
    )
    proc = job.start(
        "1", "--retries", "0", "--checkpoint-every", "0.05", TM_N="300", TM_SLEEP="0.01"
    )
    try:
        wait_until(lambda: job.state.exists() and job.checkpoint()["watermark"] > 5, 20, "progress")
        running = tm_status(job)
        assert running.returncode == 0, running.stderr
        assert f"running (pid {proc.pid})" in running.stdout, running.stdout
    finally:
        proc.communicate(timeout=30)
    assert proc.returncode == 1  # job 3 failed
    finished = tm_status(job, str(job.state))
    assert finished.returncode == 0, finished.stderr
    out = finished.stdout
    assert "finished" in out and "watermark    300" in out and "KeyError" in out, out


def test_tm_status_without_a_state_file_is_a_clear_error(job: Job) -> None:
    result = tm_status(job)
    assert result.returncode == 2 and "no *.state.json" in result.stderr


def test_limit_then_resume_runs_each_job_once(job: Job) -> None:
    first = job.run("2", "--limit", "120", TM_N="500")
    assert first.returncode == 0, first.stderr
    assert sorted(job.counts()) == list(range(120))
    assert job.checkpoint()["limit"] == 120 and job.checkpoint()["finished"] is False
    second = job.run("2", "--resume", TM_N="500")
    assert second.returncode == 0, second.stderr
    assert_exactly_once(job, 500)


def test_dry_run_prints_jobs_and_runs_none(job: Job) -> None:
    result = job.run("2", "--dry-run", "--limit", "3", TM_N="500")
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["0\t0", "1\t1", "2\t2"]
    assert not job.counts() and not job.state.exists()


BATCH_MODULE = (
    LEDGER_MODULE
    + """
def handle_batch(jobs):
    with open(os.path.join(LEDGER, "..", "batches"), "a") as f:
        f.write("%d\\n" % len(jobs))
    if 77 in jobs:
        raise ValueError("a batch with 77")
    for job in jobs:
        record(job)

def handle_job(job):  # the fallback for a batch that raised
    if job == 77:
        raise ValueError("77 itself")
    record(job)
"""
)


def test_handle_batch_and_its_per_job_fallback(make_job: Callable[[str], Job]) -> None:
    job = make_job(BATCH_MODULE)
    result = job.run("2", "--batch-size", "25", "--retries", "0", TM_N="200")
    assert result.returncode == 1, result.stderr
    sizes = (job.folder / "batches").read_text().split()
    assert sizes == ["25"] * 8
    counts = job.counts()
    assert sorted(counts) == [i for i in range(200) if i != 77] and set(counts.values()) == {1}
    assert [f["seq"] for f in job.failures()] == [77]
    assert job.failures()[0]["error"] == "ValueError: 77 itself"


ASYNC_MODULE = (
    LEDGER_MODULE
    + """
import asyncio

async def handle_job(job):
    await asyncio.sleep(0.001)
    record(job)
"""
)


def test_async_handler(make_job: Callable[[str], Job]) -> None:
    job = make_job(ASYNC_MODULE)
    result = job.run("2", "--threads", "16", TM_N="600")
    assert result.returncode == 0, result.stderr
    assert_exactly_once(job, 600)


SETUP_MODULE = (
    LEDGER_MODULE
    + """
def setup_worker(tag):
    with open(os.path.join(LEDGER, "..", "setups"), "a") as f:
        f.write("%d %s\\n" % (os.getpid(), tag))
"""
)


def test_setup_worker_runs_once_per_worker_with_the_arguments(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(
        SETUP_MODULE.replace("def get_jobs(last=0, **kwargs)", "def get_jobs(last=0, tag=None)")
    )
    result = job.run("2", "--threads", "3", "tag=blue", TM_N="400")
    assert result.returncode == 0, result.stderr
    setups = (job.folder / "setups").read_text().split("\n")[:-1]
    pids = [line.split()[0] for line in setups]
    assert len(pids) == 2 and len(set(pids)) == 2, setups
    assert all(line.endswith(" blue") for line in setups)
    ran_in = {p.name.split("-")[0] for p in job.ledger.iterdir()}
    assert ran_in <= set(pids)


def test_token_bucket_caps_job_starts_at_the_rate() -> None:
    now = 0.0
    bucket = TokenBucket(200.0, now)
    started = 0
    while now < 10.0:  # a loop that hands out batches whenever the bucket allows
        while bucket.ready(now):
            bucket.take(bucket.batch, now)
            started += bucket.batch
        now = round(now + 0.001, 6)
    assert 200 * 10 <= started <= 200 * 10 + 2 * bucket.batch
    assert bucket.wait(now) <= bucket.batch / 200


def test_tm_status_indents_the_lines_of_a_multi_line_error(make_job: Callable[[str], Job]) -> None:
    job = make_job(
        LEDGER_MODULE + "\ndef handle_job(job):\n    if job == 3:\n"
        "        raise ValueError('column x does not exist\\nLINE 1: SELECT x\\n  ^')\n"
    )
    result = job.run("1", "--retries", "0", TM_N="10")
    assert result.returncode == 1, result.stderr
    out = tm_status(job, str(job.state)).stdout
    row = next(i for i, ln in enumerate(out.splitlines()) if "ValueError" in ln)
    following = out.splitlines()[row + 1 : row + 3]
    assert following == [" " * 14 + "LINE 1: SELECT x", " " * 14 + "  ^"], out
