"""setup_worker / teardown_worker through the real CLI: async hooks on the worker's asyncio
loop (issue 13, item 3), and a failing setup reported once, whole (item 7)."""

from __future__ import annotations

from collections.abc import Callable

from conftest import LEDGER_MODULE, Job

ASYNC_HOOKS_MODULE = (
    LEDGER_MODULE
    + """
import asyncio

_state = {}


async def setup_worker(tag):
    await asyncio.sleep(0)
    # What an AsyncConnectionPool does: bind itself to the running loop.
    _state["loop"] = asyncio.get_running_loop()
    _state["tag"] = tag
    with open(os.path.join(LEDGER, "..", "setups"), "a") as f:
        f.write("%d %s\\n" % (os.getpid(), tag))


async def handle_job(job):
    assert asyncio.get_running_loop() is _state["loop"], "not the setup's loop"
    await asyncio.sleep(0)
    record(job)


async def teardown_worker():
    assert asyncio.get_running_loop() is _state["loop"]
    with open(os.path.join(LEDGER, "..", "teardowns"), "a") as f:
        f.write("%d\\n" % os.getpid())
"""
).replace("def get_jobs(last=0, **kwargs)", "def get_jobs(last=0, tag=None)")


def test_async_setup_and_teardown_run_on_the_workers_loop(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(ASYNC_HOOKS_MODULE)
    result = job.run("2", "--threads", "8", "tag=green", TM_N="500")
    assert result.returncode == 0, result.stderr
    assert "never awaited" not in result.stderr
    assert sorted(job.counts()) == list(range(500)) and set(job.counts().values()) == {1}
    setups = (job.folder / "setups").read_text().splitlines()
    assert len(setups) == 2 and all(line.endswith(" green") for line in setups), setups
    teardowns = (job.folder / "teardowns").read_text().split()
    assert sorted(teardowns) == sorted(line.split()[0] for line in setups)


def test_an_async_setup_with_a_sync_handler_is_refused_at_start(
    make_job: Callable[[str], Job],
) -> None:
    source = LEDGER_MODULE + "\nasync def setup_worker():\n    pass\n"
    job = make_job(source)
    result = job.run("2", TM_N="10")
    assert result.returncode == 2, result.stderr
    assert "setup_worker is async def, but handle_job is not async def" in result.stderr
    assert "Traceback" not in result.stderr
    assert not job.counts()


def test_an_async_teardown_with_handle_batch_is_refused_at_start(
    make_job: Callable[[str], Job],
) -> None:
    source = LEDGER_MODULE + (
        "\ndef handle_batch(jobs):\n    pass\n\nasync def teardown_worker():\n    pass\n"
    )
    job = make_job(source)
    result = job.run("2", TM_N="10")
    assert result.returncode == 2, result.stderr
    assert "teardown_worker is async def, but the module has handle_batch" in result.stderr


SETUP_FAILS_MODULE = (
    LEDGER_MODULE
    + """
def connect(dsn):
    raise ConnectionError("could not connect to %s:\\nis the server running?" % dsn)


def setup_worker():
    connect("db.invalid")
"""
)


def test_a_failing_setup_is_reported_once_with_the_users_traceback(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(SETUP_FAILS_MODULE)
    result = job.run("2", TM_N="50")
    err = result.stderr
    assert result.returncode == 1, err
    assert err.count("Traceback (most recent call last)") == 1, err
    assert err.count("could not connect to db.invalid") == 1, err
    assert "could not start: setup_worker raised:\n    Traceback" in err, err
    assert (
        "    ConnectionError: could not connect to db.invalid:\n    is the server running?" in err
    )
    assert "in setup_worker\n" in err and "taskmaster/local" not in err, err  # trimmed
    assert "workers in a row could not start" in err and "--resume" in err
    assert not job.counts()


PRINTS_MODULE = (
    LEDGER_MODULE
    + """
import sys


def handle_job(job):
    out = sys.stderr if job % 2 else sys.stdout
    print("line", job, "x" * 200, "end", file=out)
    record(job)
"""
)


def test_worker_prints_never_mix_within_a_line(make_job: Callable[[str], Job]) -> None:
    """Two workers printing to the same pipes: block buffering would cut lines at 8 KiB."""
    job = make_job(PRINTS_MODULE)
    result = job.run("2", "--threads", "2", TM_N="4000")
    assert result.returncode == 0, result.stderr
    printed = [ln for ln in result.stdout.splitlines() + result.stderr.splitlines()
               if "line" in ln or "end" in ln]  # fmt: skip
    expected = {f"line {i} {'x' * 200} end" for i in range(4000)}
    assert len(printed) == 4000 and set(printed) == expected
