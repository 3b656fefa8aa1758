"""Bad input through the real CLI: exit code 2, one clear paragraph on stderr, no traceback
of ours; and the checkpoint rules at the command line (--resume, --reset, the lock, names)."""

from __future__ import annotations

import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from conftest import LEDGER_MODULE, Job, wait_until

from taskmaster.store import checkpoint

# The ledger module, plus: job 0 waits for a gate file (so a run can be held mid-way without
# timing), job BAD fails unless TM_FIXED is set, and get_jobs can raise at TM_RAISE_AT.
MODULE = (
    LEDGER_MODULE
    + """
GATE = os.environ.get("TM_GATE", "")
WAITING = os.environ.get("TM_WAITING", "")
BAD = int(os.environ.get("TM_BAD", "-1"))
RAISE_AT = int(os.environ.get("TM_RAISE_AT", "-1"))


def get_jobs(last=0, **kwargs):
    for i in range(int(last), N):
        if i == RAISE_AT and not os.environ.get("TM_FIXED"):
            raise ValueError("row %d is unreadable" % i)
        yield i


def handle_job(job):
    if GATE and job == 0:
        open(WAITING, "w").close()
        deadline = time.monotonic() + 30
        while not os.path.exists(GATE):
            if time.monotonic() > deadline:
                raise RuntimeError("the test never opened the gate")
            time.sleep(0.005)
    if job == BAD and not os.environ.get("TM_FIXED"):
        raise ValueError("job %d is bad" % job)
    record(job)
"""
)


@pytest.fixture
def cli(make_job: Callable[[str], Job]) -> Job:
    return make_job(MODULE)


def assert_refused(result: subprocess.CompletedProcess[str], *says: str, code: int = 2) -> str:
    """Exit ``code``, every ``says`` on stderr, one paragraph, and no traceback."""
    err = result.stderr
    assert result.returncode == code, f"exit {result.returncode}\n{err}"
    assert "Traceback" not in err, err
    for text in says:
        assert text in err, f"{text!r} not in:\n{err}"
    start = err.find("taskmaster: error:")
    if start < 0:
        start = err.index("Error:")  # click's own usage errors
    message = err[start:].strip()
    assert "\n\n" not in message, f"more than one paragraph:\n{err}"
    return message


def run_cli(job: Job, *argv: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m taskmaster ARGV...`` in the job's folder, with any target."""
    return subprocess.run(
        [sys.executable, "-m", "taskmaster", *argv],
        cwd=job.folder,
        env={**job.env, **env},
        capture_output=True,
        text=True,
        timeout=45,
        stdin=subprocess.DEVNULL,
    )


def ledger_empty(job: Job) -> bool:
    return not any(job.ledger.iterdir())


# -- the target --------------------------------------------------------------------------------


def test_missing_file(cli: Job) -> None:
    assert_refused(run_cli(cli, "nope.py", "1"), "no such file: nope.py")


def test_missing_dotted_module(cli: Job) -> None:
    assert_refused(run_cli(cli, "no_such_pkg.jobs"), "no module named 'no_such_pkg.jobs'")


def test_module_raising_on_import_shows_the_users_traceback(
    make_job: Callable[[str], Job],
) -> None:
    job = make_job(
        """
        import os

        def connect():
            raise RuntimeError("kaboom at import")

        connect()
        """
    )
    result = job.run("1")
    assert result.returncode == 2, result.stderr
    err = result.stderr
    assert "taskmaster: error: importing" in err and "jobs.py failed" in err
    assert "Traceback (most recent call last)" in err
    assert "RuntimeError: kaboom at import" in err
    frames = re.findall(r'File "([^"]+)", line \d+, in (\S+)', err)
    assert frames == [(str(job.module), "<module>"), (str(job.module), "connect")], err
    assert "importlib" not in err


def test_module_with_a_syntax_error(make_job: Callable[[str], Job]) -> None:
    job = make_job("def get_jobs(:\n    pass\n")
    result = job.run("1")
    assert result.returncode == 2, result.stderr
    assert "SyntaxError" in result.stderr and "jobs.py" in result.stderr
    assert "importlib" not in result.stderr and "/taskmaster/" not in result.stderr


@pytest.mark.parametrize(
    ("source", "missing", "has"),
    [
        ("def handle_job(job): pass\ndef other(): pass\n", "get_jobs", "handle_job, other"),
        ("def get_jobs(last=0): yield 1\ndef _private(): pass\n", "handle_job", "get_jobs"),
        ("x = 1\n", "get_jobs", "no functions"),
    ],
)
def test_module_missing_a_function(
    make_job: Callable[[str], Job], source: str, missing: str, has: str
) -> None:
    job = make_job(source)
    message = assert_refused(job.run("1"), f"no function '{missing}'", f"(it has: {has})")
    assert f"--{missing.replace('_', '-')} NAME" in message
    assert "_private" not in message


def test_function_that_is_not_callable(make_job: Callable[[str], Job]) -> None:
    job = make_job("get_jobs = [1, 2]\ndef handle_job(job): pass\n")
    assert_refused(job.run("1"), "get_jobs is a list, not a function")


# -- options and arguments ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--workers", "0"], "--workers must be a whole number from 1 to 1024, got 0"),
        (["0"], "--workers must be a whole number from 1 to 1024, got 0"),
        (["--threads", "0"], "--threads must be a whole number from 1 to 4096, got 0"),
        (["1", "--size", "0"], "--size must be"),
        (["1", "--retries", "-1"], "--retries must be"),
        (["1", "--checkpoint-every", "0"], "--checkpoint-every must be"),
        (["1", "--resume", "--reset"], "--resume and --reset contradict each other"),
        (["--workers", "x"], "'x' is not a valid integer"),
        (["foo"], "'foo' is neither a worker count nor KEY=VALUE"),
        (["2", "foo"], "argument 'foo' is not KEY=VALUE"),
        (["2", "=x"], "argument '=x' is not KEY=VALUE"),
        (["2", "1x=3"], "argument '1x=3' is not KEY=VALUE"),
        (["2", "a=1", "a=2"], "a= is given twice"),
        (["2", "last=3"], "last= is reserved"),
        (["3", "--workers", "4"], "workers given twice: 3 as an argument and --workers 4"),
        (["1", "--bogus"], "No such option '--bogus'"),
    ],
    ids=lambda v: " ".join(v) if isinstance(v, list) else None,
)
def test_bad_usage(cli: Job, args: list[str], says: str) -> None:
    result = cli.run(*args)
    assert_refused(result, says)
    assert ledger_empty(cli)
    assert not cli.state.exists(), "a refused run must not leave a checkpoint"


def test_kwarg_get_jobs_does_not_take(make_job: Callable[[str], Job]) -> None:
    job = make_job(
        LEDGER_MODULE
        + "\ndef get_jobs(last=0, table='users'):\n    yield from range(int(last), 10)\n"
    )
    result = job.run("1", "tabel=orders")
    assert_refused(result, "tabel", "get_jobs")
    assert ledger_empty(job)
    assert list(job.folder.glob("*.state.json")) == [], "nothing ran: no checkpoint to trip on"


def test_same_workers_positional_or_option(cli: Job) -> None:
    for args in (["3"], ["--workers", "3"], ["3", "--workers", "3"]):
        gate, waiting = cli.folder / "gate", cli.folder / "waiting"
        proc = cli.start(*args, "--reset", TM_N="20", TM_GATE=str(gate), TM_WAITING=str(waiting))
        try:
            wait_until(lambda p=proc, w=waiting: w.exists() or p.poll() is not None, 20, "job 0")
            workers = psutil.Process(proc.pid).children()
            assert len(workers) == 3, f"{args}: {workers}"
        finally:
            gate.touch()
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 0, err
        gate.unlink()
        waiting.unlink()


# -- the state file ----------------------------------------------------------------------------


def _corrupt_variants(valid: bytes) -> dict[str, bytes]:
    flipped = bytearray(valid)
    flipped[valid.index(b'"watermark"') + 13] ^= 1
    return {
        "text": b"hello, I am not a checkpoint\n",
        "empty": b"",
        "other-json": b'{"watermark": 3}\n',
        "truncated": valid[: len(valid) // 2],
        "bit-flip": bytes(flipped),
    }


@pytest.mark.parametrize("variant", ["text", "empty", "other-json", "truncated", "bit-flip"])
@pytest.mark.parametrize("flag", ["--resume", None])
def test_bad_state_file_is_refused_and_kept(cli: Job, variant: str, flag: str | None) -> None:
    valid = checkpoint.encode(checkpoint.State(target="jobs:get_jobs", kwargs={}, watermark=4))
    data = _corrupt_variants(valid)[variant]
    cli.state.write_bytes(data)
    result = cli.run("1", *([flag] if flag else []), TM_N="10")
    assert_refused(result, "jobs.state.json", "--reset")
    assert cli.state.read_bytes() == data, "a corrupt checkpoint must never be overwritten"
    assert ledger_empty(cli)
    assert [p.name for p in cli.folder.iterdir() if ".tmp." in p.name] == []


def test_reset_recovers_from_a_corrupt_state_file(cli: Job) -> None:
    cli.state.write_bytes(b"\x00garbage")
    assert_refused(cli.run("1", "--resume", TM_N="10"), "not valid JSON")
    result = cli.run("1", "--reset", TM_N="10")
    assert result.returncode == 0, result.stderr
    assert checkpoint.read(str(cli.state)) is not None
    assert sorted(cli.counts()) == list(range(10))


def test_state_file_of_other_kwargs_or_target(cli: Job) -> None:
    assert cli.run("1", "--state-file", "shared.json", "table=users", TM_N="10").returncode == 0
    shared = cli.folder / "shared.json"
    before = shared.read_bytes()
    result = cli.run("1", "--state-file", "shared.json", "table=orders", "--resume", TM_N="10")
    assert_refused(result, "shared.json belongs to another run", "table=users", "table=orders")
    other = cli.folder / "other.py"
    other.write_text(cli.module.read_text())
    result = run_cli(
        cli, str(other), "1", "--state-file", "shared.json", "table=users", "--resume", TM_N="10"
    )
    assert_refused(result, "belongs to another run", "jobs:get_jobs", "other:get_jobs")
    assert shared.read_bytes() == before
    assert sorted(cli.counts()) == list(range(10)) and set(cli.counts().values()) == {1}


def test_existing_checkpoint_needs_resume_or_reset(cli: Job) -> None:
    result = cli.run("1", TM_N="50", TM_RAISE_AT="20")
    assert result.returncode == 1, result.stderr
    before = cli.state.read_bytes()
    message = assert_refused(cli.run("1", TM_N="50"), "a checkpoint exists at")
    assert "jobs.state.json" in message and "watermark 20" in message and "20 done" in message
    assert "--resume" in message and "--reset" in message
    assert "1970" not in message
    assert cli.state.read_bytes() == before
    assert len(cli.counts()) == 20


def test_a_run_that_never_pulled_does_not_block_the_next(make_job: Callable[[str], Job]) -> None:
    job = make_job(
        LEDGER_MODULE + "\ndef get_jobs(last=0):\n    raise ConnectionError('database is down')\n"
    )
    result = job.run("1")
    assert result.returncode == 1, result.stderr
    assert "ConnectionError: database is down" in result.stderr
    # The checkpoint it left records no progress: the same command runs again, no flag needed.
    again = job.run("1")
    assert again.returncode == 1 and "database is down" in again.stderr, again.stderr
    assert "a checkpoint exists" not in again.stderr
    result = job.run("1", "--resume", TM_N="10")
    assert result.returncode == 1 and "database is down" in result.stderr


def test_refusal_names_when_the_checkpoint_was_written(cli: Job) -> None:
    assert cli.run("1", "--limit", "10", TM_N="100").returncode == 0
    message = assert_refused(cli.run("1", TM_N="100"), "a checkpoint exists at", "watermark 10")
    assert "1970" not in message, "the checkpoint must carry its time"


def test_resume_without_a_checkpoint_starts_from_the_beginning(cli: Job) -> None:
    result = cli.run("2", "--resume", TM_N="100")
    assert result.returncode == 0, result.stderr
    assert "no checkpoint at" in result.stderr and "starting from the beginning" in result.stderr
    assert sorted(cli.counts()) == list(range(100)) and set(cli.counts().values()) == {1}


def test_resume_of_a_finished_run_does_nothing(cli: Job) -> None:
    assert cli.run("2", TM_N="100").returncode == 0
    before = cli.state.read_bytes()
    result = cli.run("2", "--resume", TM_N="100")
    assert result.returncode == 0, result.stderr
    assert "already finished; nothing to do" in result.stderr
    assert "Traceback" not in result.stderr
    assert cli.state.read_bytes() == before
    assert set(cli.counts().values()) == {1}


def test_resume_of_a_finished_run_with_failures_does_nothing(cli: Job) -> None:
    assert cli.run("1", "--retries", "0", TM_N="10", TM_BAD="3").returncode == 1
    before = cli.failures_path.read_bytes()
    result = cli.run("1", "--resume", TM_N="10", TM_BAD="3")
    assert result.returncode == 0, result.stderr
    assert "nothing to do" in result.stderr
    assert cli.failures_path.read_bytes() == before
    assert sum(cli.counts().values()) == 9


def test_reset_deletes_checkpoint_and_failures(cli: Job) -> None:
    first = cli.run("1", "--retries", "0", TM_N="10", TM_BAD="3")
    assert first.returncode == 1, first.stderr
    assert [f["seq"] for f in cli.failures()] == [3]
    started = cli.checkpoint()["started"]
    result = cli.run("1", "--reset", TM_N="10", TM_BAD="3", TM_FIXED="1")
    assert result.returncode == 0, result.stderr
    assert cli.failures() == []
    state = cli.checkpoint()
    assert state["runs"] == 1 and state["started"] != started
    assert state["done"] == 10 and state["failed"] == 0 and state["finished"] is True
    counts = cli.counts()
    assert counts[3] == 1 and all(counts[i] == 2 for i in range(10) if i != 3)


def test_second_run_on_the_same_state_file_is_refused(cli: Job) -> None:
    gate, waiting = cli.folder / "gate", cli.folder / "waiting"
    env = {"TM_N": "200", "TM_GATE": str(gate), "TM_WAITING": str(waiting)}
    first = cli.start("2", **env)
    try:
        wait_until(lambda: waiting.exists() or first.poll() is not None, 20, "the first run")
        assert first.poll() is None
        second = cli.run("2", "--resume", **env)
        assert_refused(second, "another taskmaster run", f"pid {first.pid}", code=75)
        assert "jobs.state.json" in second.stderr
    finally:
        gate.touch()
        _, err = first.communicate(timeout=30)
    assert first.returncode == 0, err
    assert sorted(cli.counts()) == list(range(200)) and set(cli.counts().values()) == {1}
    assert cli.checkpoint()["finished"] is True


# -- default names -----------------------------------------------------------------------------


def test_default_state_file_names(cli: Job) -> None:
    assert cli.run("1", TM_N="5").returncode == 0
    assert cli.state.exists()
    assert cli.run("1", "a=1", "b=2", TM_N="5").returncode == 0
    hashed = sorted(cli.folder.glob("jobs-*.state.json"))
    assert len(hashed) == 1 and re.fullmatch(r"jobs-[0-9a-f]{8}\.state\.json", hashed[0].name)
    # the same kwargs in another order are the same run: its checkpoint exists
    assert_refused(cli.run("1", "b=2", "a=1", TM_N="5"), hashed[0].name)
    assert cli.run("1", "a=1", "b=3", TM_N="5").returncode == 0
    names = {p.name for p in cli.folder.glob("jobs*.state.json")}
    assert len(names) == 3, names
    doc = checkpoint.read(str(hashed[0]))
    assert doc is not None and doc.kwargs == {"a": "1", "b": "2"}


def test_default_failures_file_sits_beside_the_state_file(cli: Job) -> None:
    result = cli.run("1", "a=1", "--retries", "0", TM_N="5", TM_BAD="2")
    assert result.returncode == 1, result.stderr
    (state,) = cli.folder.glob("jobs-*.state.json")
    failures = state.with_name(state.name.replace(".state.json", ".failures.jsonl"))
    assert failures.exists() and failures.name in result.stderr
    assert not cli.failures_path.exists()


def test_state_file_option(cli: Job, tmp_path: Path) -> None:
    target = tmp_path / "sub" / "mine.json"
    target.parent.mkdir()
    result = cli.run("1", "--state-file", str(target), "--retries", "0", TM_N="5", TM_BAD="1")
    assert result.returncode == 1, result.stderr
    assert checkpoint.read(str(target)) is not None
    assert (tmp_path / "sub" / "mine.failures.jsonl").exists()
    assert not cli.state.exists()
