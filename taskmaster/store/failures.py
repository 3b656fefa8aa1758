"""failures.jsonl: one JSON object per job that failed for good, appended and fsynced.

A failed job counts as resolved only after its line is durably written, so the watermark
never passes a failure that could be lost in a crash.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from taskmaster.errors import StateIOError
from taskmaster.store import codec


class FailureKind(enum.Enum):
    """Why a job failed for good. The record's ``error`` text stays readable on its own."""

    RAISED = "raised"  # the handler raised: error is "Type: message"
    WORKER_DIED = "WorkerDied"  # its worker died while running it, on every attempt
    JOB_TIMEOUT = "JobTimeout"  # it ran over --job-timeout
    ENCODE_ERROR = "EncodeError"  # pickle and dill could not serialize it
    UNPICKLE_ERROR = "UnpickleError"  # the worker could not rebuild it

    def text(self, detail: str) -> str:
        """The error text of a failure of this kind: ``"WorkerDied: <detail>"``."""
        return f"{self.value}: {detail}"

    def group(self, error: str) -> str:
        """What tm-status groups failures by: the exception type, or the kind."""
        if self is FailureKind.RAISED:
            return error.partition(":")[0].strip() or "Error"
        return str(self.value)

    @classmethod
    def of(cls, error: str) -> FailureKind:
        """The kind of a record written before records carried one, from its text."""
        prefix = error.partition(":")[0]
        for kind in cls:
            if kind is not cls.RAISED and prefix == kind.value:
                return kind
        return cls.RAISED


@dataclass(frozen=True, slots=True)
class FailureRecord:
    seq: int
    job_repr: str
    codec: str | None
    payload: bytes | None
    error: str
    traceback: str
    attempts: int
    time: float
    kind: FailureKind = FailureKind.RAISED

    def to_json(self) -> str:
        return json.dumps(
            {
                "seq": self.seq,
                "kind": self.kind.value,
                "job": self.job_repr,
                "codec": self.codec,
                "payload": None
                if self.payload is None
                else base64.b64encode(self.payload).decode(),
                "error": self.error,
                "traceback": self.traceback,
                "attempts": self.attempts,
                "time": round(self.time, 3),
            }
        )

    @classmethod
    def from_json(cls, line: str) -> FailureRecord:
        d = json.loads(line)
        payload = d.get("payload")
        error = str(d.get("error", ""))
        try:
            kind = FailureKind(d["kind"]) if "kind" in d else FailureKind.of(error)
        except ValueError:
            kind = FailureKind.of(error)
        return cls(
            seq=int(d["seq"]),
            job_repr=str(d.get("job", "")),
            codec=d.get("codec"),
            payload=None if payload is None else base64.b64decode(payload),
            error=error,
            traceback=str(d.get("traceback", "")),
            attempts=int(d.get("attempts", 0)),
            time=float(d.get("time", 0.0)),
            kind=kind,
        )


def make_record(
    seq: int, job: Any, kind: FailureKind, error: str, tb: str, attempts: int
) -> FailureRecord:
    try:
        name, data = codec.dumps(job)
        payload: bytes | None = data
        used: str | None = name
    except codec.EncodeError:
        payload, used = None, None
    return FailureRecord(
        seq, codec.short_repr(job), used, payload, error, tb, attempts, time.time(), kind
    )


class FailureLog:
    """Appends failure records durably; the file is opened on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = None

    def append(self, records: list[FailureRecord]) -> None:
        if not records:
            return
        data = "".join(r.to_json() + "\n" for r in records).encode()
        size = None
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            size = os.fstat(self._fd).st_size
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]
            os.fsync(self._fd)
        except OSError as exc:
            if size is not None and self._fd is not None:
                # Records that are not durable are not trusted: take them back (best effort).
                with contextlib.suppress(OSError):
                    os.ftruncate(self._fd, size)
            raise StateIOError(
                f"writing the failures file {self.path} failed: {exc.strerror or exc}. "
                "The checkpoint was not advanced past those jobs; fix the folder, then --resume."
            ) from None

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def read_records(path: str) -> Iterator[FailureRecord]:
    """The records of a failures file; a torn last line (crash mid-append) is skipped."""
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break
            if line.strip():
                yield FailureRecord.from_json(line)
