"""What the master and the slaves say to each other, beyond the framing of :mod:`wire`.

Message kinds (the JSON ``body`` of each; every slave frame but ``hello`` and ``bye`` also
carries ``status``):

slave -> master
    ``hello`` {nonce, pid, host, max_frame}: asks for a session; no run id yet.
    ``status`` {}: a heartbeat, and the slave's credit.
    ``done`` {task, elapsed, failures: [[index, error, traceback], ...]}.
    ``unreadable`` {task, error, traceback}: its worker could not decode the batch.
    ``timed_out`` {task, index, seconds}: a job ran past --job-timeout.
    ``worker_lost`` {tasks, queued, worker, pid, reason}: a local worker died.
    ``leave`` {}: Ctrl-C; no more batches please. ``bye`` {}: gone (also the answer to
    every ``stop``: the master waits for it, since closing first would lose the stop).

master -> slave
    ``welcome`` {nonce, heartbeat, timeout, target}: echoes the slave's nonce; its run id
    is the session. ``task`` {task, first, count, codec} + the jobs as payload.
    ``heartbeat`` {}. ``leave_ok`` {}. ``rejoin`` {}: an unknown run; say hello again.
    ``stop`` {finished, kill[, nonce]}: the run ended (finished: exit) or was interrupted
    (wait for a new master; kill: end this run's jobs first); with the nonce of a hello
    when the slave never joined. ``refused`` {reason}: e.g. a protocol mismatch.

``status`` = {ack: the last master seq seen, free: free batch slots, held: master task ids
still held}. The master derives the credit from it and notices batches lost on the way.
"""

from __future__ import annotations

import json
from typing import Any

from taskmaster.core.events import BatchDone, BatchUnreadable, JobFailed, JobTimedOut

MAX_TEXT = 1 << 20
MAX_LIST = 1 << 20
FAILURE_BUDGET = 1024 * 1024  # bytes of failure JSON in one result frame


class MalformedBody(Exception):
    """A signed frame whose body lacks a field or has a wrong type."""


class Body:
    """Typed reads from a JSON body; anything unexpected raises MalformedBody."""

    __slots__ = ("_doc",)

    def __init__(self, doc: dict[str, Any]) -> None:
        self._doc = doc

    def _get(self, key: str, default: Any) -> Any:
        value = self._doc.get(key, default)
        if value is None:
            raise MalformedBody(f"no {key!r}")
        return value

    def integer(self, key: str, default: int | None = None) -> int:
        value = self._get(key, default)
        if not isinstance(value, int) or isinstance(value, bool):
            raise MalformedBody(f"{key!r} is not a whole number")
        return value

    def number(self, key: str) -> float:
        value = self._get(key, None)
        if not isinstance(value, (int, float)) or isinstance(value, bool):
            raise MalformedBody(f"{key!r} is not a number")
        return float(value)

    def text(self, key: str, default: str | None = None) -> str:
        value = self._get(key, default)
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            raise MalformedBody(f"{key!r} is not text")
        return value

    def integers(self, key: str) -> list[int]:
        value = self._get(key, [])
        if (
            not isinstance(value, list)
            or len(value) > MAX_LIST
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)
        ):
            raise MalformedBody(f"{key!r} is not a list of whole numbers")
        return value

    def flag(self, key: str) -> bool:
        value = self._get(key, False)
        if not isinstance(value, bool):
            raise MalformedBody(f"{key!r} is not true or false")
        return value

    def child(self, key: str) -> Body:
        value = self._get(key, None)
        if not isinstance(value, dict):
            raise MalformedBody(f"{key!r} is not an object")
        return Body(value)

    def failures(self, key: str) -> list[JobFailed]:
        value = self._get(key, [])
        if not isinstance(value, list) or len(value) > MAX_LIST:
            raise MalformedBody(f"{key!r} is not a list")
        out = []
        for item in value:
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], int)
                and isinstance(item[1], str)
                and isinstance(item[2], str)
            ):
                raise MalformedBody(f"{key!r} holds something else than [index, error, traceback]")
            out.append(JobFailed(item[0], item[1], item[2]))
        return out


def status_body(ack: int, free: int, held: list[int]) -> dict[str, Any]:
    return {"ack": ack, "free": free, "held": held}


def status_of(body: Body) -> tuple[int, int, set[int]]:
    """(ack, free, held) from a slave frame's ``status``."""
    status = body.child("status")
    return status.integer("ack"), status.integer("free"), set(status.integers("held"))


def result_body(
    event: BatchDone | BatchUnreadable | JobTimedOut, task: int
) -> tuple[str, dict[str, Any]]:
    """The kind and body a slave sends for a local worker's result on master batch ``task``."""
    if isinstance(event, BatchDone):
        return "done", {
            "task": task,
            "elapsed": event.elapsed,
            "failures": fit_failures(event.failures),
        }
    if isinstance(event, BatchUnreadable):
        error, tb = event.error[:10_000], event.traceback[-20_000:]
        return "unreadable", {"task": task, "error": error, "traceback": tb}
    return "timed_out", {"task": task, "index": event.index, "seconds": event.seconds}


def result_event(kind: str, task_id: int, body: Body) -> BatchDone | BatchUnreadable | JobTimedOut:
    """The event a slave's ``done``, ``unreadable`` or ``timed_out`` body stands for."""
    if kind == "done":
        return BatchDone(task_id, body.number("elapsed"), tuple(body.failures("failures")))
    if kind == "unreadable":
        return BatchUnreadable(task_id, body.text("error"), body.text("traceback"))
    return JobTimedOut(task_id, body.integer("index"), body.number("seconds"))


def fit_failures(failures: tuple[JobFailed, ...], budget: int = FAILURE_BUDGET) -> list[list[Any]]:
    """Failures as JSON lists, cut to fit ``budget`` bytes of JSON.

    The master caps the size of what it receives (frames.MASTER_MAX_FRAME); a batch of
    thousands of failing jobs with long tracebacks must still get through, so each keeps
    the start of its error and the tail of its traceback, shorter until all fit.
    """
    out = [[f.index, f.error, f.traceback] for f in failures]
    each = budget // max(1, len(failures))
    while _json_size(out) > budget and each > 16:
        out = [[f.index, f.error[: max(40, each // 4)], _tail(f.traceback, each)] for f in failures]
        each //= 2
    if _json_size(out) > budget:
        out = [[f.index, f.error[:40], ""] for f in failures]
    return out


def _tail(text: str, keep: int) -> str:
    return text if len(text) <= keep else "...\n" + text[-keep:]


def _json_size(value: object) -> int:
    return len(json.dumps(value, separators=(",", ":")))  # ASCII, as frames.Sealer writes it
