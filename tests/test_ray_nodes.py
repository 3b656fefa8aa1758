"""tm-run --ray on a cluster of two nodes, one of which is lost mid-run (kill -9 of its raylet,
its actors and every other process it started).

Both nodes live in the head's private network namespace (see tests/test_ray.py) and have one
CPU each, so the two actors (one CPU each) must go one to a node, and the replacement of the
lost actor can never be placed: the run must finish on the actor that is left.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import kill_group, wait_until
from test_ray import (
    PORT,
    Cluster,
    RayJob,
    _ray_bin,
    assert_every_job_ran,
    await_ray_node,
    ray_cluster,
    start_ray_node,
)

# Each actor writes down which node it runs on (the environment its raylet gave it).
NODE_SETUP = """
_setup_worker = setup_worker


def setup_worker(**kwargs):
    _setup_worker(**kwargs)
    with open(os.path.join(PIDS, "%d.node" % os.getpid()), "w") as f:
        f.write(os.environ.get("TM_RAY_NODE", "?"))
"""


@contextlib.contextmanager
def second_node(cluster: Cluster) -> Iterator[subprocess.Popen[bytes]]:
    """A 1-CPU node joining ``cluster`` from the head's network namespace, in a session of its
    own (Ray puts each worker in a process group of its own, but they stay in the session)."""
    temp = tempfile.mkdtemp(prefix="tmray", dir="/tmp")  # Ray's socket paths must be short
    start = (
        f"exec {_ray_bin()} start --address=127.0.0.1:{PORT} --num-cpus 1 "
        f"--disable-usage-stats --block --temp-dir {temp}"
    )
    argv = ["nsenter", f"--net={cluster.netns}", "sh", "-c", start]
    proc = start_ray_node(argv, {**cluster.env, "TM_RAY_NODE": "second"}, temp)
    try:
        await_ray_node(proc, temp, 60, "the second Ray node to start")
        yield proc
    finally:
        kill_session(proc.pid)
        kill_group(proc)
        proc.wait(timeout=10)
        shutil.rmtree(temp, ignore_errors=True)


def session_pids(sid: int) -> list[int]:
    found = []
    for proc in psutil.process_iter(["pid"]):
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(proc.pid) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.append(proc.pid)
    return found


def kill_session(sid: int) -> None:
    """kill -9 of every process in the session: a node lost at once."""
    for pid in session_pids(sid):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def nodes_that_ran_jobs(job: RayJob) -> set[str]:
    nodes = {int(p.name.split(".")[0]): p.read_text() for p in job.pids.glob("*.node")}
    return {nodes.get(int(name.split("-")[0]), "?") for name in os.listdir(job.ledger)}


def jobs_named(text: str) -> set[int]:
    """The jobs in "holding jobs 1214-1236, job 1240; they will run again"."""
    found: set[int] = set()
    for held in re.findall(r"holding (.*?); they will run again", text):
        for first, last in re.findall(r"jobs? (\d+)(?:-(\d+))?", held):
            found.update(range(int(first), int(last or first) + 1))
    return found


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_node_lost_mid_run_the_run_finishes_on_the_other_node(tmp_path: Path, marker: str) -> None:
    n = 2000
    with ray_cluster(cpus=1, TM_RAY_NODE="head") as cluster, second_node(cluster) as node:
        job = RayJob(tmp_path, marker, cluster, NODE_SETUP)
        proc = job.start_ray("2", f"n={n}", "sleep=0.005")
        try:
            wait_until(
                lambda: (
                    nodes_that_ran_jobs(job) == {"head", "second"}
                    and sum(job.counts().values()) > 300
                ),
                60,
                "jobs to run on both nodes",
            )
            nodes = {int(p.name.split(".")[0]): p.read_text() for p in job.pids.glob("*.node")}
            [victim] = [pid for pid, where in nodes.items() if where == "second"]
            kill_session(node.pid)
            wait_until(lambda: not session_pids(node.pid), 10, "the second node to be gone")
            out, err = proc.communicate(timeout=60)
        finally:
            kill_group(proc)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.communicate(timeout=10)
        assert proc.returncode == 0, err
        assert_every_job_ran(job, n)
        assert f"(pid {victim}) (Ray actor" in err and "they will run again" in err, err
        # Only the lost actor's jobs may have run twice (their results died with it).
        repeated = {seq for seq, c in job.counts().items() if c > 1}
        assert repeated <= jobs_named(err), sorted(repeated - jobs_named(err))[:20]
        assert len(job.setups()) == 2  # the replacement actor never found a CPU
        wait_until(lambda: not cluster.actors(), 30, "the run's actors to end")
