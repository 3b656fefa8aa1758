"""Encoding jobs for the trip to a worker: raw bytes, pickle protocol 5, dill where pickle fails.

Jobs are encoded in the parent, per batch, so a job that cannot be serialized is caught
before it reaches a pipe and named by its seq. A batch whose jobs are all ``bytes`` (the
common "blob per job" case) is not pickled at all: its payload is the jobs' lengths followed
by the jobs themselves, one copy instead of pickle's growing buffer.

A batch's digest (kept in the checkpoint, to skip finished batches on resume) is a fast
non-cryptographic 128-bit hash of its payload, prefixed by the hash's name. Checkpoints
written before the prefix existed hold 24 hex digits of SHA-1 over the batch's pickle; a
resume still recognises and checks those.
"""

from __future__ import annotations

import hashlib
import pickle
import struct
from collections.abc import Callable, Sequence
from typing import Any

PICKLE = "pickle"
DILL = "dill"
BYTES = "bytes"  # every job a bytes object: lengths, then the jobs back to back
NAMES = (PICKLE, DILL, BYTES)  # the order is the wire's codec number

_LENGTHS = struct.Struct("!I")
_ONLY_BYTES = {bytes}
RAW_MIN_MEAN = 512  # bytes per job: below it, a batch of bytes is pickled
_LEGACY_DIGEST = 24  # hex digits of SHA-1: the batch digest of checkpoints before "x3:"


class EncodeError(Exception):
    """A job that neither pickle nor dill can serialize."""


def _blake2b_hex(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def _hashers() -> dict[str, Callable[[bytes], str]]:
    found: dict[str, Callable[[bytes], str]] = {"b2": _blake2b_hex}
    try:
        import xxhash
    except ImportError:  # a dependency, but a missing one must not stop a run
        return found
    found["x3"] = xxhash.xxh3_128_hexdigest
    return found


_HASHERS = _hashers()
_HASH = "x3" if "x3" in _HASHERS else "b2"  # xxh3_128: tens of GB/s; blake2b ~1 GB/s


def dumps(obj: Any) -> tuple[str, bytes]:
    """Serialize ``obj``; returns the codec used and the bytes."""
    try:
        return PICKLE, pickle.dumps(obj, protocol=5)
    except Exception:
        pass
    import dill  # only when pickle fails: it costs ~20 ms to import

    try:
        return DILL, dill.dumps(obj, protocol=5)
    except Exception as exc:
        raise EncodeError(f"{type(exc).__name__}: {exc}") from None


def loads(codec: str, data: bytes | bytearray | memoryview) -> Any:
    if codec == BYTES:
        return split_bytes(data)
    if codec == DILL:
        import dill

        return dill.loads(data)
    return pickle.loads(data)


def join_bytes(jobs: Sequence[bytes], sizes: Sequence[int]) -> bytes:
    """The BYTES payload: a count, each job's length, then the jobs back to back.

    Raises ``struct.error`` for a job of 4 GiB or more.
    """
    head = struct.pack(f"!I{len(sizes)}I", len(sizes), *sizes)
    return b"".join([head, *jobs])


def split_bytes(data: bytes | bytearray | memoryview) -> list[bytes]:
    """The jobs of a BYTES payload, each a ``bytes`` of its own."""
    view = memoryview(data)
    (count,) = _LENGTHS.unpack_from(view, 0)
    pos = _LENGTHS.size * (count + 1)
    if pos > len(view):
        raise ValueError(f"a bytes batch of {len(view)} bytes cannot hold {count} jobs")
    jobs: list[bytes] = []
    append = jobs.append
    for size in struct.unpack_from(f"!{count}I", view, _LENGTHS.size):
        end = pos + size
        append(view[pos:end].tobytes())
        pos = end
    if pos != len(view):
        raise ValueError(f"a bytes batch of {len(view)} bytes ends at {pos}")
    return jobs


def encode_batch(jobs: Sequence[Any]) -> tuple[str, bytes] | None:
    """Encode a whole batch, or return None when some job in it cannot be serialized."""
    if jobs and type(jobs[0]) is bytes and set(map(type, jobs)) == _ONLY_BYTES:
        sizes = list(map(len, jobs))
        if sum(sizes) >= RAW_MIN_MEAN * len(sizes):  # small ones unpickle faster than split
            try:
                return BYTES, join_bytes(jobs, sizes)
            except struct.error:
                pass  # a job of 4 GiB or more: pickle takes it
    try:
        return dumps(list(jobs))
    except EncodeError:
        return None


def digest(data: bytes) -> str:
    """A batch's content digest, named by its hash: a changed batch changes it."""
    return f"{_HASH}:{_HASHERS[_HASH](data)}"


def same_batch(jobs: Sequence[Any], payload: bytes, stored: str | None) -> bool:
    """Whether a batch (encoded as ``payload``) is the one whose digest was ``stored``.

    A digest from another hash is checked with that hash when it is at hand; an older
    checkpoint's SHA-1 digest is checked against the batch's pickle, as it was written.
    Anything else (a hash this install lacks) does not match: the batch simply runs again.
    """
    if stored is None:
        return False
    name, sep, _ = stored.partition(":")
    if sep:
        hasher = _HASHERS.get(name)
        return hasher is not None and f"{name}:{hasher(payload)}" == stored
    if len(stored) != _LEGACY_DIGEST:
        return False
    try:
        legacy = dumps(list(jobs))[1]
    except EncodeError:
        return False
    return hashlib.sha1(legacy, usedforsecurity=False).hexdigest()[:_LEGACY_DIGEST] == stored


def job_digest(job: Any) -> str:
    """The digest of one job (the checkpoint's anchor): SHA-1 of its pickle, as ever."""
    try:
        data = dumps(job)[1]
    except EncodeError:
        data = repr(job).encode("utf-8", "replace")
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()[:_LEGACY_DIGEST]


def short_repr(obj: Any, limit: int = 200) -> str:
    try:
        # A huge string or bytes job (100 MB) must not be copied whole into its repr.
        big = isinstance(obj, (str, bytes, bytearray)) and len(obj) > limit
        text = repr(obj[:limit]) + "..." if big else repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the run
        text = f"<{type(obj).__name__} with failing repr: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
