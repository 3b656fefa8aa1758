"""Pulling jobs from the user's generator, and lining a resumed generator up with its seqs.

``pull`` never waits long for a slow generator: it asks for 1, 2, 4, ... jobs and closes the
batch once a short deadline passes, so the first job starts as soon as it is yielded.
"""

from __future__ import annotations

import collections
import inspect
import itertools
import time
from collections.abc import Callable, Iterator
from typing import Any

from taskmaster.errors import CheckpointError, GeneratorError, UsageError, describe_error
from taskmaster.store import codec
from taskmaster.store.checkpoint import Anchor, StoredJob


class JobSource:
    """The generator, with jobs pushed back in front of it and its end or error recorded."""

    def __init__(
        self, jobs: Iterator[Any], pushback: list[Any] | None = None, total: int | None = None
    ) -> None:
        self._it = jobs
        self.total = total
        self._pushback = list(pushback or [])
        self._ended = False  # the generator returned or raised
        self.error: GeneratorError | None = None
        self.notice: str | None = None

    @property
    def exhausted(self) -> bool:
        """No more jobs will come: the generator ended or raised and nothing is pushed back."""
        return self._ended and not self._pushback

    def pull(self, n: int, max_wait: float = 0.02) -> list[Any]:
        """Up to ``n`` jobs; fewer when the generator ends, raises, or is slow."""
        out: list[Any] = self._pushback[:n]
        del self._pushback[:n]
        chunk = 1
        deadline = time.monotonic() + max_wait
        while len(out) < n and not self._ended:
            want = min(chunk, n - len(out))
            before = len(out)
            try:
                out.extend(itertools.islice(self._it, want))  # keeps what came before a raise
            except Exception as exc:
                self._fail(exc)
                break
            if len(out) - before < want:
                self._ended = True
            elif time.monotonic() > deadline:
                break
            chunk *= 2
        return out

    def _fail(self, exc: BaseException) -> None:
        error, tb = describe_error(exc)
        self.error = GeneratorError(f"get_jobs raised {error}", tb)
        self._ended = True


def accepts_last(get_jobs: Callable[..., Any]) -> bool:
    try:
        params = inspect.signature(get_jobs).parameters
    except (TypeError, ValueError):
        return True
    return "last" in params


def check_kwargs(get_jobs: Callable[..., Any], kwargs: dict[str, Any]) -> None:
    """Refuse KEY=VALUE arguments that ``get_jobs`` cannot take, before anything runs."""
    try:
        sig = inspect.signature(get_jobs)
    except (TypeError, ValueError):
        return
    probe = {**kwargs, "last": None} if "last" in sig.parameters else kwargs
    try:
        sig.bind(**probe)
    except TypeError as exc:
        given = " ".join(f"{k}=..." for k in kwargs) or "no KEY=VALUE arguments"
        raise UsageError(
            f"get_jobs{sig} cannot be called with {given}: {exc}. KEY=VALUE arguments "
            "after the target become keyword arguments of get_jobs."
        ) from None


def call_get_jobs(get_jobs: Callable[..., Any], kwargs: dict[str, Any]) -> JobSource:
    """A source over ``get_jobs(**kwargs)``; ``total`` is the result's ``len()``, if any."""
    try:
        jobs = get_jobs(**kwargs)
        total = len(jobs) if hasattr(jobs, "__len__") else None
        return JobSource(iter(jobs), total=total)
    except TypeError as exc:
        raise GeneratorError(
            f"calling get_jobs({', '.join(f'{k}=...' for k in kwargs)}) failed: {exc}. "
            "KEY=VALUE arguments become keyword arguments of get_jobs.",
            "",
        ) from None
    except Exception as exc:
        error, tb = describe_error(exc)
        raise GeneratorError(f"get_jobs raised {error}", tb) from None


def open_source(
    get_jobs: Callable[..., Any],
    kwargs: dict[str, Any],
    watermark: int = 0,
    anchor: Anchor | None = None,
) -> JobSource:
    """A source whose next job has seq ``watermark``.

    With a ``last`` parameter, ``get_jobs(last=<anchor job>)`` is called. The anchor is the
    job at the watermark (unresolved) or, when nothing was in flight, the job just before
    it (resolved). A generator that restarts *at* ``last`` yields the anchor first; one that
    restarts *after* it does not, and if the anchor is still unresolved taskmaster runs it
    from the checkpoint's copy, so no job is lost either way.
    Without ``last``, the first ``watermark`` jobs are skipped and the anchor is checked.
    """
    if anchor is None:
        return call_get_jobs(get_jobs, kwargs)
    unresolved = anchor.seq == watermark
    if isinstance(anchor.job, StoredJob):  # too big to keep: its digest and seq must do
        source = _skip_to(get_jobs, kwargs, watermark, anchor)
        source.notice = (
            f"the job to resume from ({anchor.job.size:,} bytes encoded) was too big to keep "
            f"in the checkpoint, so get_jobs started from the beginning and its first "
            f"{anchor.seq:,} jobs were skipped"
        )
        return source
    if accepts_last(get_jobs):
        source = call_get_jobs(get_jobs, {**kwargs, "last": anchor.job})
        if source.total is not None:  # what is left, from the anchor on
            source.total += anchor.seq
        first = source.pull(1, max_wait=float("inf"))
        if first and codec.job_digest(first[0]) == anchor.digest:
            source._pushback = first if unresolved else []
        elif unresolved:
            source._pushback = [anchor.job, *first]
            if source.error is None:  # else the error says why, not this
                source.notice = (
                    "get_jobs(last=...) did not yield the job at the watermark "
                    f"({codec.short_repr(anchor.job, 60)}) first; taskmaster runs it from the "
                    "checkpoint. Make get_jobs restart at last, "
                    "inclusive, as in range(last, ...)."
                )
        else:
            source._pushback = first
        return source
    return _skip_to(get_jobs, kwargs, watermark, anchor)


def _skip_to(
    get_jobs: Callable[..., Any], kwargs: dict[str, Any], watermark: int, anchor: Anchor
) -> JobSource:
    source = call_get_jobs(get_jobs, kwargs)
    try:
        collections.deque(itertools.islice(source._it, anchor.seq), maxlen=0)
    except Exception as exc:
        source._fail(exc)
        return source
    here = source.pull(1, max_wait=float("inf"))
    if source.error is not None:
        return source
    if not here or codec.job_digest(here[0]) != anchor.digest:
        found = codec.short_repr(here[0], 60) if here else "the end of the jobs"
        raise CheckpointError(
            f"cannot resume: get_jobs has no 'last' parameter, so taskmaster skips the first "
            f"{anchor.seq} jobs, but job {anchor.seq} is now {found} where the checkpoint "
            f"recorded {codec.short_repr(anchor.job, 60)}. The generator no longer yields the "
            "same jobs in the same order. Give get_jobs a 'last' parameter, or --reset."
        )
    source._pushback = here if anchor.seq == watermark else []
    return source
