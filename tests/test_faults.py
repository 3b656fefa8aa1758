"""Faults in jobs, workers, the generator and the state folder, through the real CLI.

The crash matrix is one table in the style of loky's and CPython's deadlock tests: each row
makes job 7 (of 30) misbehave one way and states what the run must end with.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import socket
import struct
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest
from conftest import Job, kill_group, wait_until
from faultlib import (
    FAULT_MODULE,
    assert_checkpoint_safe,
    assert_no_loss,
    assert_no_stale_temps,
    failed_seqs,
    ledger_lines,
    run_wrapped,
    start_wrapped,
    started,
    wait_for_run,
    without_dac_override,
)

from taskmaster.store import checkpoint

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
    "hang-holding-the-gil": Fault(
        "hang_holding_the_gil",
        (*ONE_BY_ONE, "--job-timeout", "1", "--retries", "0"),
        failures=((BAD, "WorkerDied: ", 1),),
        runs=1,
        says=("SIGALRM", "--job-timeout watchdog"),
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


# -- workers killed from outside ------------------------------------------------------------


def test_random_worker_kills_lose_nothing(fault_job: Job) -> None:
    job = fault_job
    seed = int(os.environ.get("TM_SEED") or random.randrange(2**32))
    print(f"kill schedule seed {seed}; replay with TM_SEED={seed}")
    rng = random.Random(seed)
    n, kills = 3000, 8
    fast = job.folder / "fast"
    slow = {"TM_N": str(n), "TM_SLEEP": "0.002", "TM_FAST_FILE": str(fast)}
    killed: list[int] = []
    with started(job, "2", "--threads", "2", **slow) as proc:
        progress = 0
        for _ in range(kills):
            progress += rng.randrange(50, 250)
            wait_until(
                lambda p=progress: ledger_lines(job) >= p, 20, f"{progress} jobs, seed {seed}"
            )
            victim = rng.choice(sorted(live_workers(job, proc)))
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            wait_until(
                lambda v=victim: len(live_workers(job, proc)) == 2 and v not in job.workers(proc),
                10,
                f"worker {victim} to be replaced (seed {seed})",
            )
        fast.touch()  # the rest runs at full speed
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, f"seed {seed}\n{err}"
    for pid in killed:
        assert f"(pid {pid}) was killed by SIGKILL" in err, f"seed {seed}\n{err}"
    assert_no_loss(job, n)
    assert job.checkpoint()["finished"] is True


def live_workers(job: Job, proc: subprocess.Popen[str]) -> list[int]:
    alive = []
    for pid in job.workers(proc):
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                alive.append(pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def files_closed(pid: int) -> bool:
    """True once every thread of ``pid`` exited. A zombie main thread is not enough: the
    other threads may still be exiting, and their open files keep the pipe from reporting
    the death."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        return zombie and len(os.listdir(f"/proc/{pid}/task")) <= 1
    except FileNotFoundError:
        return True


def test_killing_idle_workers_while_get_jobs_is_slow(fault_job: Job) -> None:
    """Workers starve while get_jobs blocks; one is killed each time (a shared queue would
    wedge the survivors here). The run must go on when get_jobs does."""
    job = fault_job
    gates = [5, 10, 15, 20, 25]
    killed: list[int] = []
    gated = {"TM_N": "30", "TM_GATES": ",".join(map(str, gates))}
    # get_jobs blocks the parent's loop, so a job lost with the dead worker goes out again
    # only when it is due before the next gate blocks: no retry delay
    with started(job, "2", "--batch-size", "1", "--retry-delay", "0", **gated) as proc:
        for i, gate in enumerate(gates):
            wait_for_run(
                proc, lambda g=gate: len(job.counts()) >= g, 20, f"every job below {gate} to run"
            )
            victim = sorted(live_workers(job, proc))[i % 2]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)
            # dead before get_jobs goes on: the loop sees it at its next wait, not one gate later
            wait_until(lambda v=victim: files_closed(v), 10, f"worker {victim} to be gone")
            (job.folder / f"go-{gate}").touch()
        _, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    for pid in killed:
        assert f"(pid {pid}) was killed by SIGKILL" in err, err
    assert_no_loss(job, 30)


def test_a_worker_stuck_holding_the_gil_stalls_nothing_else(fault_job: Job) -> None:
    """No --job-timeout: the stuck worker stops reading its pipe. Big batches must not block
    the parent writing to it, or the other worker starves and Ctrl-C goes unheard."""
    job = fault_job
    stuck = {"TM_N": "400", "TM_PAD": "50000", "TM_FAULT": "hang_holding_the_gil", "TM_BAD": "3"}
    with started(job, "2", "--batch-size", "64", **stuck) as proc:  # batches of 3.2 MB
        wait_for_run(proc, lambda: len(job.counts()) >= 250, 20, "the other worker's jobs")
        kill_group(proc, signal.SIGINT)
        assert proc.stderr is not None
        assert "stopping" in proc.stderr.readline()
        kill_group(proc, signal.SIGINT)  # job 3 will never end: stop at once
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    assert_checkpoint_safe(job)
    resumed = job.run("2", "--resume", TM_N="400", TM_PAD="50000")
    assert resumed.returncode == 0, resumed.stderr
    assert_no_loss(job, 400)


def test_a_slow_get_jobs_is_no_job_timeout(fault_job: Job) -> None:
    """get_jobs pauses past --job-timeout while big batches are half written to the workers:
    the workers wait for the rest, and nobody's job timed out."""
    job = fault_job
    slow = {"TM_N": "200", "TM_PAD": "50000", "TM_GEN_PAUSE": "128:2"}
    result = job.run("2", "--batch-size", "64", "--job-timeout", "0.5", **slow)
    assert result.returncode == 0, result.stderr
    assert "worker" not in result.stderr, result.stderr
    counts = job.counts()
    assert sorted(counts) == list(range(200)) and set(counts.values()) == {1}


def test_job_timeout_charges_only_the_hung_job(fault_job: Job) -> None:
    """The other thread's job and the queued one die with the worker, uncharged: with
    --retries 0 a charge would fail them."""
    job = fault_job
    result = job.run(
        "1",
        "--threads",
        "2",
        "--batch-size",
        "1",
        "--retries",
        "0",
        "--job-timeout",
        "1",
        TM_N="12",
        TM_SLEEP="0.2",
        TM_FAULT="hang",
        TM_BAD="3",
    )
    assert result.returncode == 1, result.stderr
    assert [(r["seq"], str(r["error"]).split(":")[0]) for r in job.failures()] == [
        (3, "JobTimeout")
    ], result.stderr
    assert_no_loss(job, 12)


def test_workers_that_cannot_start_stop_the_run(fault_job: Job) -> None:
    """setup_worker raises in every new worker: the run must stop, not replace workers
    forever, and no job may be charged for it."""
    job = fault_job
    result = job.run("2", TM_N="50", TM_SETUP_FAILS="1")
    err = result.stderr
    assert result.returncode == 1, err
    assert "ConnectionError: the database is down" in err  # the user's traceback
    assert "could not start: setup_worker raised" in err
    assert "workers in a row could not start" in err and "--resume" in err
    assert job.failures() == [] and not job.counts()
    assert assert_checkpoint_safe(job) == 0
    resumed = job.run("2", "--resume", TM_N="50")
    assert resumed.returncode == 0, resumed.stderr
    counts = job.counts()
    assert sorted(counts) == list(range(50)) and set(counts.values()) == {1}


# -- retries and failure limits -------------------------------------------------------------


def test_max_failures_stops_the_run(fault_job: Job) -> None:
    job = fault_job
    n = 2000
    bad = ",".join(str(i) for i in range(100, n, 10))
    result = job.run(
        "2",
        "--retries",
        "0",
        "--max-failures",
        "3",
        TM_N=str(n),
        TM_SLEEP="0.001",
        TM_FAULT="raise",
        TM_BAD=bad,
    )
    assert result.returncode == 1, result.stderr
    assert "--max-failures 3" in result.stderr
    assert "Traceback" not in result.stderr
    assert 3 <= len(job.failures()) < len(bad.split(","))
    assert job.checkpoint()["finished"] is False
    assert len(job.counts()) < n, "the run did not stop"
    assert_checkpoint_safe(job)


def test_flaky_job_succeeds_on_its_retry(fault_job: Job) -> None:
    job = fault_job
    result = job.run(
        "2", "--retries", "1", "--retry-delay", "0.2", TM_N="50", TM_FAULT="flaky", TM_BAD="7"
    )
    assert result.returncode == 0, result.stderr
    assert job.failures() == []
    counts = job.counts()
    assert counts[7] == 2 and sorted(counts) == list(range(50))


def test_a_job_waiting_for_its_retry_holds_the_watermark(fault_job: Job) -> None:
    job = fault_job
    flaky = {"TM_N": "50", "TM_FAULT": "flaky", "TM_BAD": "7"}
    args = ("2", "--retries", "1", "--retry-delay", "1000", "--checkpoint-every", "0.05")
    with started(job, *args, **flaky) as proc:
        wait_until(lambda: len(job.counts()) == 50, 20, "every job to run once")
        kill_group(proc, signal.SIGINT)  # job 7 still waits for its retry
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, err
    # the final checkpoint came after every other job was done, and did not pass job 7
    assert assert_checkpoint_safe(job) <= 7
    result = job.run("2", "--resume", **flaky)
    assert result.returncode == 0, result.stderr
    assert job.failures() == [] and job.counts()[7] == 2
    assert_no_loss(job, 50)


# -- the state folder goes bad --------------------------------------------------------------


def test_read_only_state_folder_fails_before_any_job(fault_job: Job) -> None:
    prefix = without_dac_override()
    if prefix is None:
        pytest.skip("as root, file modes bind only under setpriv, which is missing or refused")
    job = fault_job
    folder = job.folder / "state"
    folder.mkdir()
    folder.chmod(0o555)
    path = folder / "jobs.state.json"
    result = run_wrapped(job, prefix, "2", "--state-file", str(path), TM_N="20")
    assert result.returncode == 74, result.stderr
    assert str(folder) in result.stderr and "writable" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
    assert not job.counts(), "jobs ran although the state folder is read-only"
    assert list(folder.iterdir()) == []


def test_state_folder_turned_read_only_mid_run(fault_job: Job) -> None:
    prefix = without_dac_override()
    if prefix is None:
        pytest.skip("as root, file modes bind only under setpriv, which is missing or refused")
    job = fault_job
    folder = job.folder / "state"
    folder.mkdir()
    path = folder / "jobs.state.json"
    args = ("2", "--state-file", str(path), "--checkpoint-every", "0.05")
    proc = start_wrapped(job, prefix, *args, **SLOW)
    try:
        wait_until(lambda: ledger_lines(job) >= 200, 20, "200 jobs done")
        folder.chmod(0o555)
        _, err = proc.communicate(timeout=30)
    finally:
        folder.chmod(0o755)
        if proc.poll() is None:
            kill_group(proc)
        proc.communicate()
    assert proc.returncode == 74, err
    assert f"writing the checkpoint {path} failed: Permission denied" in err, err
    assert "Traceback" not in err
    assert_checkpoint_safe(job)
    result = job.run(*args, "--resume", **SLOW)
    assert result.returncode == 0, result.stderr
    assert_no_loss(job, 3000)
    assert not [p.name for p in folder.iterdir() if ".tmp." in p.name]


def test_state_folder_deleted_mid_run(fault_job: Job) -> None:
    job = fault_job
    folder = job.folder / "state"
    folder.mkdir()
    path = folder / "jobs.state.json"
    with started(job, "2", "--state-file", str(path), "--checkpoint-every", "0.05", **SLOW) as p:
        wait_until(lambda: ledger_lines(job) >= 200, 20, "200 jobs done")
        # The run may write a checkpoint between rmtree's unlinks and its rmdir: try again.
        wait_until(
            lambda: shutil.rmtree(folder, ignore_errors=True) or not folder.exists(),
            10,
            "the state folder removed",
        )
        _, err = p.communicate(timeout=30)
    assert p.returncode == 74, err
    assert f"writing the checkpoint {path} failed: No such file or directory" in err, err
    assert "Traceback" not in err


@contextlib.contextmanager
def small_tmpfs(folder: Path) -> Iterator[None]:
    """A 64 KiB tmpfs mounted on ``folder`` (root only), unmounted afterwards."""
    folder.mkdir()
    mount = shutil.which("mount")
    if os.geteuid() != 0 or mount is None:
        pytest.skip("mounting a small tmpfs needs root")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(folder)])
    if done.returncode != 0:
        pytest.skip("mounting a tmpfs was refused here")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=True)


def fill(folder: Path) -> Path:
    """Fill the file system of ``folder`` to the last byte with one ballast file."""
    ballast = folder / "ballast"
    with open(ballast, "wb", buffering=0) as f:
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)
        with contextlib.suppress(OSError):
            while True:
                f.write(b"\0")
    return ballast


def test_disk_full_mid_run(fault_job: Job) -> None:
    job = fault_job
    folder = job.folder / "state"
    path = folder / "jobs.state.json"
    args = ("2", "--state-file", str(path), "--checkpoint-every", "0.05")
    with small_tmpfs(folder):
        with started(job, *args, **SLOW) as proc:
            wait_until(lambda: ledger_lines(job) >= 200, 20, "200 jobs done")
            before = path.read_bytes()
            ballast = fill(folder)
            _, err = proc.communicate(timeout=30)
        assert proc.returncode == 74, err
        assert f"writing the checkpoint {path} failed: No space left on device" in err, err
        assert "Traceback" not in err
        kept = path.read_bytes()
        assert checkpoint.decode(kept).watermark >= checkpoint.decode(before).watermark
        assert_checkpoint_safe(job)
        assert not [p.name for p in folder.iterdir() if ".tmp." in p.name]
        ballast.unlink()  # space is back: the resume finishes the run
        result = job.run(*args, "--resume", **SLOW)
        assert result.returncode == 0, result.stderr
    assert_no_loss(job, 3000)


STRACE = shutil.which("strace")
SLOW = {"TM_N": "3000", "TM_SLEEP": "0.001"}

# (syscalls traced, error injected, which file: "state", "dir" or "failures", says)
IO_FAULTS = {
    "fsync-eio": ("fsync", "EIO:when=3+", None, "Input/output error"),
    "fsync-enospc": ("fsync", "ENOSPC:when=3+", None, "No space left on device"),
    "dir-fsync-eio": ("fsync", "EIO:when=2+", "dir", "Input/output error"),
    "rename-eio": ("rename,renameat,renameat2", "EIO:when=2+", None, "Input/output error"),
    "failures-write-enospc": ("write", "ENOSPC", "failures", "No space left on device"),
    "failures-fsync-eio": ("fsync", "EIO", "failures", "Input/output error"),
}


@pytest.mark.skipif(STRACE is None, reason="strace is not installed")
@pytest.mark.parametrize("fault", IO_FAULTS.values(), ids=IO_FAULTS.keys())
def test_io_error_on_the_state_files_is_fatal(
    fault_job: Job, fault: tuple[str, str, str | None, str]
) -> None:
    """An injected write/fsync/rename error stops the run (exit 74) and is never retried:
    the last good checkpoint stays, and a resume loses nothing."""
    calls, error, where, says = fault
    job = fault_job
    state, failures = job.folder / "jobs.state.json", job.folder / "jobs.failures.jsonl"
    path = {"dir": job.folder, "failures": failures}.get(where or "")
    assert STRACE is not None
    prefix = [STRACE, "-f", "-qq", "-o", os.devnull, "-e", f"trace={calls}"]
    prefix += ["-e", f"inject={calls}:error={error}"] + (["-P", str(path)] if path else [])
    faults = {"TM_FAULT": "raise", "TM_BAD": "300"} if where == "failures" else {}
    args = ("2", "--state-file", str(state), "--checkpoint-every", "0.05", "--retries", "0")
    env = {**SLOW, **faults, "PYTHONDONTWRITEBYTECODE": "1"}  # no .pyc renames to count
    result = run_wrapped(job, prefix, *args, **env)
    err = result.stderr
    assert result.returncode == 74, err
    failed = failures if where == "failures" else state
    assert f"writing the {'failures file' if where == 'failures' else 'checkpoint'} {failed}" in err
    assert says in err and "Traceback" not in err, err
    wm = assert_checkpoint_safe(job)  # the last good checkpoint parses and claims no more
    assert wm < 3000
    if where == "failures":  # the record that is not durable was not kept either
        assert wm <= 300 and job.failures() == []
    resumed = job.run(*args, "--resume", **SLOW, **faults)
    assert resumed.returncode == (1 if faults else 0), resumed.stderr
    assert_no_loss(job, 3000)
    assert_no_stale_temps(job)
    if faults:
        assert [r["seq"] for r in job.failures()] == [300]


# -- the worker's reader ----------------------------------------------------------------------


@pytest.mark.parametrize("big", [1 << 20, 64], ids=["small-messages", "read-in-place"])
def test_worker_reader_takes_messages_in_any_pieces(
    monkeypatch: pytest.MonkeyPatch, big: int
) -> None:
    """The worker's reader gets whole messages however the parent's writes are cut."""
    from multiprocessing.connection import Pipe

    from taskmaster.local.worker import _Frames

    monkeypatch.setattr(_Frames, "BIG", big)
    rng = random.Random(7)
    sent = [bytes(rng.randrange(256) for _ in range(rng.choice([0, 1, 5, 300, 5000])))]
    sent += [rng.randbytes(rng.choice([0, 3, 64, 65, 1000, 70000])) for _ in range(60)]
    writer, reader = Pipe(duplex=True)
    frames, got = _Frames(reader.fileno()), []
    with socket.socket(fileno=os.dup(writer.fileno())) as out:
        wire = b"".join(struct.pack("!i", len(m)) + m for m in sent)
        pos = 0
        while pos < len(wire):
            piece = wire[pos : pos + rng.choice([1, 2, 3, 7, 100, 4096, 100000])]
            out.sendall(piece)
            pos += len(piece)
            while reader.poll(0):
                assert frames.read()
                got += [bytes(m) for m in frames.messages()]
    writer.close()
    assert got == sent
    assert not frames.read()  # the writer's end is closed
    reader.close()
