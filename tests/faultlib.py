"""Helpers for the fault tests: a job module that misbehaves on demand, and the invariants.

The module extends the ledger module of conftest. Environment variables pick the fault:

- ``TM_FAULT``: what the seqs in ``TM_BAD`` do (handler faults run after the ledger write,
  so the ledger counts every attempt; generator faults replace the job by a bad object);
- ``TM_GATES``: before yielding seq g, ``get_jobs`` waits for the file ``go-<g>``;
- ``TM_FAST_FILE``: once this file exists, the handler stops sleeping ``TM_SLEEP``.
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator, Sequence

import pytest
from conftest import LEDGER_MODULE, Job, kill_group, wait_until

from taskmaster.store import checkpoint

FAULT_MODULE = (
    LEDGER_MODULE
    + """
import ctypes, re, signal, socket, sys

FAULT = os.environ.get("TM_FAULT", "")
BAD = {int(s) for s in os.environ.get("TM_BAD", "").split(",") if s}
GATES = {int(s) for s in os.environ.get("TM_GATES", "").split(",") if s}
FAST_FILE = os.environ.get("TM_FAST_FILE", "")
HERE = os.path.dirname(os.path.abspath(__file__))


def _refuse():
    raise RuntimeError("this job cannot be rebuilt")


class ErrorAtUnpickle:
    def __reduce__(self):
        return (_refuse, ())


class ExitAtUnpickle:
    def __reduce__(self):
        return (sys.exit, (5,))


class CrashAtUnpickle:
    def __reduce__(self):
        return (ctypes.string_at, (0,))


MAKE_BAD = {
    "genobj": lambda: (x for x in ()),
    "socket": lambda: socket.socket(),
    "unpickle_error": ErrorAtUnpickle,
    "unpickle_exit": ExitAtUnpickle,
    "unpickle_crash": CrashAtUnpickle,
}


PAD = int(os.environ.get("TM_PAD", "0"))  # bytes of padding per job: big batches
PAUSE = os.environ.get("TM_GEN_PAUSE", "")  # "seq:seconds": a slow get_jobs before seq


def get_jobs(last=0, **kwargs):
    for i in range(last[0] if isinstance(last, tuple) else int(last), N):
        if i in GATES:
            while not os.path.exists(os.path.join(HERE, "go-%d" % i)):
                time.sleep(0.005)
        if PAUSE and i == int(PAUSE.split(":")[0]):
            time.sleep(float(PAUSE.split(":")[1]))
        if i in BAD and FAULT == "gen_raise":
            raise RuntimeError("get_jobs broke at %d" % i)
        if i in BAD and FAULT in MAKE_BAD:
            yield MAKE_BAD[FAULT]()
        else:
            yield (i, "x" * PAD) if PAD else i


def setup_worker():
    if os.environ.get("TM_SETUP_FAILS"):
        raise ConnectionError("the database is down")


def handle_job(job):
    if isinstance(job, tuple):
        job = job[0]
    if SLEEP and not (FAST_FILE and os.path.exists(FAST_FILE)):
        time.sleep(SLEEP)
    record(job)
    if job not in BAD:
        return
    if FAULT == "raise":
        raise ValueError("job %d is bad" % job)
    if FAULT == "sys_exit":
        sys.exit(3)
    if FAULT == "os_exit":
        os._exit(0)
    if FAULT == "sigkill":
        os.kill(os.getpid(), signal.SIGKILL)
    if FAULT == "segv":
        ctypes.string_at(0)
    if FAULT == "hang":
        time.sleep(1e9)
    if FAULT == "hang_holding_the_gil":  # the regex engine never releases the GIL
        re.match(r"(a+)+$", "a" * 64 + "b")
    if FAULT == "flaky":
        try:
            os.close(os.open(os.path.join(HERE, "flaky-%d" % job), os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
        raise ConnectionError("job %d: first attempt fails" % job)
"""
)


def ran(job: Job) -> collections.Counter[int]:
    return job.counts()


def ledger_lines(job: Job) -> int:
    return sum(job.counts().values())


def failed_seqs(job: Job) -> set[int]:
    return {int(str(r["seq"])) for r in job.failures()}


def watermark(job: Job) -> int:
    """The watermark of the checkpoint on disk, after checking it parses (I5); 0 if none."""
    state = checkpoint.read(str(job.state))
    return 0 if state is None else state.watermark


def assert_checkpoint_safe(job: Job) -> int:
    """I2: every seq below the checkpoint's watermark ran or is in the failures file."""
    wm = watermark(job)
    counts, failed = job.counts(), failed_seqs(job)
    missing = [i for i in range(wm) if counts[i] == 0 and i not in failed]
    assert not missing, f"watermark {wm} passed jobs that never ran: {missing[:20]}"
    return wm


def assert_no_loss(job: Job, n: int) -> None:
    """I1: every seq ran at least once or is in the failures file."""
    counts, failed = job.counts(), failed_seqs(job)
    missing = [i for i in range(n) if counts[i] == 0 and i not in failed]
    assert not missing, f"jobs lost: {missing[:20]} ({len(missing)} in all)"


def assert_no_stale_temps(job: Job) -> None:
    left = [p.name for p in job.folder.iterdir() if ".tmp." in p.name]
    assert not left, f"stale temp files: {left}"


@contextlib.contextmanager
def started(
    job: Job, *args: str, prefix: Sequence[str] = (), **env: str
) -> Iterator[subprocess.Popen[str]]:
    """A run in its own process group, killed (group and all) if the test leaves early;
    with ``prefix``, the command runs behind it (see ``start_wrapped``)."""
    proc = start_wrapped(job, list(prefix), *args, **env) if prefix else job.start(*args, **env)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            kill_group(proc)
            proc.wait()
        for stream in (proc.stdout, proc.stderr):
            if stream is not None:
                stream.close()


def run_wrapped(
    job: Job, prefix: list[str], *args: str, timeout: float = 45, **env: str
) -> subprocess.CompletedProcess[str]:
    """Like ``job.run``, with the command behind ``prefix`` (strace, setpriv...)."""
    return subprocess.run(
        [*prefix, *job.args(*args)],
        cwd=job.folder,
        env={**job.env, **env},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )


def start_wrapped(job: Job, prefix: list[str], *args: str, **env: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*prefix, *job.args(*args)],
        cwd=job.folder,
        env={**job.env, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,
    )


def without_dac_override() -> list[str] | None:
    """A command prefix under which file modes bind (root ignores them), or None.

    Dropping root's DAC capabilities keeps the interpreter reachable, which a switch to
    nobody would not when Python lives in a root-only folder.
    """
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        return None
    prefix = [setpriv, "--bounding-set=-dac_override,-dac_read_search,-fowner"]
    probe = subprocess.run([*prefix, "true"], capture_output=True)
    return prefix if probe.returncode == 0 else None


def wait_for_run(
    proc: subprocess.Popen[str], predicate: Callable[[], object], timeout: float, what: str
) -> None:
    """``wait_until``, failing with the run's stderr (the group is killed first)."""
    try:
        wait_until(predicate, timeout, what)
    except BaseException:
        kill_group(proc)
        _, err = proc.communicate()
        pytest.fail(f"timed out after {timeout} s waiting for {what}; stderr:\n{err}")
