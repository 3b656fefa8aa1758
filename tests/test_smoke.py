"""The shortest path through the real CLI: every job runs exactly once."""

from conftest import Job


def test_every_job_runs_exactly_once(job: Job) -> None:
    result = job.run("2", "--threads", "2", TM_N="5000")
    assert result.returncode == 0, result.stderr
    counts = job.counts()
    assert sorted(counts) == list(range(5000))
    assert set(counts.values()) == {1}
    state = job.checkpoint()
    assert state["finished"] is True and state["watermark"] == 5000 and state["done"] == 5000
