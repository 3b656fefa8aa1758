"""tm-run --ray ray://HOST:PORT: the same run through Ray Client (the head's client server).

A cluster of its own (test_ray's, in its own network namespace): Ray Client proxies the
driver through the head's client server on port 10001, a path apart from joining by address.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import wait_until
from test_ray import Cluster, RayJob, assert_every_job_ran, assert_exactly_once, ray_cluster

CLIENT_PORT = 10001  # the default of ray start --head's --ray-client-server-port


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_cluster() as c:
        yield c


@pytest.fixture
def rjob(tmp_path: Path, marker: str, cluster: Cluster) -> Iterator[RayJob]:
    yield RayJob(tmp_path, marker, cluster)
    wait_until(lambda: not cluster.actors(), 30, "the run's actors to end")


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_run_through_ray_client_then_a_resume(rjob: RayJob) -> None:
    address = f"ray://127.0.0.1:{CLIENT_PORT}"
    first = rjob.run(
        "2", "--no-progress", "--ray", address, "--limit", "600", "n=1500", "k=v", timeout=120
    )
    assert first.returncode == 0, first.stderr
    assert "600 jobs done" in first.stderr and "Traceback" not in first.stderr
    setups = rjob.setups()
    # one or two actors: batches go only to started actors, and the first may do them all
    assert 1 <= len(setups) <= 2 and all(c == [{"n": "1500", "k": "v"}] for c in setups.values())
    workers = {int(name.split("-")[0]) for name in os.listdir(rjob.ledger)}
    assert workers <= set(setups)  # the jobs ran in the actors, not in tm-run
    second = rjob.run(
        "2", "--no-progress", "--ray", address, "--resume", "n=1500", "k=v", timeout=120
    )
    assert second.returncode == 0, second.stderr
    assert_exactly_once(rjob, 1500)
    assert_every_job_ran(rjob, 1500)


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_a_checkpoint_goes_from_local_workers_to_ray_and_back(rjob: RayJob) -> None:
    """One run in three legs: local workers, Ray actors (by address), local again."""
    files = ("--state-file", str(rjob.state), "--failures", str(rjob.failures_path))
    local = rjob.run("2", "--no-progress", *files, "--limit", "700", "n=2000", timeout=120)
    assert local.returncode == 0, local.stderr
    assert "700 jobs done" in local.stderr
    local_workers = set(rjob.setups())
    on_ray = rjob.ray("2", "--resume", "--limit", "1400", "n=2000", timeout=120)
    assert on_ray.returncode == 0, on_ray.stderr
    assert "700 jobs done (1,400 over all runs)" in on_ray.stderr, on_ray.stderr
    actors = set(rjob.setups()) - local_workers
    assert 1 <= len(actors) <= 2, rjob.setups()
    ran_in = {int(name.split("-")[0]) for name in os.listdir(rjob.ledger)}
    # The middle leg ran in the actors (one may have set up and got no batch: batches go
    # only to started actors, and the other can run all 700 jobs first).
    middle = ran_in - local_workers
    assert middle and middle <= actors, (ran_in, local_workers, actors)
    back = rjob.run("2", "--no-progress", *files, "--resume", "n=2000", timeout=120)
    assert back.returncode == 0, back.stderr
    assert_exactly_once(rjob, 2000)
    assert_every_job_ran(rjob, 2000)
