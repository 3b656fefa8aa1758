"""Run a jobs module with one of taskmaster's peers; one peer per process.

    python benchmarks/peers.py RUNNER path/to/jobs.py --workers 2 --chunk 1000 [key=value ...]

The module is the same one tm-run gets: ``get_jobs(**kwargs)`` (kwargs as strings) and
``handle_job(job)``. Prints one JSON line, {"runner": ..., "jobs": COUNT}, when done, so the
caller can check that every job was handled. The start method is fork everywhere it can
be chosen (the Linux default, and what taskmaster uses); joblib uses its default, loky.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import itertools
import json
import multiprocessing as mp
import sys
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing.queues import Queue
from pathlib import Path
from types import ModuleType
from typing import Any

Handler = Callable[[Any], Any]
FORK = mp.get_context("fork")


def load_module(path: str) -> ModuleType:
    """Import the jobs module by name, so pickle (and loky's workers) find it again."""
    folder = str(Path(path).resolve().parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)
    return importlib.import_module(Path(path).stem)


def batched(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    it = iter(items)
    while batch := list(itertools.islice(it, size)):
        yield batch


# --- one process ----------------------------------------------------------------------


def run_plain(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    count = 0
    for job in jobs:
        handle(job)
        count += 1
    return count


# --- a bare multiprocessing.Queue: the transport floor ---------------------------------


def _queue_worker(handle: Handler, tasks: Queue[Any], counts: Queue[int]) -> None:
    count = 0
    while (batch := tasks.get()) is not None:
        for job in batch:
            handle(job)
        count += len(batch)
    counts.put(count)


def run_mpqueue(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    tasks: Queue[Any] = FORK.Queue(maxsize=4 * opts.workers)  # bounded, like a window
    counts: Queue[int] = FORK.Queue()
    procs = [
        FORK.Process(target=_queue_worker, args=(handle, tasks, counts))
        for _ in range(opts.workers)
    ]
    for p in procs:
        p.start()
    for batch in batched(jobs, opts.chunk):
        tasks.put(batch)
    for _ in procs:
        tasks.put(None)
    total = sum(counts.get() for _ in procs)
    for p in procs:
        p.join()
    return total


# --- the standard library's pools ------------------------------------------------------


def run_pool(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    with FORK.Pool(opts.workers) as pool:
        return sum(1 for _ in pool.imap_unordered(handle, jobs, chunksize=opts.chunk))


def run_ppe(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    # Executor.map submits every chunk before it yields: the whole input is held at once.
    with ProcessPoolExecutor(opts.workers, mp_context=FORK) as ex:
        return sum(1 for _ in ex.map(handle, jobs, chunksize=opts.chunk))


# --- third-party peers -----------------------------------------------------------------


def run_joblib(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    from joblib import Parallel, delayed

    batch: int | str = opts.chunk if opts.chunk > 0 else "auto"
    par = Parallel(n_jobs=opts.workers, return_as="generator_unordered", batch_size=batch)
    return sum(1 for _ in par(delayed(handle)(job) for job in jobs))


def run_mpire(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    from mpire.pool import WorkerPool

    with WorkerPool(n_jobs=opts.workers, start_method="fork") as pool:
        results = pool.imap_unordered(handle, jobs, chunk_size=opts.chunk)
        return sum(1 for _ in results)


# --- a process pool with threads or an event loop in each process ----------------------

_EXEC: dict[str, Any] = {}


def _thread_chunk(args: tuple[Handler, int, list[Any]]) -> int:
    handle, threads, chunk = args
    ex = _EXEC.get("threads")
    if ex is None:
        ex = _EXEC["threads"] = ThreadPoolExecutor(threads)
    for _ in ex.map(handle, chunk):
        pass
    return len(chunk)


def run_pool_threads(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    tasks = ((handle, opts.threads, chunk) for chunk in batched(jobs, opts.chunk))
    with FORK.Pool(opts.workers) as pool:
        return sum(pool.imap_unordered(_thread_chunk, tasks))


async def _gather_bounded(handle: Handler, limit: int, chunk: list[Any]) -> None:
    sem = asyncio.Semaphore(limit)

    async def one(job: Any) -> None:
        async with sem:
            await handle(job)

    await asyncio.gather(*(one(job) for job in chunk))


def _async_chunk(args: tuple[Handler, int, list[Any]]) -> int:
    handle, limit, chunk = args
    loop = _EXEC.get("loop")
    if loop is None:
        loop = _EXEC["loop"] = asyncio.new_event_loop()
    loop.run_until_complete(_gather_bounded(handle, limit, chunk))
    return len(chunk)


def run_pool_async(handle: Handler, jobs: Iterable[Any], opts: argparse.Namespace) -> int:
    tasks = ((handle, opts.threads, chunk) for chunk in batched(jobs, opts.chunk))
    with FORK.Pool(opts.workers) as pool:
        return sum(pool.imap_unordered(_async_chunk, tasks))


RUNNERS: dict[str, Callable[[Handler, Iterable[Any], argparse.Namespace], int]] = {
    "plain": run_plain,
    "mpqueue": run_mpqueue,
    "pool": run_pool,
    "ppe": run_ppe,
    "joblib": run_joblib,
    "mpire": run_mpire,
    "pool_threads": run_pool_threads,
    "pool_async": run_pool_async,
}


def parse_args(argv: list[str]) -> tuple[argparse.Namespace, dict[str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runner", choices=sorted(RUNNERS))
    parser.add_argument("module")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="threads or async concurrency")
    parser.add_argument("--chunk", type=int, default=1000, help="batch size; 0 = peer's auto")
    parser.add_argument("kwargs", nargs="*", metavar="key=value")
    opts = parser.parse_intermixed_args(argv)
    kwargs = dict(kv.split("=", 1) for kv in opts.kwargs)
    return opts, kwargs


def main(argv: list[str]) -> int:
    opts, kwargs = parse_args(argv)
    module = load_module(opts.module)
    jobs = module.get_jobs(**kwargs)
    count = RUNNERS[opts.runner](module.handle_job, jobs, opts)
    print(json.dumps({"runner": opts.runner, "jobs": count}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
