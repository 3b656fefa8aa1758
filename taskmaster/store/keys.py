"""The per-user key that authenticates the checkpoint and the failures file.

A checksum anyone can recompute proves nothing about who wrote a file; an HMAC whose key
lives outside the state folder does: a file another user wrote, copied from elsewhere or
edited is refused before anything in it is trusted. The key is 32 random bytes, created on
first use at ``$TASKMASTER_KEY_FILE``, else ``$XDG_CONFIG_HOME/taskmaster/state.key``, else
``~/.config/taskmaster/state.key``, mode 0600. A key file that is not ours, or that others
can read, is refused: whoever reads it can forge our files.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import hmac
import os
import stat

from taskmaster.errors import CheckpointError

ENV = "TASKMASTER_KEY_FILE"
PREFIX = "hmac-sha256:"
_KEY_HEX = 64
_cache: dict[str, bytes] = {}


class KeyFileError(CheckpointError):
    """The key file cannot be made, read or trusted."""


def key_path() -> str:
    """Where the key file is: see the module docstring."""
    if os.environ.get(ENV):
        return os.path.abspath(os.environ[ENV])
    config = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(config, "taskmaster", "state.key")


def state_key() -> bytes:
    """The key, created on first use; cached per path for the life of the process."""
    path = key_path()
    key = _cache.get(path)
    if key is None:
        key = _load(path)
        if key is None:
            _create(path)
            key = _load(path)
            assert key is not None
        _cache[path] = key
    return key


def sign(body: bytes) -> str:
    """The MAC of ``body`` under our key, as ``hmac-sha256:<hex>``."""
    return PREFIX + hmac.new(state_key(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, tag: object) -> bool:
    # compare_digest takes only ASCII str: compare bytes, so a damaged tag is just wrong
    if not isinstance(tag, str):
        return False
    return hmac.compare_digest(sign(body).encode(), tag.encode("utf-8", "surrogatepass"))


def _refuse(path: str, why: str, fix: str) -> KeyFileError:
    return KeyFileError(
        f"refusing the key file {path}: {why}. It authenticates your checkpoints and "
        f"failures files; {fix} (or point {ENV} at another file)."
    )


def _load(path: str) -> bytes | None:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None
    except OSError as exc:
        why = "it is a symbolic link" if exc.errno == errno.ELOOP else exc.strerror or str(exc)
        raise _refuse(path, why, "put the key itself there") from None
    try:
        st = os.fstat(fd)
        uid = os.geteuid()
        if not stat.S_ISREG(st.st_mode):
            raise _refuse(path, "it is not a regular file", "remove it")
        if st.st_uid != uid:
            raise _refuse(
                path, f"it belongs to uid {st.st_uid}, not to you (uid {uid})", "remove it"
            )
        if st.st_mode & 0o077:
            raise _refuse(
                path,
                f"others can read or write it (mode {stat.S_IMODE(st.st_mode):o}), so they "
                "could forge your files",
                f"chmod 600 {path!r} if nobody else could have read it, else remove it: a "
                "new key is made, and checkpoints signed with the old one need --reset",
            )
        text = os.read(fd, _KEY_HEX + 2).decode("ascii", "replace").strip()
    finally:
        os.close(fd)
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != _KEY_HEX // 2:
        raise _refuse(path, f"it does not hold {_KEY_HEX} hex digits", "remove it")
    return key


def _create(path: str) -> None:
    """Write a new key; two processes racing here end up with the same one (link is atomic)."""
    folder = os.path.dirname(path)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        tmp = os.path.join(folder, f".state.key.{os.urandom(8).hex()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, (os.urandom(_KEY_HEX // 2).hex() + "\n").encode())  # as secrets.token_hex
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another run made one first: use theirs
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    except OSError as exc:
        raise KeyFileError(
            f"cannot create the key file {path}: {exc.strerror or exc}. taskmaster keeps "
            f"the key that authenticates your state files there; make the folder writable, "
            f"or set {ENV} to a path in a folder of yours."
        ) from None
