"""tm-run --ray on a cluster that has no room for any actor: the user is told, Ctrl-C ends it.

A head of 0 CPUs (test_ray's cluster, in its own network namespace): Ray places none of the
actors, so no batch can go out. After UNPLACED_NOTICE seconds tm-run says why nothing runs,
once; Ctrl-C then stops the run, with every job left for --resume.
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import kill_group
from test_ray import Cluster, RayJob, ray_cluster

from taskmaster.ray.transport import UNPLACED_NOTICE


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with ray_cluster(cpus=0) as c:
        yield c


@pytest.mark.ray
@pytest.mark.timeout(150)
def test_no_actor_placed_is_said_once_then_ctrl_c_ends_the_run(
    tmp_path: Path, marker: str, cluster: Cluster
) -> None:
    job = RayJob(tmp_path, marker, cluster)
    proc = job.start_ray("2", "n=100")
    try:
        time.sleep(UNPLACED_NOTICE + 15)  # joining takes a few seconds, then the notice's wait
        assert proc.poll() is None, proc.communicate()[1]
        os.kill(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        kill_group(proc)
    assert proc.returncode == 130, err
    assert err.count("none of the 2 Ray actors has started in 30 s") == 1, err
    assert "Ray has not placed them (each needs 1 CPU" in err and "ray status" in err
    assert "Traceback" not in err
    assert not job.counts()
    state = json.loads(job.state.read_text())
    assert state["watermark"] == 0 and not state["finished"]
