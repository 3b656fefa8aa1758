"""Frames between tm-master and tm-slave: signed, versioned, checked against replays.

A frame is three ZeroMQ message parts::

    [signature, header, payload]

- ``header`` is JSON: ``{"v": protocol, "dir": "m2s" or "s2m", "run": run id, "from":
  sender, "to": recipient, "seq": n, "kind": ..., "body": {...}}``. Control messages live
  here, never in a pickle. ``to`` is the slave's sender id on a master's frame, the run id
  on a slave's.
- ``payload`` is empty except for a batch of jobs (the coordinator's pickle/dill bytes),
  which only a master sends: a master drops any frame with a payload before it computes
  the signature.
- ``signature`` is HMAC-SHA256 over ``len(header) || header || payload``, keyed with the
  key of the frame's direction (:func:`~taskmaster.remote.secret.frame_key`). The length
  prefix keeps bytes from sliding between header and payload.

The receiver checks the sizes and the signature (``hmac.compare_digest``) before it parses
anything: a frame that fails is dropped, nothing in it decoded. Then it checks the version
and the direction, and the sequence number against the last one seen from that sender, so
a recorded frame cannot be played again. A frame signed for the other direction fails the
signature: it cannot be reflected back to its sender; a master's frame names the slave
it is for, so it cannot be reflected sideways to another slave either. The signature
and the ``refused`` message stay as they are from protocol 2 on, so two versions can tell
each other that they differ (a protocol 1 peer fails the signature).

This module knows nothing of sockets; the master and the slave use it on theirs.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import json
import time
from collections.abc import Callable
from typing import Any

from taskmaster.record import record
from taskmaster.remote.secret import DEFAULT_PORT as DEFAULT_PORT
from taskmaster.remote.secret import MAKE_SECRET as MAKE_SECRET
from taskmaster.remote.secret import MIN_SECRET_BYTES as MIN_SECRET_BYTES
from taskmaster.remote.secret import SECRET_ENV as SECRET_ENV
from taskmaster.remote.secret import TO_MASTER as TO_MASTER
from taskmaster.remote.secret import TO_SLAVE as TO_SLAVE
from taskmaster.remote.secret import Secret as Secret
from taskmaster.remote.secret import find_secret as find_secret
from taskmaster.remote.secret import frame_key as frame_key
from taskmaster.remote.secret import is_loopback as is_loopback
from taskmaster.remote.secret import load_secret as load_secret
from taskmaster.remote.secret import master_address as master_address
from taskmaster.remote.secret import parse_address as parse_address
from taskmaster.remote.secret import slave_address as slave_address
from taskmaster.remote.secret import user_secret as user_secret

PROTOCOL = 2  # 2: direction and recipient in the header, a key per direction
MAX_ID = 64  # longest sender or run id accepted
SIG_BYTES = 32
# What a master accepts in one part: results are JSON whose failure texts are cut to
# protocol.FAILURE_BUDGET (1 MiB); statuses and the rest are a few hundred bytes.
MASTER_MAX_FRAME = 4 * 1024 * 1024
# What a slave accepts in one part: a batch aims at 1 MiB of jobs (core.loop.BATCH_BYTES),
# but its size is estimated from the jobs before it, and one big job goes alone.
SLAVE_MAX_FRAME = 64 * 1024 * 1024
SLAVE_MAX_HEADER = 64 * 1024  # a master's headers are small: welcome, task, stop, ...
NOTICE = b"taskmaster-notice"  # first part of the one unsigned reply: "your signature failed"
BAD_SIGNATURE = b"bad-signature"


# -- frames -------------------------------------------------------------------------------


@record
class Message:
    """A frame that passed every check."""

    run: str | None
    sender: str
    to: str | None
    seq: int
    kind: str
    body: dict[str, Any]
    payload: bytes


class Dropped(Exception):
    """A frame that failed a check. The reason names the check, never the content."""


class BadSignature(Dropped):
    """A well-formed frame whose signature does not match: signed with another secret, or
    with none. The one drop a master tells the peer of (a slave with the wrong secret)."""


class VersionMismatch(Exception):
    """A correctly signed frame from a peer that speaks another protocol version."""

    def __init__(self, version: object, sender: str, kind: str) -> None:
        super().__init__(f"protocol {version}, this side speaks {PROTOCOL}")
        self.version = version
        self.sender = sender
        self.kind = kind


class Sealer:
    """Signs outgoing frames of one direction and numbers them: seq starting at 1."""

    def __init__(self, key: bytes, sender: str, direction: str, version: int = PROTOCOL) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.sender = sender
        self.direction = direction
        self.version = version  # another value only in tests of the mismatch
        self.seq = 0

    def seal(
        self,
        kind: str,
        run: str | None,
        body: dict[str, Any] | None = None,
        payload: bytes = b"",
        to: str | None = None,
    ) -> list[bytes]:
        """``to``: the recipient; by default the run (a slave's frames go to its master)."""
        self.seq += 1
        doc = {
            "v": self.version,
            "dir": self.direction,
            "run": run,
            "from": self.sender,
            "to": run if to is None else to,
            "seq": self.seq,
            "kind": kind,
            "body": body or {},
        }
        header = json.dumps(doc, separators=(",", ":")).encode()
        return [_sign(self._mac, header, payload), header, payload]


def _sign(mac: Any, header: bytes, payload: bytes) -> bytes:
    h = mac.copy()
    h.update(len(header).to_bytes(8, "big"))
    h.update(header)
    h.update(payload)
    digest: bytes = h.digest()
    return digest


class Opener:
    """Checks incoming frames of one direction: sizes, then signature, then the header.

    ``max_payload`` 0: frames that must have no payload (all a master receives); one that
    has any is dropped before the signature is computed, as is an oversized header.
    """

    def __init__(
        self,
        key: bytes,
        direction: str,
        max_header: int = MASTER_MAX_FRAME,
        max_payload: int = 0,
    ) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.direction = direction
        self.max_header = max_header
        self.max_payload = max_payload

    def open(self, parts: list[bytes]) -> Message:
        if len(parts) != 3:
            raise Dropped(f"not a taskmaster frame ({len(parts)} parts, 3 expected)")
        sig, header, payload = parts
        if len(sig) != SIG_BYTES or len(header) > self.max_header:
            raise Dropped("not a taskmaster frame (bad signature or header size)")
        if len(payload) > self.max_payload:
            raise Dropped(f"not a taskmaster frame (a payload of {len(payload):,} bytes)")
        if not hmac.compare_digest(sig, _sign(self._mac, header, payload)):
            raise BadSignature("bad signature (a wrong or missing secret?)")
        try:
            doc = json.loads(header)
        except ValueError:
            raise Dropped("signed, but the header is not JSON") from None
        if not isinstance(doc, dict):
            raise Dropped("signed, but the header is not a JSON object")
        sender, kind = doc.get("from"), doc.get("kind")
        if doc.get("v") != PROTOCOL:
            raise VersionMismatch(doc.get("v"), _short(sender), _short(kind))
        if doc.get("dir") != self.direction:
            raise Dropped("signed, but for the other direction (a reflected frame?)")
        return _message(doc, payload)


def _short(value: object) -> str:
    return value[:MAX_ID] if isinstance(value, str) else "?"


def _message(doc: dict[str, Any], payload: bytes) -> Message:
    run, sender, seq, to = doc.get("run"), doc.get("from"), doc.get("seq"), doc.get("to")
    kind, body = doc.get("kind"), doc.get("body")
    if run is not None and not (isinstance(run, str) and 0 < len(run) <= MAX_ID):
        raise Dropped("signed, but the header's run id is malformed")
    if not (isinstance(sender, str) and 0 < len(sender) <= MAX_ID):
        raise Dropped("signed, but the header's sender id is malformed")
    if to is not None and not (isinstance(to, str) and 0 < len(to) <= MAX_ID):
        raise Dropped("signed, but the header's recipient is malformed")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq > 0):
        raise Dropped("signed, but the header's seq is not a positive whole number")
    if not isinstance(kind, str) or not isinstance(body, dict):
        raise Dropped("signed, but the header's kind or body is malformed")
    return Message(run, sender, to, seq, kind, body, payload)


class ReplayGuard:
    """Remembers the last seq of each sender; a frame at or below it is a replay."""

    def __init__(self, limit: int = 4096) -> None:
        self._last: collections.OrderedDict[str, int] = collections.OrderedDict()
        self.limit = limit

    def fresh(self, sender: str, seq: int) -> bool:
        last = self._last.get(sender)
        if last is not None and seq <= last:
            return False
        self._last[sender] = seq
        self._last.move_to_end(sender)
        if len(self._last) > self.limit:
            self._last.popitem(last=False)
        return True


class RateLimitedLog:
    """Logs the first line of each kind, then at most one per ``every`` seconds with a count.

    A flood of bad frames must not flood the log (or the terminal) in turn. Keys name a
    kind of event, never a peer: the limit is global, however many addresses the frames
    come from.
    """

    def __init__(
        self,
        log: Callable[[str], None],
        every: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.log = log
        self.every = every
        self.clock = clock
        self._next: dict[str, float] = {}
        self._held: collections.Counter[str] = collections.Counter()

    def __call__(self, key: str, text: str) -> None:
        now = self.clock()
        if now < self._next.get(key, 0.0):
            self._held[key] += 1
            return
        held = self._held.pop(key, 0)
        if len(self._next) > 64:  # keys are kinds of events: a few; keep the table bounded
            self._next.clear()
        self._next[key] = now + self.every
        self.log(text + (f" ({held} more like it not shown)" if held else ""))
