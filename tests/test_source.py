"""Lining a resumed generator up with its seqs (open_source), and pulling from it (JobSource).

The checkpoint's anchor is the job at the watermark when it is unresolved (seq ==
watermark), or the job just before it when it is resolved (seq == watermark - 1). Whatever
the generator's convention for ``last``, the next job the source gives has seq ``watermark``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from taskmaster.core.source import (
    JobSource,
    accepts_last,
    call_get_jobs,
    check_kwargs,
    open_source,
)
from taskmaster.errors import CheckpointError, GeneratorError, UsageError
from taskmaster.store import codec
from taskmaster.store.checkpoint import Anchor

N = 10


def jobs_at(seq: int) -> str:
    return f"row-{seq}"


def inclusive(last: str | None = None, **kwargs: Any) -> Iterator[str]:
    """Restarts AT last, like range(last, ...)."""
    start = 0 if last is None else int(last.split("-")[1])
    for seq in range(start, N):
        yield jobs_at(seq)


def exclusive(last: str | None = None, **kwargs: Any) -> Iterator[str]:
    """Restarts AFTER last, like a query 'WHERE id > last'."""
    start = 0 if last is None else int(last.split("-")[1]) + 1
    for seq in range(start, N):
        yield jobs_at(seq)


def no_last(**kwargs: Any) -> Iterator[str]:
    for seq in range(N):
        yield jobs_at(seq)


def anchor(seq: int, job: Any = None) -> Anchor:
    job = jobs_at(seq) if job is None else job
    return Anchor(seq, job, codec.job_digest(job))


def drain(source: JobSource) -> list[Any]:
    out: list[Any] = []
    while not source.exhausted:
        out += source.pull(3)
    return out


def rest_from(seq: int) -> list[str]:
    return [jobs_at(s) for s in range(seq, N)]


# -- with a 'last' parameter -------------------------------------------------------------------


@pytest.mark.parametrize("get_jobs", [inclusive, exclusive, no_last])
def test_fresh_start_yields_everything(get_jobs: Any) -> None:
    source = open_source(get_jobs, {})
    assert drain(source) == rest_from(0)
    assert source.notice is None and source.error is None


def test_fresh_start_does_not_pass_last() -> None:
    calls: list[dict[str, Any]] = []

    def get_jobs(last: Any = "unset", **kwargs: Any) -> Iterator[str]:
        calls.append({"last": last, **kwargs})
        return inclusive()

    drain(open_source(get_jobs, {"table": "users"}))
    assert calls == [{"last": "unset", "table": "users"}]


def test_inclusive_generator_unresolved_anchor() -> None:
    source = open_source(inclusive, {}, watermark=5, anchor=anchor(5))
    assert drain(source) == rest_from(5)
    assert source.notice is None


def test_inclusive_generator_resolved_anchor() -> None:
    source = open_source(inclusive, {}, watermark=6, anchor=anchor(5))
    assert drain(source) == rest_from(6)
    assert source.notice is None


def test_exclusive_generator_unresolved_anchor_runs_from_the_checkpoint_copy() -> None:
    source = open_source(exclusive, {}, watermark=5, anchor=anchor(5))
    assert drain(source) == rest_from(5)
    assert source.notice is not None
    assert "row-5" in source.notice and "inclusive" in source.notice


def test_exclusive_generator_resolved_anchor() -> None:
    source = open_source(exclusive, {}, watermark=6, anchor=anchor(5))
    assert drain(source) == rest_from(6)
    assert source.notice is None


def test_exclusive_generator_unresolved_last_job() -> None:
    # the anchor is the very last job: the generator yields nothing after it
    source = open_source(exclusive, {}, watermark=N - 1, anchor=anchor(N - 1))
    assert drain(source) == [jobs_at(N - 1)]
    assert source.notice is not None


def test_source_with_jobs_pushed_back_is_not_exhausted() -> None:
    # The coordinator stops pulling once the source is exhausted: a job pushed back in
    # front of an ended generator must still come out.
    source = open_source(exclusive, {}, watermark=N - 1, anchor=anchor(N - 1))
    assert not source.exhausted
    assert source.pull(5) == [jobs_at(N - 1)]
    assert source.exhausted


def test_generator_raising_at_once_on_resume_still_gives_the_anchor() -> None:
    def broken(last: Any = None) -> Iterator[str]:
        raise ValueError("database went away")
        yield "never"

    source = open_source(broken, {}, watermark=5, anchor=anchor(5))
    assert drain(source) == [jobs_at(5)]
    assert isinstance(source.error, GeneratorError)
    assert source.notice is None, "the error explains the missing job, not a notice"


@pytest.mark.parametrize("get_jobs", [inclusive, exclusive])
def test_resolved_last_job_yields_nothing_more(get_jobs: Any) -> None:
    source = open_source(get_jobs, {}, watermark=N, anchor=anchor(N - 1))
    assert drain(source) == []


def test_last_and_kwargs_reach_get_jobs() -> None:
    calls: list[dict[str, Any]] = []

    def get_jobs(last: Any = None, **kwargs: Any) -> Iterator[str]:
        calls.append({"last": last, **kwargs})
        return inclusive(last)

    drain(open_source(get_jobs, {"table": "users"}, watermark=5, anchor=anchor(5)))
    assert calls == [{"last": "row-5", "table": "users"}]


def test_non_json_anchor_is_handed_back_as_it_was() -> None:
    seen: list[Any] = []

    def get_jobs(last: Any = None) -> Iterator[tuple[int, str]]:
        seen.append(last)
        start = 0 if last is None else last[0]
        for i in range(start, N):
            yield (i, "x")

    source = open_source(get_jobs, {}, watermark=4, anchor=anchor(4, (4, "x")))
    assert drain(source) == [(i, "x") for i in range(4, N)]
    assert seen == [(4, "x")]


# -- without 'last': skip by watermark, check against the anchor -------------------------------


def test_no_last_unresolved_anchor_skips_to_the_watermark() -> None:
    source = open_source(no_last, {}, watermark=5, anchor=anchor(5))
    assert drain(source) == rest_from(5)


def test_no_last_resolved_anchor_skips_to_the_watermark() -> None:
    source = open_source(no_last, {}, watermark=6, anchor=anchor(5))
    assert drain(source) == rest_from(6)


def test_no_last_at_the_end() -> None:
    assert drain(open_source(no_last, {}, watermark=N, anchor=anchor(N - 1))) == []


def test_no_last_changed_jobs_are_refused() -> None:
    def shifted(**kwargs: Any) -> Iterator[str]:
        for seq in range(N):
            yield jobs_at(seq + 1)  # a row was deleted at the front

    with pytest.raises(CheckpointError) as info:
        open_source(shifted, {}, watermark=5, anchor=anchor(5))
    message = str(info.value)
    assert "no 'last' parameter" in message
    assert "'row-6'" in message and "'row-5'" in message and "job 5" in message
    assert "--reset" in message


def test_no_last_shorter_generator_is_refused() -> None:
    def shorter(**kwargs: Any) -> Iterator[str]:
        for seq in range(3):
            yield jobs_at(seq)

    with pytest.raises(CheckpointError, match="the end of the jobs"):
        open_source(shorter, {}, watermark=5, anchor=anchor(5))


def test_no_last_generator_raising_while_skipped_reports_the_error() -> None:
    def broken(**kwargs: Any) -> Iterator[str]:
        yield jobs_at(0)
        raise ValueError("database went away")

    source = open_source(broken, {}, watermark=5, anchor=anchor(5))
    assert source.exhausted and drain(source) == []
    assert isinstance(source.error, GeneratorError)
    assert "database went away" in str(source.error)


def test_accepts_last() -> None:
    assert accepts_last(inclusive) and not accepts_last(no_last)


# -- JobSource.pull ----------------------------------------------------------------------------


def raising_after(k: int) -> Iterator[int]:
    yield from range(k)
    raise ValueError(f"bad row after {k}")


@pytest.mark.parametrize("k", [0, 1, 2, 4, 5, 7, 20])
def test_pull_keeps_jobs_yielded_before_a_raise(k: int) -> None:
    source = JobSource(raising_after(k))
    got = source.pull(100, max_wait=float("inf"))
    assert got == list(range(k))
    assert source.exhausted
    assert isinstance(source.error, GeneratorError)
    assert f"ValueError: bad row after {k}" in str(source.error)
    assert "raising_after" in source.error.traceback_text
    assert source.pull(10) == []


def test_pull_across_calls_before_a_raise() -> None:
    source = JobSource(raising_after(7))
    got: list[int] = []
    while not source.exhausted:
        got += source.pull(3, max_wait=float("inf"))
    assert got == list(range(7))
    assert source.error is not None


def test_pull_gives_pushback_first_and_respects_n() -> None:
    source = JobSource(iter(range(10, 20)), pushback=["a", "b", "c"])
    assert source.pull(2) == ["a", "b"]
    assert source.pull(3, max_wait=float("inf")) == ["c", 10, 11]
    assert not source.exhausted
    assert source.pull(100, max_wait=float("inf")) == list(range(12, 20))
    assert source.exhausted and source.error is None


def test_get_jobs_with_wrong_kwargs() -> None:
    def get_jobs(last: Any = None) -> Iterator[int]:
        yield 1

    with pytest.raises(GeneratorError, match="KEY=VALUE"):
        call_get_jobs(get_jobs, {"table": "x"})


def test_get_jobs_raising_before_its_first_yield() -> None:
    def get_jobs(last: Any = None) -> Iterator[int]:
        raise RuntimeError("no connection")

    with pytest.raises(GeneratorError, match="RuntimeError: no connection"):
        call_get_jobs(get_jobs, {})


def test_check_kwargs_refuses_what_get_jobs_cannot_take() -> None:
    def get_jobs(table: str, last: Any = None) -> Iterator[int]:
        yield 1

    check_kwargs(get_jobs, {"table": "users"})
    with pytest.raises(UsageError, match="unexpected keyword argument 'tabel'"):
        check_kwargs(get_jobs, {"table": "users", "tabel": "x"})
    with pytest.raises(UsageError, match="missing a required argument: 'table'"):
        check_kwargs(get_jobs, {})
    check_kwargs(inclusive, {"anything": "goes"})  # **kwargs takes all
