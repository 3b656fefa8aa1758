"""failures.jsonl: one JSON object per job that failed for good, appended and fsynced.

A failed job counts as resolved only after its line is durably written, so the watermark
never passes a failure that could be lost in a crash.

Each line carries an HMAC under the per-user key (keys.py): ``--retry-failed`` decodes a
job's pickled payload only from a line whose MAC holds, in a file that passed the ownership
checks (durable.py). Lines written before the MAC existed have no ``mac`` field and are
trusted on the ownership checks alone, as version 1 checkpoints are.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import json
import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from taskmaster.errors import CheckpointError, StateIOError
from taskmaster.record import record
from taskmaster.store import codec, durable, keys

MAX_LISTED = 10  # line numbers named in a refusal


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


@record
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
        doc: dict[str, Any] = {
            "seq": self.seq,
            "kind": self.kind.value,
            "job": self.job_repr,
            "codec": self.codec,
            "payload": None if self.payload is None else base64.b64encode(self.payload).decode(),
            "error": self.error,
            "traceback": self.traceback,
            "attempts": self.attempts,
            "time": round(self.time, 3),
        }
        doc["mac"] = keys.sign(_canonical(doc))
        return json.dumps(doc)

    @classmethod
    def from_json(cls, line: str) -> FailureRecord:
        return cls.from_doc(json.loads(line))

    @classmethod
    def from_doc(cls, d: dict[str, Any]) -> FailureRecord:
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


def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "mac"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def make_record(
    seq: int,
    job: Any,
    error: str,
    tb: str,
    attempts: int,
    kind: FailureKind = FailureKind.RAISED,
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
        # Refuse a planted link or foreign file now, not at the first failure mid-run.
        durable.check_folder(durable.folder_of(path))
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            return
        except OSError as exc:
            raise StateIOError(f"cannot use the failures file {path}: {exc.strerror}") from None
        if os.path.islink(path):
            raise durable.refusal(
                path, "it is a symbolic link, and taskmaster never follows links there"
            )
        durable.check_file(path, st)

    def append(self, records: list[FailureRecord]) -> None:
        if not records:
            return
        data = "".join(r.to_json() + "\n" for r in records).encode()
        size = None
        try:
            if self._fd is None:
                fd = durable.open_file(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
                try:
                    durable.check_file(self.path, os.fstat(fd))
                except CheckpointError:
                    os.close(fd)
                    raise
                self._fd = fd
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


def _lines(path: str, owned: bool = False) -> Iterator[str]:
    """The complete lines of a failures file, opened without following a link; with
    ``owned``, it must pass durable.check_file."""
    fd = durable.open_file(path, os.O_RDONLY)
    try:
        if owned:
            durable.check_file(path, os.fstat(fd))
    except BaseException:
        os.close(fd)
        raise
    with open(fd, encoding="utf-8") as f:
        for line in f:
            if not line.endswith("\n"):
                break  # a torn last line (crash mid-append)
            yield line


def read_records(path: str) -> Iterator[FailureRecord]:
    """The records of a failures file, unverified (for display); a torn last line is skipped."""
    for line in _lines(path):
        if line.strip():
            yield FailureRecord.from_json(line)


def load_for_retry(path: str) -> list[FailureRecord]:
    """The records of a file of ours whose every line is authentic: their payloads may be
    unpickled. Raises CheckpointError naming the lines that are not."""
    durable.check_folder(durable.folder_of(path))
    records, bad = [], []
    for number, line in enumerate(_lines(path, owned=True), 1):
        if not line.strip():
            continue
        doc = json.loads(line)
        if not isinstance(doc, dict):
            raise ValueError(f"line {number} is not an object")
        if "mac" in doc and not keys.verify(_canonical(doc), doc["mac"]):
            bad.append(number)
            continue
        records.append(FailureRecord.from_doc(doc))
    if bad:
        listed = ", ".join(map(str, bad[:MAX_LISTED])) + (
            f" and {len(bad) - MAX_LISTED} more" if len(bad) > MAX_LISTED else ""
        )
        which = f"lines {listed} fail their" if len(bad) > 1 else f"line {listed} fails its"
        raise CheckpointError(
            f"refusing {path}: {which} MAC: "
            f"edited, or written with another key than yours ({keys.key_path()}). Their "
            "jobs were not decoded and nothing was run; the file was left as it is. Delete "
            "those lines (their jobs are lost to --retry-failed) to retry the others."
        )
    return records


def forget_unresolved(path: str, resolved: Callable[[int], bool]) -> int:
    """Drop the lines of jobs the checkpoint does not count as resolved; returns how many.

    A job that failed for good after the last checkpoint was written has its line here, but
    the checkpoint does not count it, so a resumed run runs it again and records it again if
    it fails again: without this, the file would hold it twice (and ``--retry-failed`` would
    run it twice). Kept lines are copied byte for byte, so their MACs still hold. The file
    is replaced atomically and durably; a missing file is left missing.
    """
    try:
        lines = list(_lines(path, owned=True))
    except FileNotFoundError:
        return 0
    keep = []
    for line in lines:
        if not line.strip():
            continue
        try:
            seq = int(json.loads(line)["seq"])
        except (ValueError, KeyError, TypeError):
            keep.append(line)  # not ours to judge: --retry-failed will say what is wrong
            continue
        if resolved(seq):
            keep.append(line)
    dropped = len(lines) - len(keep)
    if dropped:
        durable.write_durable(path, "".join(keep).encode())
    return dropped
