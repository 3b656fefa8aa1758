"""Frames between tm-master and tm-slave: signed, versioned, checked against replays.

A frame is three ZeroMQ message parts::

    [signature, header, payload]

- ``header`` is JSON: ``{"v": protocol, "run": run id, "from": sender, "seq": n,
  "kind": ..., "body": {...}}``. Control messages live here, never in a pickle.
- ``payload`` is empty except for a batch of jobs (the coordinator's pickle/dill bytes).
- ``signature`` is HMAC-SHA256 over ``len(header) || header || payload``, keyed from the
  shared secret. The length prefix keeps bytes from sliding between header and payload.

The receiver checks the size and the signature (``hmac.compare_digest``) before it parses
anything: a frame that fails is dropped, nothing in it decoded. Then it checks the version,
and the sequence number against the last one seen from that sender, so a recorded frame
cannot be played again. The signature and the ``refused`` message never change between
protocol versions, so two versions can always tell each other that they differ.

This module knows nothing of sockets; the master and the slave use it on theirs.
"""

from __future__ import annotations

import collections
import hashlib
import hmac
import ipaddress
import json
import os
import stat
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from taskmaster.errors import UsageError

PROTOCOL = 1
SECRET_ENV = "TASKMASTER_SECRET"
MIN_SECRET_BYTES = 16
MAX_SECRET_BYTES = 4096
DEFAULT_PORT = 3050
MAKE_SECRET = (
    'python -c "import secrets; print(secrets.token_hex(32))" > tm.secret; chmod 600 tm.secret'
)
# Without a secret, frames are signed with this public key: one code path, no protection.
# That is why a master without a secret only listens on the loopback interface.
PUBLIC_KEY = b"taskmaster: no secret given, loopback only"
MAX_ID = 64  # longest sender or run id accepted
SIG_BYTES = 32
MASTER_MAX_FRAME = 16 * 1024 * 1024  # what a master accepts: results are small JSON
SLAVE_MAX_FRAME = 256 * 1024 * 1024  # what a slave accepts: batches of jobs
NOTICE = b"taskmaster-notice"  # first part of the one unsigned reply: "your signature failed"
BAD_SIGNATURE = b"bad-signature"


# -- secrets ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Secret:
    """The shared secret; ``value`` never appears in a repr, a log or a command line."""

    value: bytes = field(repr=False)
    origin: str  # "--secret-file tm.secret" or "TASKMASTER_SECRET"
    warning: str | None = None

    @property
    def text(self) -> str:
        """The secret as text, to hand to a child process through its environment."""
        return self.value.decode("utf-8")


def load_secret(path: str | None, environ: Mapping[str, str]) -> Secret | None:
    """The secret from ``--secret-file PATH`` or else ``$TASKMASTER_SECRET``; None if neither.

    Surrounding whitespace is stripped (``print`` adds a newline). An empty, short or
    non-text secret is refused: an empty key would silently authenticate nothing.
    """
    if path is not None:
        origin = f"--secret-file {path}"
        try:
            with open(path, "rb") as f:
                raw = f.read(MAX_SECRET_BYTES + 1)
                mode = os.fstat(f.fileno()).st_mode
        except OSError as exc:
            raise UsageError(f"cannot read {origin}: {exc.strerror}") from None
        warning = None
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            warning = f"{path} can be read by other users: chmod 600 {path}"
        return _checked(raw, origin, warning)
    if SECRET_ENV in environ:
        return _checked(environ[SECRET_ENV].encode("utf-8", "surrogateescape"), SECRET_ENV, None)
    return None


def _checked(raw: bytes, origin: str, warning: str | None) -> Secret:
    value = raw.strip()
    if len(value) > MAX_SECRET_BYTES:
        raise UsageError(f"the secret in {origin} is longer than {MAX_SECRET_BYTES} bytes")
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError(
            f"the secret in {origin} is not text. Make one with: {MAKE_SECRET}"
        ) from None
    if len(value) < MIN_SECRET_BYTES:
        what = "empty" if not value else f"only {len(value)} bytes"
        raise UsageError(
            f"the secret in {origin} is {what}; it needs at least {MIN_SECRET_BYTES}. "
            f"Make one with: {MAKE_SECRET}"
        )
    return Secret(value, origin, warning)


def frame_key(secret: Secret | None) -> bytes:
    """The HMAC key: derived from the secret, so the key differs from the secret's text."""
    material = PUBLIC_KEY if secret is None else secret.value
    return hmac.new(material, b"taskmaster frame key", hashlib.sha256).digest()


# -- addresses ----------------------------------------------------------------------------


def parse_address(address: str) -> tuple[str, int]:
    """``tcp://HOST:PORT`` -> (host, port), with a clear error for anything else."""
    try:
        parts = urlsplit(address)
        port = parts.port
    except ValueError:
        port = None
        parts = None
    if parts is None or parts.scheme != "tcp" or not parts.hostname or port is None:
        raise UsageError(
            f"--address must look like tcp://HOST:PORT (e.g. tcp://10.0.0.5:{DEFAULT_PORT}), "
            f"got {address!r}"
        )
    return parts.hostname, port


def is_loopback(address: str) -> bool:
    host, _ = parse_address(address)
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def master_address(address: str | None, secret: Secret | None) -> str:
    """Where the master listens: everywhere with a secret, loopback only without one."""
    if address is None:
        host = "0.0.0.0" if secret is not None else "127.0.0.1"
        return f"tcp://{host}:{DEFAULT_PORT}"
    parse_address(address)
    if secret is None and not is_loopback(address):
        raise UsageError(
            f"refusing to listen on {address} without a secret: anyone who can reach it "
            "could run code on every slave. Make a secret and give it to the master and "
            f"every slave (--secret-file tm.secret, or ${SECRET_ENV}):\n    {MAKE_SECRET}"
        )
    return address


def slave_address(address: str | None, secret: Secret | None) -> str:
    """Where a slave connects; without a secret only to a master on this host."""
    if address is None:
        return f"tcp://127.0.0.1:{DEFAULT_PORT}"
    if secret is None and not is_loopback(address):
        raise UsageError(
            f"refusing to connect to {address} without a secret: an impostor there could "
            "run code on this host. Give this slave the master's secret (--secret-file "
            f"PATH, or ${SECRET_ENV}); to make one:\n    {MAKE_SECRET}"
        )
    return address


# -- frames -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Message:
    """A frame that passed every check."""

    run: str | None
    sender: str
    seq: int
    kind: str
    body: dict[str, Any]
    payload: bytes


class Dropped(Exception):
    """A frame that failed a check. The reason names the check, never the content."""


class VersionMismatch(Exception):
    """A correctly signed frame from a peer that speaks another protocol version."""

    def __init__(self, version: object, sender: str, kind: str) -> None:
        super().__init__(f"protocol {version}, this side speaks {PROTOCOL}")
        self.version = version
        self.sender = sender
        self.kind = kind


class Sealer:
    """Signs outgoing frames and numbers them: one per sender, seq starting at 1."""

    def __init__(self, key: bytes, sender: str, version: int = PROTOCOL) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.sender = sender
        self.version = version  # another value only in tests of the mismatch
        self.seq = 0

    def seal(
        self, kind: str, run: str | None, body: dict[str, Any] | None = None, payload: bytes = b""
    ) -> list[bytes]:
        self.seq += 1
        doc = {
            "v": self.version,
            "run": run,
            "from": self.sender,
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
    """Checks incoming frames: size, then signature, and only then the JSON header."""

    def __init__(self, key: bytes, max_header: int = MASTER_MAX_FRAME) -> None:
        self._mac = hmac.new(key, digestmod=hashlib.sha256)
        self.max_header = max_header

    def open(self, parts: list[bytes]) -> Message:
        if len(parts) != 3:
            raise Dropped(f"not a taskmaster frame ({len(parts)} parts, 3 expected)")
        sig, header, payload = parts
        if len(sig) != SIG_BYTES or len(header) > self.max_header:
            raise Dropped("not a taskmaster frame (bad signature or header size)")
        if not hmac.compare_digest(sig, _sign(self._mac, header, payload)):
            raise Dropped("bad signature (a wrong or missing secret?)")
        try:
            doc = json.loads(header)
        except ValueError:
            raise Dropped("signed, but the header is not JSON") from None
        if not isinstance(doc, dict):
            raise Dropped("signed, but the header is not a JSON object")
        sender, kind = doc.get("from"), doc.get("kind")
        if doc.get("v") != PROTOCOL:
            raise VersionMismatch(doc.get("v"), _short(sender), _short(kind))
        return _message(doc, payload)


def _short(value: object) -> str:
    return value[:MAX_ID] if isinstance(value, str) else "?"


def _message(doc: dict[str, Any], payload: bytes) -> Message:
    run, sender, seq = doc.get("run"), doc.get("from"), doc.get("seq")
    kind, body = doc.get("kind"), doc.get("body")
    if run is not None and not (isinstance(run, str) and 0 < len(run) <= MAX_ID):
        raise Dropped("signed, but the header's run id is malformed")
    if not (isinstance(sender, str) and 0 < len(sender) <= MAX_ID):
        raise Dropped("signed, but the header's sender id is malformed")
    if not (isinstance(seq, int) and not isinstance(seq, bool) and seq > 0):
        raise Dropped("signed, but the header's seq is not a positive whole number")
    if not isinstance(kind, str) or not isinstance(body, dict):
        raise Dropped("signed, but the header's kind or body is malformed")
    return Message(run, sender, seq, kind, body, payload)


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

    def forget(self, sender: str) -> None:
        self._last.pop(sender, None)


class RateLimitedLog:
    """Logs the first line of each kind, then at most one per ``every`` seconds with a count.

    A flood of bad frames must not flood the log (or the terminal) in turn.
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
        if len(self._next) > 1024:  # keys are per peer: keep the table bounded
            self._next.clear()
        self._next[key] = now + self.every
        self.log(text + (f" ({held} more like it not shown)" if held else ""))
