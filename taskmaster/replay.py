"""``--retry-failed``: run the jobs of the failures file again, from their stored payloads.

The failures file is only replaced at the end, atomically, with the jobs that still fail
(plus any that were not reached, e.g. after Ctrl-C), so a crash mid-replay loses nothing:
the old file stands and the next replay runs the same jobs again (handlers are idempotent).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from taskmaster.core.events import Transport
from taskmaster.core.ledger import Ledger
from taskmaster.core.source import JobSource
from taskmaster.core.stats import Reporter, RunStats
from taskmaster.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, UsageError
from taskmaster.options import Options
from taskmaster.runner import (
    QuietReporter,
    execute,
    failures_file_for,
    make_local_transport,
    validate_options,
)
from taskmaster.store import checkpoint, codec
from taskmaster.store.checkpoint import State, StateLock
from taskmaster.store.failures import FailureLog, FailureRecord, read_records


def _load(path: str) -> list[FailureRecord]:
    try:
        return list(read_records(path))
    except FileNotFoundError:
        raise UsageError(f"no failures file at {path}: nothing to retry") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise UsageError(
            f"{path} is not a taskmaster failures file ({exc}); it was left as it is"
        ) from None


def _decode(
    records: list[FailureRecord],
) -> tuple[list[FailureRecord], list[Any], list[FailureRecord]]:
    """Split records into (retryable, their jobs, unretryable)."""
    keep, jobs, stuck = [], [], []
    for rec in records:
        if rec.payload is None or rec.codec is None:
            stuck.append(rec)
            continue
        try:
            jobs.append(codec.loads(rec.codec, rec.payload))
            keep.append(rec)
        except Exception as exc:
            stuck.append(replace(rec, error=f"{rec.error} (payload no longer decodes: {exc})"))
    return keep, jobs, stuck


def retry_failed(
    handle_job: Callable[[Any], Any] | None,
    *,
    reporter: Reporter | None = None,
    setup_worker: Callable[[], Any] | None = None,
    teardown_worker: Callable[[], Any] | None = None,
    handle_batch: Callable[[list[Any]], Any] | None = None,
    transport: Transport | None = None,
    kwargs: dict[str, str] | None = None,
    **options: Any,
) -> RunStats:
    """Run the failed jobs again; the ones that succeed leave the failures file.
    ``kwargs`` (the run's KEY=VALUE) reach a ``setup_worker`` that takes arguments."""
    opt: Options = validate_options(options)
    if not opt.state_file and not opt.failures_file:
        raise UsageError("--retry-failed needs --state-file or --failures to find the failures")
    path = opt.failures_file or failures_file_for(opt.state_file or "")
    reporter = reporter or QuietReporter()
    lock = StateLock(opt.state_file or path)
    lock.acquire()
    try:
        records = _load(path)
        retryable, jobs, stuck = _decode(records)
        if stuck:
            reporter.message(
                f"{len(stuck)} failed jobs have no stored payload and stay as they are"
            )
        tmp = os.path.join(
            os.path.dirname(os.path.abspath(path)), f".{os.path.basename(path)}.retry"
        )
        if os.path.exists(tmp):
            os.unlink(tmp)
        log = FailureLog(tmp)
        opt = replace(opt, limit=None, size=max(1, min(opt.size, len(jobs) or 1)))
        transport = transport or make_local_transport(
            opt, handle_job, setup_worker, teardown_worker, handle_batch, kwargs
        )
        base = State(target="retry-failed", kwargs={})
        try:
            stats = execute(
                opt, lambda: JobSource(iter(jobs)), transport, Ledger(), base, None, log, reporter
            )
        finally:
            log.close()
        new = list(read_records(tmp)) if os.path.exists(tmp) else []
        still = _remap(new, retryable)
        failed_again = {r.seq for r in new}
        untried = [
            rec
            for i, rec in enumerate(retryable)
            if i >= stats.watermark
            and i not in failed_again
            and stats.exit_code == EXIT_INTERRUPTED
        ]
        remaining = stuck + still + untried
        checkpoint.write_durable(path, "".join(r.to_json() + "\n" for r in remaining).encode())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        _update_counts(opt.state_file, stats.done_this_run, len(remaining))
        stats.failed = stats.failed_this_run = len(remaining)
        stats.failures_file = path
        if stats.exit_code != EXIT_INTERRUPTED:
            stats.exit_code = EXIT_FAILED if remaining else EXIT_OK
        return stats
    finally:
        lock.release()


def _remap(new: list[FailureRecord], originals: list[FailureRecord]) -> list[FailureRecord]:
    """Failure records of the replay carry replay seqs; give them back their own."""
    out = []
    for rec in new:
        orig = originals[rec.seq]
        out.append(replace(rec, seq=orig.seq, attempts=orig.attempts + rec.attempts))
    return out


def _update_counts(state_file: str | None, succeeded: int, failed: int) -> None:
    if not state_file:
        return
    try:
        state = checkpoint.read(state_file)
    except Exception:
        return  # a bad checkpoint is reported by the next run, never overwritten here
    if state is not None:
        new = replace(state, done=state.done + succeeded, failed=failed)
        checkpoint.write_durable(state_file, checkpoint.encode(new))
