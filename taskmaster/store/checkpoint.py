"""The state file: what it holds, how it is checked, and how it is written durably.

The file is JSON a person can read. A SHA-256 over its canonical form catches bit flips,
truncation and hand edits; a corrupt file is refused, never overwritten. The job at the
anchor (handed back to ``get_jobs`` as ``last``) is stored as JSON when it round-trips
exactly, else as base64 pickle that is decoded only after the checksum matched.

Write recipe (see RELIABILITY.md): temp file in the same folder, fsync, ``os.replace``,
fsync of the folder. A crash at any point leaves the old or the new file, never a torn one.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass, field
from typing import Any

from taskmaster import failpoints
from taskmaster.errors import CheckpointError, LockedError, StateIOError
from taskmaster.store import codec

FORMAT = "taskmaster-checkpoint"
VERSION = 1
MAX_STATE_BYTES = 64 * 1024 * 1024  # a window of ranges is tiny; anything bigger is not ours


@dataclass(frozen=True, slots=True)
class ResolvedRange:
    """A range resolved above the watermark, with the digest of its jobs' encoding."""

    start: int
    end: int
    digest: str | None


@dataclass(frozen=True, slots=True)
class Anchor:
    """A job the resume starts from: the watermark job, or the last job pulled before it."""

    seq: int
    job: Any
    digest: str


@dataclass(frozen=True, slots=True)
class State:
    target: str
    kwargs: dict[str, str]
    watermark: int = 0
    anchor: Anchor | None = None
    resolved: tuple[ResolvedRange, ...] = ()
    done: int = 0
    failed: int = 0
    finished: bool = False
    limit: int | None = None
    started: float = 0.0
    updated: float = 0.0
    runs: int = 1
    rate: float = 0.0  # jobs/s of the latest run, for tm-status
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint(target: str, kwargs: dict[str, str]) -> str:
    canon = json.dumps([target, sorted(kwargs.items())], separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _checksum(doc: dict[str, Any]) -> str:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return "sha256:" + hashlib.sha256(canon.encode()).hexdigest()


def _encode_job(job: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"repr": codec.short_repr(job)}
    try:
        if json.loads(json.dumps(job)) == job and _same_types(job):
            out["json"] = job
            return out
    except (TypeError, ValueError, RecursionError):
        pass
    name, data = codec.dumps(job)
    out[name] = base64.b64encode(data).decode("ascii")
    return out


def _same_types(job: Any) -> bool:
    # JSON turns tuples into lists and int keys into strings; only plain JSON types survive.
    if isinstance(job, bool) or job is None or isinstance(job, (int, float, str)):
        return True
    if type(job) is list:
        return all(_same_types(x) for x in job)
    if type(job) is dict:
        return all(type(k) is str and _same_types(v) for k, v in job.items())
    return False


def _decode_job(doc: dict[str, Any]) -> Any:
    if "json" in doc:
        return doc["json"]
    for name in (codec.PICKLE, codec.DILL):
        if name in doc:
            return codec.loads(name, base64.b64decode(doc[name], validate=True))
    raise ValueError("anchor job has no payload")


def encode(state: State) -> bytes:
    """Serialize a state to the bytes of a state file."""
    anchor = None
    if state.anchor is not None:
        anchor = {
            "seq": state.anchor.seq,
            "digest": state.anchor.digest,
            "job": _encode_job(state.anchor.job),
        }
    doc: dict[str, Any] = {
        "format": FORMAT,
        "version": VERSION,
        "target": state.target,
        "kwargs": state.kwargs,
        "fingerprint": fingerprint(state.target, state.kwargs),
        "finished": state.finished,
        "watermark": state.watermark,
        "anchor": anchor,
        "resolved": [[r.start, r.end, r.digest] for r in state.resolved],
        "done": state.done,
        "failed": state.failed,
        "limit": state.limit,
        "started": state.started,
        "updated": state.updated,
        "runs": state.runs,
        "rate": round(state.rate, 3),
        "extra": state.extra,
    }
    doc["checksum"] = _checksum(doc)
    return (json.dumps(doc, indent=1) + "\n").encode()


def decode(data: bytes, path: str = "state file") -> State:
    """Parse and verify a state file; raises CheckpointError on anything not ours or corrupt."""
    how = "run with --reset to start over (this deletes it), or --state-file to use another"
    if not data.strip():
        raise CheckpointError(f"{path} is empty: it is not a taskmaster checkpoint; {how}.")
    if len(data) > MAX_STATE_BYTES:
        raise CheckpointError(f"{path} is {len(data)} bytes, too big to be a checkpoint; {how}.")
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}): corrupt or truncated; {how}."
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a taskmaster checkpoint; {how}.")
    if doc.get("version") != VERSION:
        raise CheckpointError(
            f"{path} has format version {doc.get('version')!r}; this taskmaster reads version "
            f"{VERSION}. Use the taskmaster that wrote it, or {how}."
        )
    if doc.get("checksum") != _checksum(doc):
        raise CheckpointError(
            f"{path} fails its checksum: it was corrupted or edited by hand. It was left as it "
            f"is; {how}."
        )
    try:
        return _state_from(doc)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CheckpointError(f"{path} has a malformed field ({exc!r}); {how}.") from None
    except Exception as exc:  # the anchor job failed to unpickle: its class may be gone
        raise CheckpointError(
            f"{path}: the job to resume from cannot be decoded ({type(exc).__name__}: {exc}). "
            f"Is the job module's code importable as when the run started? Else {how}."
        ) from None


def _state_from(doc: dict[str, Any]) -> State:
    anchor = None
    if doc["anchor"] is not None:
        a = doc["anchor"]
        anchor = Anchor(seq=int(a["seq"]), digest=str(a["digest"]), job=_decode_job(a["job"]))
    kwargs = doc["kwargs"]
    if not isinstance(kwargs, dict):
        raise TypeError("kwargs is not an object")
    return State(
        target=str(doc["target"]),
        kwargs={str(k): str(v) for k, v in kwargs.items()},
        watermark=int(doc["watermark"]),
        anchor=anchor,
        resolved=tuple(
            ResolvedRange(int(s), int(e), None if d is None else str(d))
            for s, e, d in doc["resolved"]
        ),
        done=int(doc["done"]),
        failed=int(doc["failed"]),
        finished=bool(doc["finished"]),
        limit=None if doc.get("limit") is None else int(doc["limit"]),
        started=float(doc["started"]),
        updated=float(doc["updated"]),
        runs=int(doc.get("runs", 1)),
        rate=float(doc.get("rate", 0.0)),
        extra=dict(doc.get("extra") or {}),
    )


def read(path: str) -> State | None:
    """Read and verify the state file at ``path``; None when there is none."""
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_STATE_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateIOError(f"cannot read the state file {path}: {exc.strerror}") from None
    return decode(data, path)


def fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_durable(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably, or raise StateIOError.

    A failed write or fsync is never retried and trusted: the temp file goes, the old
    file stays, and the error propagates (an fsync that failed once may have dropped pages).
    """
    folder = os.path.dirname(os.path.abspath(path))
    tmp = os.path.join(folder, f".{os.path.basename(path)}.tmp.{os.getpid()}")
    try:
        failpoints.hit("ckpt.before_tmp_write")
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            failpoints.hit("ckpt.after_tmp_write")
            os.fsync(fd)
            failpoints.hit("ckpt.after_fsync")
        finally:
            os.close(fd)
        os.replace(tmp, path)
        failpoints.hit("ckpt.after_rename")
        fsync_dir(folder)
        failpoints.hit("ckpt.after_dirsync")
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise StateIOError(
            f"writing the checkpoint {path} failed: {exc.strerror or exc} "
            f"({errno.errorcode.get(exc.errno or 0, exc.errno)}). The last good checkpoint was "
            "kept; free space or fix the folder, then run again with --resume."
        ) from None


def remove_stale_temps(path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    prefix = f".{os.path.basename(path)}.tmp."
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name.startswith(prefix):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))


class StateLock:
    """An exclusive lock on a state file, held for the run's life (flock on a side file)."""

    def __init__(self, state_path: str) -> None:
        folder, name = os.path.split(os.path.abspath(state_path))
        self.path = os.path.join(folder, f".{name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        while True:
            fd = self._lock_file()
            # The holder before us removes the file as it releases it: if the file we
            # locked is no longer at self.path, a run starting now would lock another one.
            if self._still_current(fd):
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        self._fd = fd

    def _lock_file(self) -> int:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateIOError(
                f"cannot create the lock file {self.path}: {exc.strerror}. Is the folder "
                "writable? Pick another with --state-file."
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = _read_pid(self.path)
            who = f" (pid {pid})" if pid else ""
            raise LockedError(
                f"another taskmaster run{who} is using the state file "
                f"{state_path_of(self.path)}. Wait for it to finish or stop it first; two "
                "runs on one checkpoint would both lose track of jobs."
            ) from None
        return fd

    def _still_current(self, fd: int) -> bool:
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)
            os.close(self._fd)
            self._fd = None


def state_path_of(lock_path: str) -> str:
    folder, name = os.path.split(lock_path)
    return os.path.join(folder, name[1:].removesuffix(".lock"))


def _read_pid(path: str) -> str:
    try:
        with open(path) as f:
            return f.read(20).strip()
    except OSError:
        return ""
