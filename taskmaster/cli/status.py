"""``tm-status``: where a run stands, read from its files without touching them.

Safe while the run is going: the checkpoint is replaced atomically, so a read sees the old
or the new file, and the failures file is only appended to.
"""

from __future__ import annotations

import collections
import datetime
import fcntl
import glob
import os

from taskmaster.errors import TaskmasterError, UsageError
from taskmaster.record import field, record
from taskmaster.store import checkpoint, codec, durable
from taskmaster.store.checkpoint import State, StateLock
from taskmaster.store.failures import FailureRecord, read_records


@record(frozen=False)
class FailureGroup:
    error_type: str
    count: int
    example: FailureRecord


@record(frozen=False)
class Status:
    path: str
    state: State
    running_pid: str | None
    failures_path: str
    groups: list[FailureGroup] = field(default_factory=list)


def find_state_file(folder: str = ".") -> str:
    """The single ``*.state.json`` in ``folder``, or a UsageError listing the choices."""
    found = sorted(glob.glob(os.path.join(folder, "*.state.json")))
    if len(found) == 1:
        return found[0]
    if not found:
        raise UsageError(
            f"no *.state.json in {os.path.abspath(folder)}: give the state file, "
            "e.g. tm-status jobs.state.json"
        )
    raise UsageError(f"several state files here ({', '.join(found)}): name the one you want")


def running_pid(state_path: str) -> str | None:
    """The pid of the run holding the state file's lock, or None if none holds it."""
    lock = StateLock(state_path).path
    try:
        fd = durable.open_file(lock, os.O_RDONLY)
    except (OSError, TaskmasterError):
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return os.read(fd, 20).decode(errors="replace").strip() or "?"
    finally:
        os.close(fd)
    return None


def group_failures(path: str) -> list[FailureGroup]:
    groups: dict[str, FailureGroup] = {}
    counts: collections.Counter[str] = collections.Counter()
    try:
        for rec in read_records(path):
            kind = rec.kind.group(rec.error)
            counts[kind] += 1
            groups.setdefault(kind, FailureGroup(kind, 0, rec))
    except FileNotFoundError:
        return []
    for kind, group in groups.items():
        group.count = counts[kind]
    return sorted(groups.values(), key=lambda g: -g.count)


def read_status(path: str, failures_path: str) -> Status:
    state = checkpoint.read(path, unpickle=False)  # never run a pickle from a file to show it
    if state is None:
        raise UsageError(f"no state file at {path}")
    return Status(path, state, running_pid(path), failures_path, group_failures(failures_path))


def _when(ts: float) -> str:
    if not ts:
        return "-"
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S")


def render(status: Status) -> str:
    s = status.state
    if status.running_pid:
        where = f"running (pid {status.running_pid})"
    elif s.finished:
        where = "finished"
    else:
        where = "stopped; continue with --resume"
    args = " ".join(f"{k}={v}" for k, v in sorted(s.kwargs.items())) or "-"
    lines = [
        f"state file   {status.path}",
        f"target       {s.target}",
        f"arguments    {args}",
        f"status       {where}",
        f"watermark    {s.watermark:,} (every job below it is done or recorded failed)",
        f"done         {s.done:,}",
        f"failed       {s.failed:,}",
        f"started      {_when(s.started)}",
        f"checkpoint   {_when(s.updated)}",
        f"last rate    {s.rate:,.0f} jobs/s (run {s.runs})",
    ]
    if s.anchor is not None:
        lines.append(f"resumes at   job {s.anchor.seq:,}: {codec.short_repr(s.anchor.job, 100)}")
    if s.limit is not None:
        lines.append(f"limit        {s.limit:,} (--limit; --resume without it goes on)")
    if status.groups:
        lines.append(f"failures     {status.failures_path}")
        for g in status.groups:
            lines.append(
                f"  {g.count:>8,}  {g.error_type}: e.g. job {g.example.seq} "
                f"{g.example.job_repr[:60]}: {_continued(g.example.error)}"
            )
    return "\n".join(lines)


def _continued(error: str, most: int = 4) -> str:
    """An error message of several lines (SQL errors have them) with its next lines
    indented under the failure row, not run on as if they were rows of their own."""
    rows = [row[:100] for row in error.strip().splitlines()] or [""]
    if len(rows) > most:
        rows = [*rows[: most - 1], "..."]
    return "\n".join([rows[0], *("              " + row for row in rows[1:])])
