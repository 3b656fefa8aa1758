"""Encoding jobs for the trip to a worker: pickle protocol 5, dill only where pickle fails.

Jobs are encoded in the parent, per batch, so a job that cannot be serialized is caught
before it reaches a pipe and named by its seq.
"""

from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from typing import Any

PICKLE = "pickle"
DILL = "dill"


class EncodeError(Exception):
    """A job that neither pickle nor dill can serialize."""


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


def loads(codec: str, data: bytes) -> Any:
    if codec == DILL:
        import dill

        return dill.loads(data)
    return pickle.loads(data)


def encode_batch(jobs: Sequence[Any]) -> tuple[str, bytes] | None:
    """Encode a whole batch, or return None when some job in it cannot be serialized."""
    try:
        return dumps(list(jobs))
    except EncodeError:
        return None


def digest(data: bytes) -> str:
    """A short content digest: equal jobs encode alike, so a changed job changes it."""
    # Change detection, not security; sha1 is the fastest hashlib digest here (~2x blake2b).
    return hashlib.sha1(data, usedforsecurity=False).hexdigest()[:24]


def job_digest(job: Any) -> str:
    try:
        return digest(dumps(job)[1])
    except EncodeError:
        return digest(repr(job).encode("utf-8", "replace"))


def short_repr(obj: Any, limit: int = 200) -> str:
    try:
        # A huge string or bytes job (100 MB) must not be copied whole into its repr.
        big = isinstance(obj, (str, bytes, bytearray)) and len(obj) > limit
        text = repr(obj[:limit]) + "..." if big else repr(obj)
    except Exception as exc:  # a broken __repr__ must not break the run
        text = f"<{type(obj).__name__} with failing repr: {exc!r}>"
    return text if len(text) <= limit else text[: limit - 3] + "..."
