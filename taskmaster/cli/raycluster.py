"""``tm-run --ray ADDRESS``: the run's workers are actors on a Ray cluster.

Ray is optional: without it, --ray says how to install it. It is imported here only once
``--ray`` is given, so tm-run starts as fast as ever without it.
"""

from __future__ import annotations

from taskmaster.cli.target import Target
from taskmaster.core.events import Transport
from taskmaster.errors import UsageError
from taskmaster.local.worker import WorkerSpec
from taskmaster.ray import INSTALL_HINT, available


def ray_transport(
    address: str,
    tgt: Target,
    kwargs: dict[str, str],
    workers: int | None,
    threads: int,
    job_timeout: float | None,
) -> tuple[Transport, int]:
    """Join the cluster at ``address``; returns the transport and its actor count."""
    if not available():
        raise UsageError(f"--ray needs Ray, which is not installed: {INSTALL_HINT}")
    from taskmaster.ray.cluster import connect, runtime_env_for
    from taskmaster.ray.transport import RayTransport

    code = tgt.code(kwargs)
    code.check()
    spec = WorkerSpec(code, threads, job_timeout)
    cluster = connect(address, runtime_env_for(tgt.module))
    if workers is None:
        if cluster.cpus < 1:
            raise UsageError(
                f"--ray {address}: the cluster has no CPUs to place actors on; give the "
                "number of actors as WORKERS"
            )
        workers = min(cluster.cpus, 1024)
    return RayTransport(spec, workers, cpus=cluster.cpus), workers
