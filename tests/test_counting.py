"""count_jobs() runs in the background: the jobs start at once, the total arrives later."""

from __future__ import annotations

import json
from collections.abc import Callable

from conftest import LEDGER_MODULE, Job

SLOW_COUNT = (
    LEDGER_MODULE
    + """
def count_jobs(**kwargs):
    time.sleep(float(os.environ.get("TM_COUNT_SLEEP", "0")))
    if os.environ.get("TM_COUNT_FAILS"):
        raise ConnectionError("count refused")
    with open(os.path.join(LEDGER, "..", "counted"), "w") as f:
        f.write("yes")
    return N
"""
)


def _statuses(stderr: str) -> list[dict[str, object]]:
    lines = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [d for d in lines if d.get("event") == "status"]


def test_a_slow_count_does_not_hold_the_run(make_job: Callable[[str], Job]) -> None:
    job = make_job(SLOW_COUNT)
    result = job.run("2", TM_N="300", TM_COUNT_SLEEP="120")
    assert result.returncode == 0, result.stderr
    assert set(job.counts()) == set(range(300))
    assert not (job.folder / "counted").exists()  # the run ended first; the count was stopped


def test_the_total_arrives_and_shows_in_status_lines(make_job: Callable[[str], Job]) -> None:
    job = make_job(SLOW_COUNT)
    args = ("2", "--log-every", "0.05", "--log-format", "json")
    result = job.run(*args, TM_N="400", TM_SLEEP="0.005")
    assert result.returncode == 0, result.stderr
    totals = [s["total"] for s in _statuses(result.stderr)]
    assert 400 in totals
    assert (job.folder / "counted").exists()


def test_a_failing_count_is_a_warning(make_job: Callable[[str], Job]) -> None:
    job = make_job(SLOW_COUNT)
    result = job.run("2", TM_N="200", TM_COUNT_FAILS="1", TM_SLEEP="0.002")
    assert result.returncode == 0, result.stderr
    assert "count_jobs() failed (ConnectionError('count refused'))" in result.stderr
    assert set(job.counts()) == set(range(200))


def test_limit_is_the_total_when_nothing_else_is_known(job: Job) -> None:
    args = ("2", "--limit", "150", "--log-every", "0.05", "--log-format", "json")
    result = job.run(*args, TM_N="1000", TM_SLEEP="0.005")
    assert result.returncode == 0, result.stderr
    assert {s["total"] for s in _statuses(result.stderr)} == {150}
