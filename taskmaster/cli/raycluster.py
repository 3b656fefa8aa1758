"""``tm-run --ray ADDRESS``: the run's workers are actors on a Ray cluster.

Ray is optional: without it, --ray says how to install it. It is imported here only once
``--ray`` is given, so tm-run starts as fast as ever without it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from taskmaster.cli.target import Target
from taskmaster.core.events import Transport
from taskmaster.errors import UsageError
from taskmaster.local.worker import WorkerSpec
from taskmaster.ray import INSTALL_HINT, available


def _takes_arguments(fn: Callable[..., Any]) -> bool:
    try:
        return bool(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return False


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

    if tgt.handle_job is None and tgt.handle_batch is None:
        raise UsageError("a run needs a handle_job (or handle_batch) function")
    setup = tgt.setup_worker
    if setup is not None and kwargs and _takes_arguments(setup):
        setup = functools.partial(setup, **kwargs)
    spec = WorkerSpec(
        tgt.handle_job, threads, job_timeout, setup, tgt.teardown_worker, tgt.handle_batch
    )
    cluster = connect(address, runtime_env_for(tgt.module))
    if workers is None:
        if cluster.cpus < 1:
            raise UsageError(
                f"--ray {address}: the cluster has no CPUs to place actors on; give the "
                "number of actors as WORKERS"
            )
        workers = min(cluster.cpus, 1024)
    return RayTransport(spec, workers, cpus=cluster.cpus), workers
