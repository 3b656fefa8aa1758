"""The state file: what it holds, how it is authenticated, and how it is read.

The file is JSON a person can read. An HMAC-SHA256 over its canonical form, keyed by the
per-user key outside the state folder (see keys.py), catches bit flips, truncation and hand
edits, and refuses a file another user wrote or that was copied from elsewhere; a refused
file is never overwritten. Version 1 files (before the key) carry a plain SHA-256 and are
still read, so a run stopped before the upgrade resumes.

The job at the anchor (handed back to ``get_jobs`` as ``last``) is stored as JSON when it
round-trips exactly, else as base64 pickle, decoded only for a run, after the MAC matched
and the file and its folder passed the ownership checks (durable.py); ``tm-status`` never
decodes it. An anchor whose encoding is over MAX_ANCHOR_BYTES is stored as its digest and
seq only (see there).
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

from taskmaster.errors import CheckpointError
from taskmaster.record import field, record
from taskmaster.store import codec, durable, keys
from taskmaster.store.durable import StateLock as StateLock  # re-exported: the state file's API
from taskmaster.store.durable import fsync_dir as fsync_dir
from taskmaster.store.durable import remove_stale_temps as remove_stale_temps
from taskmaster.store.durable import state_path_of as state_path_of
from taskmaster.store.durable import write_durable as write_durable

FORMAT = "taskmaster-checkpoint"
VERSION = 2  # 2: HMAC with the per-user key and the window; 1: plain SHA-256
MAX_STATE_BYTES = 64 * 1024 * 1024  # a window of ranges is tiny; anything bigger is not ours
# A job that encodes to more than this is not kept in the checkpoint, which is rewritten
# every second: 100 MB anchors made each write 133 MB of base64 and the file too big to
# read back. Its digest and seq suffice to resume: the first jobs are skipped as for a
# get_jobs without `last` (see core/source.py), then the digest is checked.
MAX_ANCHOR_BYTES = 1024 * 1024
# The widest window a run can have (--size); a version 1 file, which does not record its
# window, must keep its resolved ranges within this much of its watermark.
MAX_WINDOW = 100_000_000


@record
class ResolvedRange:
    """A range resolved above the watermark, with the digest of its jobs' encoding."""

    start: int
    end: int
    digest: str | None


@record
class Anchor:
    """A job the resume starts from: the watermark job, or the last job pulled before it."""

    seq: int
    job: Any
    digest: str


@record
class StoredJob:
    """An anchor job that was not decoded: too big to store, or read by ``tm-status``."""

    text: str  # the repr stored beside it
    size: int = 0  # bytes of its encoding, when known

    def __repr__(self) -> str:
        return self.text


@record
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
    window: int = 0  # the run's --size: no resolved range reaches further past the watermark
    extra: dict[str, Any] = field(default_factory=dict)


def fingerprint(target: str, kwargs: dict[str, str]) -> str:
    canon = json.dumps([target, sorted(kwargs.items())], separators=(",", ":"))
    return hashlib.sha256(canon.encode()).hexdigest()[:16]


def _canonical(doc: dict[str, Any]) -> bytes:
    body = {k: v for k, v in doc.items() if k != "checksum"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _checksum(doc: dict[str, Any]) -> str:
    """The MAC a file of ``doc``'s version carries (version 1: a plain SHA-256)."""
    if doc.get("version") == 1:
        return "sha256:" + hashlib.sha256(_canonical(doc)).hexdigest()
    return keys.sign(_canonical(doc))


def _encode_job(job: Any) -> dict[str, Any]:
    if isinstance(job, StoredJob):
        return {"repr": job.text, "omitted": job.size}
    out: dict[str, Any] = {"repr": codec.short_repr(job)}
    try:
        if json.loads(json.dumps(job)) == job and _same_types(job):
            out["json"] = job
            return out
    except (TypeError, ValueError, RecursionError):
        pass
    name, data = codec.dumps(job)
    if len(data) > MAX_ANCHOR_BYTES:
        out["omitted"] = len(data)
    else:
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


def _decode_job(doc: dict[str, Any], unpickle: bool) -> Any:
    if "json" in doc:
        return doc["json"]
    if "omitted" in doc:
        return StoredJob(str(doc["repr"]), int(doc["omitted"]))
    for name in (codec.PICKLE, codec.DILL):
        if name in doc:
            data = base64.b64decode(doc[name], validate=True)
            if not unpickle:
                return StoredJob(str(doc.get("repr", "?")), len(data))
            return codec.loads(name, data)
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
        "window": _window(state),
        "extra": state.extra,
    }
    doc["checksum"] = _checksum(doc)
    # One key per line, each value compact: readable with cat, and written by the C encoder
    # (json.dumps with indent is pure Python: 2 s a checkpoint with 40,000 resolved ranges).
    lines = [f" {json.dumps(k)}: {json.dumps(v, separators=(', ', ': '))}" for k, v in doc.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def _window(state: State) -> int:
    # A resumed run may carry ranges from a run with a larger --size than its own.
    reach = max((r.end for r in state.resolved), default=state.watermark) - state.watermark
    return max(state.window, reach, 1)


HOW = "run with --reset to start over (this deletes it), or --state-file to use another"


def decode(
    data: bytes, path: str = "state file", *, unpickle: bool = True, size: int | None = None
) -> State:
    """Parse and verify a state file; raises CheckpointError on anything not ours or corrupt.

    With ``unpickle=False`` a pickled anchor job stays a StoredJob. ``unpickle=True`` is for
    bytes read from a file that passed the ownership checks (``read`` does them).
    """
    how = HOW
    if not data.strip():
        raise CheckpointError(f"{path} is empty: it is not a taskmaster checkpoint; {how}.")
    if len(data) > MAX_STATE_BYTES:
        raise CheckpointError(
            f"{path} is {size or len(data):,} bytes, too big to be a checkpoint (the most "
            f"one may have is {MAX_STATE_BYTES:,}); {how}."
        )
    try:
        doc = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CheckpointError(
            f"{path} is not valid JSON ({exc}): corrupt or truncated; {how}."
        ) from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a taskmaster checkpoint; {how}.")
    version = doc.get("version")
    if type(version) is not int or version not in (1, VERSION):
        raise CheckpointError(
            f"{path} has format version {version!r}; this taskmaster reads versions 1 to "
            f"{VERSION}. Use the taskmaster that wrote it, or {how}."
        )
    if not _authentic(doc):
        raise CheckpointError(
            f"{path} fails its checksum: it was corrupted, edited by hand, or written with "
            f"another key than yours ({keys.key_path()}: another user's file, or one from "
            f"before that key file was replaced). It was left as it is; {how}."
        )
    try:
        state = _state_from(doc, unpickle)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
        raise CheckpointError(f"{path} has a malformed field ({exc!r}); {how}.") from None
    except Exception as exc:  # the anchor job failed to unpickle: its class may be gone
        raise CheckpointError(
            f"{path}: the job to resume from cannot be decoded ({type(exc).__name__}: {exc}). "
            f"Is the job module's code importable as when the run started? Else {how}."
        ) from None
    _check_ranges(state, state.window or MAX_WINDOW, path)
    return state


def _authentic(doc: dict[str, Any]) -> bool:
    tag = doc.get("checksum")
    if doc.get("version") == 1:
        return tag == _checksum(doc)
    return keys.verify(_canonical(doc), tag)


def _check_ranges(state: State, window: int, path: str) -> None:
    """Refuse resolved ranges no run could have written: a resume would trust them."""
    ranges = state.resolved
    problem = ""
    if not 0 < window <= MAX_WINDOW:
        problem = f"its window of {window:,} jobs is not a possible --size"
    elif len(ranges) > window:
        problem = f"it lists {len(ranges):,} resolved ranges in a window of {window:,} jobs"
    else:
        floor = state.watermark
        for r in ranges:
            if r.start < floor or r.end <= r.start or r.end > state.watermark + window:
                problem = (
                    f"its resolved range {r.start}-{r.end} is not after the previous one "
                    f"within the window of {window:,} jobs from the watermark "
                    f"{state.watermark:,}"
                )
                break
            floor = r.end
    if problem:
        raise CheckpointError(
            f"{path} cannot have been written by a taskmaster run: {problem}. It was left "
            f"as it is; {HOW}."
        )


def _state_from(doc: dict[str, Any], unpickle: bool) -> State:
    anchor = None
    if doc["anchor"] is not None:
        a = doc["anchor"]
        job = _decode_job(a["job"], unpickle)
        anchor = Anchor(seq=int(a["seq"]), digest=str(a["digest"]), job=job)
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
        window=int(doc.get("window") or 0),
        extra=dict(doc.get("extra") or {}),
    )


def read(path: str, *, unpickle: bool = True) -> State | None:
    """Read and verify the state file at ``path``; None when there is none.

    It is opened without following a link. For a run (``unpickle``), the file must be
    yours, writable by you alone, in a folder others cannot write (durable.check_file and
    check_folder); ``tm-status`` passes ``unpickle=False`` and only the MAC is checked.
    """
    got = durable.read_checked(path, MAX_STATE_BYTES, owned=unpickle)
    if got is None:
        return None
    data, size = got
    return decode(data, path, unpickle=unpickle, size=size)
