"""``--retry-failed``: the ordinary run over another job source, the failures file.

The replay runs the stored payloads of the failures file through :func:`runner.execute`,
like any run, with a temporary failures file of its own and no checkpoint. At its end,
whatever stopped it, the failures file is replaced, atomically, by every record the
replay did not finish: the jobs that failed again (with their new error and attempts), the
ones it did not reach or that were in flight when it stopped, and the ones that cannot be
decoded. Only a job whose result came back done leaves the file. A crash mid-replay leaves
the old file standing, and the next replay runs the same jobs again (handlers are
idempotent).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from typing import Any

from taskmaster.core.code import JobCode
from taskmaster.core.events import Transport
from taskmaster.core.ledger import Ledger
from taskmaster.core.source import JobSource
from taskmaster.core.stats import Reporter, RunStats
from taskmaster.core.stop import exit_code
from taskmaster.errors import UsageError
from taskmaster.options import Options
from taskmaster.record import replace
from taskmaster.runner import Opened, QuietReporter, execute, failures_file_for, validate_options
from taskmaster.store import checkpoint, codec
from taskmaster.store.checkpoint import State
from taskmaster.store.failures import FailureLog, FailureRecord, load_for_retry, read_records


class Replay:
    """The Plan of a --retry-failed run (see :class:`taskmaster.runner.Plan`)."""

    def __init__(self, opt: Options) -> None:
        if not opt.state_file and not opt.failures_file:
            raise UsageError("--retry-failed needs --state-file or --failures to find the failures")
        self.path = opt.failures_file or failures_file_for(opt.state_file or "")
        self.state_file = opt.state_file
        self.lock_path: str | None = opt.state_file or self.path
        self.tmp = os.path.join(
            os.path.dirname(os.path.abspath(self.path)), f".{os.path.basename(self.path)}.retry"
        )
        self.retryable: list[FailureRecord] = []
        self.stuck: list[FailureRecord] = []

    def open(self, opt: Options, reporter: Reporter) -> Opened:
        self.retryable, jobs, self.stuck = _decode(_load(self.path))
        if self.stuck:
            reporter.message(
                f"{len(self.stuck)} failed jobs have no stored payload and stay as they are"
            )
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        log = FailureLog(self.tmp)
        opt = replace(opt, limit=None, size=max(1, min(opt.size or len(jobs), len(jobs))))
        return Opened(
            opt,
            lambda: JobSource(iter(jobs), total=len(jobs)),
            Ledger(),
            State(target="retry-failed", kwargs={}),
            None,
            log,
            log.close,
        )

    def finish(self, stats: RunStats, opened: Opened) -> RunStats:
        """Keep every record the replay did not finish, whatever stopped it."""
        new = list(read_records(self.tmp)) if os.path.exists(self.tmp) else []
        failed_again = {r.seq: r for r in new}
        ledger = opened.ledger
        remaining = list(self.stuck)
        for i, rec in enumerate(self.retryable):
            again = failed_again.get(i)
            if again is not None:
                remaining.append(
                    replace(again, seq=rec.seq, attempts=rec.attempts + again.attempts)
                )
            elif not ledger.is_resolved(i):
                remaining.append(rec)  # not reached, or in flight when the run stopped
        data = "".join(r.to_json() + "\n" for r in sorted(remaining, key=lambda r: r.seq))
        checkpoint.write_durable(self.path, data.encode())
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.tmp)
        _update_counts(self.state_file, stats.done_this_run, len(remaining))
        return replace(
            stats,
            failed=len(remaining),
            failed_this_run=len(failed_again),
            failures_file=self.path,
            state_file=self.state_file,
            exit_code=exit_code(stats.stop, len(remaining)),
            retry_failed=True,
        )


def retry_failed(
    handle_job: Callable[[Any], Any] | None,
    *,
    kwargs: dict[str, str] | None = None,
    reporter: Reporter | None = None,
    setup_worker: Callable[..., Any] | None = None,
    teardown_worker: Callable[[], Any] | None = None,
    handle_batch: Callable[[list[Any]], Any] | None = None,
    transport: Transport | None = None,
    **options: Any,
) -> RunStats:
    """Run the failed jobs again; the ones that succeed leave the failures file."""
    opt = validate_options(options)
    code = JobCode(handle_job, handle_batch, setup_worker, teardown_worker, dict(kwargs or {}))
    return execute(opt, Replay(opt), code, reporter or QuietReporter(), transport)


def _load(path: str) -> list[FailureRecord]:
    try:
        return load_for_retry(path)  # ours and authentic, or refused: payloads get unpickled
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
