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
