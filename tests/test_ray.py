"""tm-run --ray against a real Ray cluster started by the test, with the ledger oracle.

The cluster (``ray start --head ... --block``) runs in a private network namespace that holds
only loopback, because Ray binds the host's interface address whatever it is told; every
tm-run joins that namespace with nsenter. Its processes carry a marker in their environment:
after the module none may be left, and after each test no actor of ours may be left.
Needs root (``unshare --net``); skipped with the reason where that is impossible.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psutil
import pytest
from click.testing import CliRunner
from conftest import MARKER_VAR, Job, kill_group, marked_pids, wait_until

import taskmaster.cli.raycluster
from taskmaster.cli.run import run_command

PORT = 6390  # inside the cluster's own network namespace: no other process can hold it

RAY_MODULE = """
import glob, json, os, signal, threading, time

LEDGER = {ledger!r}
PIDS = {pids!r}
CFG = {{}}
_fds = {{}}


def get_jobs(last=0, n="1000", **kwargs):
    yield from range(int(last), int(n))


def setup_worker(**kwargs):
    CFG.update(kwargs)
    with open(os.path.join(PIDS, "%d.setup" % os.getpid()), "a") as f:
        f.write(json.dumps(kwargs) + "\\n")


def teardown_worker():
    open(os.path.join(PIDS, "%d.teardown" % os.getpid()), "w").close()


def record(job):
    key = (os.getpid(), threading.get_ident())
    fd = _fds.get(key)
    if fd is None:
        fd = _fds[key] = os.open(
            os.path.join(LEDGER, "%d-%d" % key), os.O_WRONLY | os.O_APPEND | os.O_CREAT
        )
    os.write(fd, b"%d\\n" % job)


def meet(actors):
    # Wait (30 s at most) until jobs have begun in `actors` actors: batches go only to
    # actors that have started, and one could otherwise run every job before the next starts.
    open(os.path.join(PIDS, "%d.began" % os.getpid()), "w").close()
    deadline = time.monotonic() + 30
    while len(glob.glob(os.path.join(PIDS, "*.began"))) < actors:
        if time.monotonic() > deadline:
            break  # the test then sees one actor ran no job
        time.sleep(0.01)
    CFG["meet"] = 0


def handle_job(job):
    if CFG.get("meet"):
        meet(int(CFG["meet"]))
    if CFG.get("sleep"):
        time.sleep(float(CFG["sleep"]))
    if job == int(CFG.get("poison", -1)):
        os.kill(os.getpid(), signal.SIGKILL)
    if job == int(CFG.get("hang", -1)):
        time.sleep(600)
    if job == int(CFG.get("fail", -1)) and not os.path.exists(os.path.join(PIDS, "fixed")):
        raise ValueError("job %d failed" % job)
    record(job)
"""

ASYNC_HANDLER = """
import asyncio


async def handle_job(job):
    await asyncio.sleep(0.001)
    record(job)
"""

BATCH_HANDLER = """
def handle_batch(jobs):
    for job in jobs:
        record(job)
"""


def _netns_problem() -> str | None:
    """Why a private network namespace cannot be made here, or None."""
    if shutil.which("unshare") is None or shutil.which("nsenter") is None:
        return "unshare/nsenter (util-linux) are not installed"
    if os.geteuid() != 0:
        return "a private network namespace (unshare --net, nsenter) needs root here"
    probe = subprocess.run(
        ["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        return f"unshare --net failed: {probe.stderr.strip() or probe.returncode}"
    return None


NETNS_PROBLEM = _netns_problem()


@dataclass
class Cluster:
    proc: subprocess.Popen[bytes]
    marker: str
    env: dict[str, str]

    @property
    def netns(self) -> str:
        return f"/proc/{self.proc.pid}/ns/net"

    def actors(self) -> list[int]:
        """Live actor processes of ours on this cluster."""
        found = []
        for pid in marked_pids(self.marker):
            with contextlib.suppress(psutil.Error):
                if " ".join(psutil.Process(pid).cmdline()).startswith("ray::Taskmaster"):
                    found.append(pid)
        return found


def _ray_bin() -> str:
    return os.path.join(os.path.dirname(sys.executable), "ray")


def start_ray_node(argv: list[str], env: dict[str, str], temp: str) -> subprocess.Popen[bytes]:
    """``ray start ... --block`` in a session of its own, its output in TEMP/start.log."""
    with open(Path(temp, "start.log"), "wb") as log:
        return subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )


def await_ray_node(proc: subprocess.Popen[bytes], temp: str, timeout: float, what: str) -> None:
    """Wait until ``ray start`` says the node runs; fail with its log if it exits first."""
    log_path = Path(temp, "start.log")
    wait_until(
        lambda: b"Ray runtime started" in log_path.read_bytes() or proc.poll() is not None,
        timeout,
        what,
    )
    assert proc.poll() is None, log_path.read_text()


@contextlib.contextmanager
def ray_cluster(cpus: int = 2, **env: str) -> Iterator[Cluster]:
    """A Ray head of ``cpus`` CPUs in its own network namespace and process group, ended by
    killing the group."""
    if NETNS_PROBLEM:
        pytest.skip(f"no Ray cluster: {NETNS_PROBLEM}")
    pytest.importorskip("ray")
    temp = tempfile.mkdtemp(prefix="tmray", dir="/tmp")  # Ray's socket paths must be short
    marker = uuid.uuid4().hex
    full_env = {**os.environ, MARKER_VAR: marker, "RAY_AUTH_MODE": "disabled", **env}
    full_env.pop("RAY_ADDRESS", None)
    start = (
        f"ip link set lo up && exec {_ray_bin()} start --head --port {PORT} --num-cpus {cpus} "
        f"--include-dashboard false --disable-usage-stats --block --temp-dir {temp}"
    )
    proc = start_ray_node(["unshare", "-n", "sh", "-c", start], full_env, temp)
    try:
        await_ray_node(proc, temp, 90, "the Ray head to start")
        yield Cluster(proc, marker, full_env)
    finally:
        kill_group(proc)
        proc.wait(timeout=10)
        # Ray's own processes in other groups (none expected) go the same way.
        for pid in marked_pids(marker):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not marked_pids(marker), 30, "every process of the cluster to end")
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_cluster() as c:
        yield c


class RayJob(Job):
    """The test job module, run by tm-run --ray inside the cluster's network namespace.

    The module's folder (shipped to the actors as Ray's working_dir) holds the module
    alone; the ledger, the actors' pid files and the state files are beside it.
    """

    def __init__(
        self, tmp: Path, marker: str, cluster: Cluster, handler: str = "", name: str = "jobs"
    ) -> None:
        self.pids = tmp / "pids"
        self.pids.mkdir()
        ledger = tmp / "ledger"
        source = RAY_MODULE.format(ledger=str(ledger), pids=str(self.pids)) + handler
        (tmp / "mod").mkdir()
        super().__init__(tmp / "mod", marker, textwrap.dedent(source))
        self.ledger = ledger
        self.ledger.mkdir(exist_ok=True)
        (self.folder / "ledger").rmdir()
        self.state = tmp / "jobs.state.json"
        self.failures_path = tmp / "jobs.failures.jsonl"
        self.cluster = cluster
        self.env.update(RAY_AUTH_MODE="disabled")
        self.env.pop("RAY_ADDRESS", None)

    def args(self, *extra: str) -> list[str]:
        files = ("--state-file", str(self.state), "--failures", str(self.failures_path))
        return [
            *("nsenter", f"--net={self.cluster.netns}"),
            *(sys.executable, "-m", "taskmaster", str(self.module), *extra),
            *(files if "--ray" in extra else ()),
        ]

    def ray(self, *extra: str, timeout: float = 90, **env: str) -> subprocess.CompletedProcess[str]:
        return self.run(
            *extra, "--no-progress", "--ray", f"127.0.0.1:{PORT}", timeout=timeout, **env
        )

    def start_ray(self, *extra: str) -> subprocess.Popen[str]:
        return self.start(*extra, "--no-progress", "--ray", f"127.0.0.1:{PORT}")

    def setups(self) -> dict[int, list[dict[str, str]]]:
        return {
            int(p.name.split(".")[0]): [json.loads(line) for line in p.read_text().splitlines()]
            for p in self.pids.glob("*.setup")
        }

    def teardowns(self) -> set[int]:
        return {int(p.name.split(".")[0]) for p in self.pids.glob("*.teardown")}


@pytest.fixture
def rjob(tmp_path: Path, marker: str, cluster: Cluster) -> Iterator[RayJob]:
    yield RayJob(tmp_path, marker, cluster)
    wait_until(lambda: not cluster.actors(), 30, "the run's actors to end")


def assert_exactly_once(job: Job, n: int) -> None:
    counts = job.counts()
    assert sorted(counts) == list(range(n)), f"missing: {sorted(set(range(n)) - set(counts))[:20]}"
    repeated = {s: c for s, c in counts.items() if c > 1}
    assert not repeated, f"jobs ran more than once: {dict(list(repeated.items())[:20])}"


def assert_every_job_ran(job: RayJob, n: int, failed: int = 0) -> None:
    missing = set(range(n)) - set(job.counts())
    assert not missing, f"jobs never ran: {sorted(missing)[:20]}"
    state = job.checkpoint()
    assert state["finished"] is True and state["done"] == n - failed and state["failed"] == failed


# -- without ray installed -----------------------------------------------------------------------


def test_without_ray_says_how_to_install(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "jobs.py").write_text(
        "def get_jobs():\n    yield 1\ndef handle_job(j):\n    pass\n"
    )
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(taskmaster.cli.raycluster, "available", lambda: False)
    result = CliRunner().invoke(run_command, ["jobs.py", "--ray", "auto", "--no-progress"])
    assert result.exit_code == 2
    assert "pip install 'taskmaster-runner[ray]'" in result.output
    assert "Traceback" not in result.output


# -- against a running cluster ------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_every_job_exactly_once_setup_once_per_actor(rjob: RayJob) -> None:
    result = rjob.ray("2", "--threads", "3", "n=3000", "tag=blue", "meet=2")
    assert result.returncode == 0, result.stderr
    assert_exactly_once(rjob, 3000)
    assert "3,000 jobs done" in result.stderr and "Traceback" not in result.stderr
    setups = rjob.setups()
    assert len(setups) == 2, setups  # two actors, none replaced
    expected = [{"n": "3000", "tag": "blue", "meet": "2"}]
    assert all(calls == expected for calls in setups.values()), setups
    assert rjob.teardowns() == set(setups)  # teardown_worker ran on each at the end
    workers = {int(name.split("-")[0]) for name in os.listdir(rjob.ledger)}
    assert workers == set(setups)  # the jobs ran in the actors, not in tm-run


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_kill_9_of_an_actor_mid_run_loses_nothing(rjob: RayJob) -> None:
    # 5 ms jobs: the ~13 s the survivor needs for the rest leave the replacement time to
    # start (it takes batches only once started) even on a loaded machine.
    proc = rjob.start_ray("2", "n=3000", "sleep=0.005")
    try:
        wait_until(
            lambda: len(rjob.setups()) == 2 and sum(rjob.counts().values()) > 300, 60, "progress"
        )
        victim = min(rjob.setups())
        os.kill(victim, signal.SIGKILL)
        out, err = proc.communicate(timeout=90)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err
    assert_every_job_ran(rjob, 3000)
    assert f"(pid {victim}) (Ray actor" in err and "died" in err and "they will run again" in err
    assert len(rjob.setups()) == 3  # a replacement actor was started


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_kill_9_of_tm_run_then_resume_loses_nothing(rjob: RayJob, cluster: Cluster) -> None:
    proc = rjob.start_ray("2", "n=3000", "sleep=0.002")
    try:
        wait_until(lambda: sum(rjob.counts().values()) > 500, 60, "progress")
    finally:
        kill_group(proc)
        proc.communicate(timeout=30)
    wait_until(lambda: not cluster.actors(), 30, "Ray to end the actors of a dead tm-run")
    watermark = json.loads(rjob.state.read_text())["watermark"]
    missing = set(range(watermark)) - set(rjob.counts())
    assert not missing, f"the checkpoint claims jobs that never ran: {sorted(missing)[:20]}"
    result = rjob.ray("2", "n=3000", "sleep=0.002", "--resume")
    assert result.returncode == 0, result.stderr
    assert_every_job_ran(rjob, 3000)


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_failures_file_then_retry_failed(rjob: RayJob) -> None:
    result = rjob.ray("2", "n=500", "fail=77", "--retries", "1")
    assert result.returncode == 1, result.stderr
    assert [f["seq"] for f in rjob.failures()] == [77]
    assert "ValueError: job 77 failed" in str(rjob.failures()[0]["error"])
    (rjob.pids / "fixed").touch()
    result = rjob.ray("2", "n=500", "fail=77", "--retry-failed")
    assert result.returncode == 0, result.stderr
    assert rjob.failures() == []
    assert_exactly_once(rjob, 500)


@pytest.mark.ray
@pytest.mark.timeout(150)
@pytest.mark.parametrize("batch", ["1", "4"])
def test_poison_job_that_kills_its_actor_ends_in_failures_alone(rjob: RayJob, batch: str) -> None:
    # The job before the poison one finishes just before it kills the actor: its result
    # must not die inside the actor, or it is charged (without TaskmasterActor.ack, about
    # one run in six failed so with one-job batches).
    result = rjob.ray("2", "n=200", "poison=40", "--batch-size", batch, "--retries", "0")
    assert result.returncode == 1, result.stderr
    failures = rjob.failures()
    assert [f["seq"] for f in failures] == [40], failures
    assert "WorkerDied" in str(failures[0]["error"]) and "Ray actor" in str(failures[0]["error"])
    assert set(rjob.counts()) == set(range(200)) - {40}


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_job_timeout_kills_the_actor_holding_the_late_job(rjob: RayJob) -> None:
    result = rjob.ray("2", "n=100", "hang=30", "--job-timeout", "2", "--retries", "0")
    assert result.returncode == 1, result.stderr
    failures = rjob.failures()
    assert [f["seq"] for f in failures] == [30]
    assert "JobTimeout" in str(failures[0]["error"])
    assert "was stopped because a job ran past --job-timeout" in result.stderr
    assert set(rjob.counts()) == set(range(100)) - {30}


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_ctrl_c_drains_then_ends_the_actors(rjob: RayJob, cluster: Cluster) -> None:
    proc = rjob.start_ray("2", "--threads", "2", "n=100000", "sleep=0.01")
    try:
        wait_until(lambda: sum(rjob.counts().values()) > 50, 60, "progress")
        os.kill(proc.pid, signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err
    assert "finishing the jobs in flight" in err and "--resume" in err
    assert rjob.teardowns() == set(rjob.setups())  # drained, then stopped politely
    assert not cluster.actors()  # killed before tm-run exited, not later by Ray
    state = rjob.checkpoint()
    assert state["done"] == state["watermark"] > 0 and not state["finished"]


@pytest.mark.ray
@pytest.mark.timeout(150)
@pytest.mark.parametrize("handler", [ASYNC_HANDLER, BATCH_HANDLER], ids=["async", "batch"])
def test_async_and_batch_handlers(
    tmp_path: Path, marker: str, cluster: Cluster, handler: str
) -> None:
    job = RayJob(tmp_path, marker, cluster, handler)
    result = job.ray("2", "--threads", "4", "n=1000")
    assert result.returncode == 0, result.stderr
    assert_exactly_once(job, 1000)
    wait_until(lambda: not cluster.actors(), 30, "the run's actors to end")


# -- token authentication -------------------------------------------------------------------------


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_token_authentication(tmp_path: Path, marker: str) -> None:
    token = tmp_path / "token"
    token.write_text(secrets.token_hex(32))
    with ray_cluster(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token)) as secured:
        job = RayJob(tmp_path, marker, secured)
        job.env.pop("RAY_AUTH_MODE")
        refused = job.ray("1", "n=10", RAY_NUM_REDIS_GET_RETRIES="2")  # Ray's 20 s, cut
        assert refused.returncode == 2, refused.stderr
        assert "RAY_AUTH_MODE=token" in refused.stderr and "Traceback" not in refused.stderr
        joined = job.ray("1", "n=10", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
        assert joined.returncode == 0, joined.stderr
        assert_exactly_once(job, 10)
        wait_until(lambda: not secured.actors(), 30, "the run's actors to end")
