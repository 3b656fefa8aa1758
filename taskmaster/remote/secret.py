"""The shared secret of tm-master and its tm-slaves, the keys derived from it, and where
each side may listen or connect with it.

There is no unauthenticated mode. The secret comes from ``--secret-file PATH``, else from
``$TASKMASTER_SECRET``, else it is the per-user secret of this host
(``$XDG_CONFIG_HOME/taskmaster/zmq.secret``, or ``~/.config/taskmaster/zmq.secret``),
created on first use with mode 0600: then only processes of the same user on this host
connect, and only over the loopback interface.

A secret must hold 32 random bytes' worth: 64 hex characters, or at least 32 bytes of
anything else. Frames are signed with one key per direction (master to slave, slave to
master), each derived from the secret, so a frame cannot be reflected back or sideways.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import ipaddress
import os
import secrets
import stat
import string
from collections.abc import Mapping
from pathlib import Path
from urllib.parse import urlsplit

from taskmaster.errors import UsageError
from taskmaster.record import field, record

SECRET_ENV = "TASKMASTER_SECRET"
MIN_SECRET_BYTES = 32  # random bytes' worth: 64 hex characters, or 32 bytes of other text
MAX_SECRET_BYTES = 4096
DEFAULT_PORT = 3050
MAKE_SECRET = (
    'python -c "import secrets; print(secrets.token_hex(32))" > tm.secret; chmod 600 tm.secret'
)
USER_SECRET_NAME = "zmq.secret"
TO_SLAVE = "m2s"  # the direction of a frame, signed in its header and in its key
TO_MASTER = "s2m"
_HEX = frozenset(string.hexdigits.encode())


@record
class Secret:
    """The shared secret; ``value`` never appears in a repr, a log or a command line.

    ``local``: the per-user secret of this host, which only allows loopback addresses.
    """

    value: bytes = field(repr=False)
    origin: str  # "--secret-file tm.secret", "TASKMASTER_SECRET" or the per-user file
    warning: str | None = None
    local: bool = False

    @property
    def text(self) -> str:
        """The secret as text, to hand to a child process through its environment."""
        return self.value.decode("utf-8")


def load_secret(path: str | None, environ: Mapping[str, str]) -> Secret | None:
    """The secret from ``--secret-file PATH`` or else ``$TASKMASTER_SECRET``; None if neither.

    Surrounding whitespace is stripped (``print`` adds a newline). An empty, short or
    non-text secret is refused: a weak key would let a sniffed frame be guessed offline.
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


def forget_env_secret() -> None:
    """Take ``$TASKMASTER_SECRET`` out of this process's environment, before user code runs.

    Its bytes are overwritten in place first, where ``/proc/<pid>/environ`` would still
    show them; then it leaves ``os.environ``, so no worker, job or process a job starts
    inherits it.
    """
    with contextlib.suppress(OSError, AttributeError, ValueError):
        libc = ctypes.CDLL(None)
        libc.getenv.restype = ctypes.c_void_p
        libc.getenv.argtypes = [ctypes.c_char_p]
        address = libc.getenv(SECRET_ENV.encode())
        if address:
            ctypes.memset(address, 0, len(ctypes.string_at(address)))
    os.environ.pop(SECRET_ENV, None)  # and unsetenv()


def find_secret(path: str | None, environ: Mapping[str, str]) -> Secret:
    """The explicit secret if one is given, else the per-user secret of this host."""
    return load_secret(path, environ) or user_secret(environ)


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
    worth = len(value) // 2 if value and set(value) <= _HEX else len(value)
    if worth < MIN_SECRET_BYTES:
        what = "empty" if not value else f"only {worth} random bytes' worth"
        raise UsageError(
            f"the secret in {origin} is {what}; it needs {MIN_SECRET_BYTES} "
            f"(64 hex characters, or at least {MIN_SECRET_BYTES} bytes of other text). "
            f"Make one with: {MAKE_SECRET}"
        )
    return Secret(value, origin, warning)


# -- the per-user secret ------------------------------------------------------------------


def user_secret_path(environ: Mapping[str, str]) -> Path:
    config = environ.get("XDG_CONFIG_HOME") or ""
    base = Path(config) if os.path.isabs(config) else Path.home() / ".config"
    return base / "taskmaster" / USER_SECRET_NAME


def user_secret(environ: Mapping[str, str]) -> Secret:
    """This user's secret on this host, made on first use (0600, in a 0700 folder).

    Refused unless the file and its folder are this user's and closed to others: a secret
    others could read or replace would let them pose as the master.
    """
    path = user_secret_path(environ)
    origin = f"the per-user secret {path}"
    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_ours(path.parent, os.stat(path.parent, follow_symlinks=False), origin)
        if not path.exists() and not path.is_symlink():
            _create(path)
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        with os.fdopen(fd, "rb") as f:
            _check_ours(path, os.fstat(f.fileno()), origin)
            raw = f.read(MAX_SECRET_BYTES + 1)
    except OSError as exc:
        raise UsageError(
            f"cannot use {origin}: {exc.strerror}. Give a secret with --secret-file "
            f"or ${SECRET_ENV}; to make one:\n    {MAKE_SECRET}"
        ) from None
    checked = _checked(raw, origin, None)
    return Secret(checked.value, origin, None, local=True)


def _check_ours(path: Path, st: os.stat_result, origin: str) -> None:
    if st.st_uid != os.geteuid() or st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise UsageError(
            f"refusing {origin}: {path} is not yours alone (owner uid {st.st_uid}, mode "
            f"{stat.filemode(st.st_mode)}); another user could pose as your master. "
            f"Remove it, or give a secret with --secret-file or ${SECRET_ENV}"
        )
    if not stat.S_ISDIR(st.st_mode) and st.st_mode & (stat.S_IRWXO | stat.S_IRWXG):
        raise UsageError(f"refusing {origin}: others can read it; chmod 600 {path}")


def _create(path: Path) -> None:
    """Write a new secret under a random name, then link it in: whoever links first wins,
    and nobody ever reads a half-written file."""
    temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_hex(MIN_SECRET_BYTES).encode() + b"\n")
            f.flush()
            os.fsync(f.fileno())
        with contextlib.suppress(FileExistsError):
            os.link(temp, path)
    finally:
        os.unlink(temp)


# -- keys ---------------------------------------------------------------------------------


def frame_key(secret: Secret, direction: str) -> bytes:
    """The HMAC key of one direction (:data:`TO_SLAVE` or :data:`TO_MASTER`)."""
    if direction not in (TO_SLAVE, TO_MASTER):
        raise ValueError(f"unknown direction {direction!r}")
    label = b"taskmaster frame key " + direction.encode()
    return hmac.new(secret.value, label, hashlib.sha256).digest()


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


def _explicit(secret: Secret | None) -> bool:
    return secret is not None and not secret.local


def master_address(address: str | None, secret: Secret | None) -> str:
    """Where the master listens: everywhere with an explicit secret, else loopback only."""
    if address is None:
        host = "0.0.0.0" if _explicit(secret) else "127.0.0.1"
        return f"tcp://{host}:{DEFAULT_PORT}"
    parse_address(address)
    if not _explicit(secret) and not is_loopback(address):
        raise UsageError(
            f"refusing to listen on {address} without a secret: the per-user secret of "
            "this host is for loopback only. Make a secret and give it to the master and "
            f"every slave (--secret-file tm.secret, or ${SECRET_ENV}):\n    {MAKE_SECRET}"
        )
    return address


def slave_address(address: str | None, secret: Secret | None) -> str:
    """Where a slave connects; without an explicit secret only to a master on this host."""
    if address is None:
        return f"tcp://127.0.0.1:{DEFAULT_PORT}"
    if not _explicit(secret) and not is_loopback(address):
        raise UsageError(
            f"refusing to connect to {address} without a secret: the per-user secret of "
            "this host is for loopback only. Give this slave the master's secret "
            f"(--secret-file PATH, or ${SECRET_ENV}); to make one:\n    {MAKE_SECRET}"
        )
    return address
