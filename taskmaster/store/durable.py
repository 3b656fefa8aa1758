"""Files in the state folder: opened without following links, checked to be ours, written
atomically and durably, and the run's lock.

Another local user who can write in the state folder must not be able to make a run follow
a symlink (truncating or appending to the link's target), hand it a file to trust, or stop
it by taking a predictable temp name first. So every file here is opened with
``O_NOFOLLOW``, a file we read or append to must be a regular file of ours with one link
that nobody else can write, the folder must not let others replace its files, and temp
files get random names created with ``O_EXCL``.

Write recipe (see RELIABILITY.md): temp file in the same folder, fsync, ``os.replace``,
fsync of the folder. A crash at any point leaves the old or the new file, never a torn one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import resource
import stat
import time

from taskmaster import failpoints
from taskmaster.errors import CheckpointError, LockedError, StateIOError

# Opening a file fails with EMFILE/ENFILE when the process (or the system) is out of file
# descriptors: idle connections to a master can do that. Descriptors come back as those
# close, so an open is retried a few times before the error counts as a broken folder.
OPEN_RETRIES = 6
OPEN_BACKOFF = 0.01  # seconds, doubled at each retry: about 0.6 s in all
_BUSY = (errno.EMFILE, errno.ENFILE)


def _pause(attempt: int) -> None:
    time.sleep(OPEN_BACKOFF * 2**attempt)


def refusal(path: str, why: str, fix: str = "") -> CheckpointError:
    """The error for a file or folder taskmaster will not trust."""
    fix = fix or (
        f"If you did not make it, remove it (rm {path!r}); else use --state-file in a "
        "folder only you can write"
    )
    return CheckpointError(
        f"refusing {path}: {why}. taskmaster trusts only files in the state folder that "
        f"you wrote and nobody else can change. {fix}."
    )


def open_file(path: str, flags: int, mode: int = 0o600) -> int:
    """``os.open`` without following a symlink, retrying while out of descriptors.

    A read is opened non-blocking, so a FIFO planted under our name cannot hang the run
    before its type is checked (regular files ignore the flag).
    """
    flags |= os.O_NOFOLLOW | os.O_CLOEXEC
    if flags & os.O_ACCMODE == os.O_RDONLY:
        flags |= os.O_NONBLOCK
    attempt = 0
    while True:
        try:
            return os.open(path, flags, mode)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise refusal(
                    path, "it is a symbolic link, and taskmaster never follows links there"
                ) from None
            if exc.errno not in _BUSY or attempt >= OPEN_RETRIES:
                raise
            _pause(attempt)
            attempt += 1


def check_file(path: str, st: os.stat_result) -> None:
    """Refuse a file that is not a regular file of ours, with one link, that only we write."""
    uid = os.geteuid()
    if not stat.S_ISREG(st.st_mode):
        raise refusal(path, "it is not a regular file")
    if st.st_uid != uid:
        raise refusal(path, f"it belongs to uid {st.st_uid}, not to you (uid {uid})")
    if st.st_mode & 0o022:
        raise refusal(
            path,
            f"others can write it (mode {stat.S_IMODE(st.st_mode):o})",
            f"If only you ever wrote it, chmod go-w {path!r}; else remove it",
        )
    if st.st_nlink > 1:
        raise refusal(path, f"it has {st.st_nlink} hard links, so it may be another file too")


def check_folder(folder: str) -> None:
    """Refuse a folder in which someone else could replace our files."""
    try:
        st = os.stat(folder)
    except OSError as exc:
        raise StateIOError(f"cannot use the folder {folder}: {exc.strerror}") from None
    uid = os.geteuid()
    if st.st_uid not in (uid, 0):
        raise refusal(
            folder,
            f"the folder belongs to uid {st.st_uid}, who could replace the files in it",
            "Use --state-file in a folder of yours",
        )
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise refusal(
            folder,
            f"others can write in this folder (mode {stat.S_IMODE(st.st_mode):o}) and it is "
            "not sticky, so they could replace the files in it",
            f"chmod go-w {folder!r} (or chmod +t), or use --state-file in a folder of yours",
        )


def folder_of(path: str) -> str:
    return os.path.dirname(os.path.abspath(path))


def read_checked(path: str, limit: int, *, owned: bool) -> tuple[bytes, int] | None:
    """Up to ``limit + 1`` bytes of ``path`` and its size; None when it does not exist.

    With ``owned``, the file and its folder must pass the checks above first.
    """
    try:
        if owned:
            check_folder(folder_of(path))
        fd = open_file(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateIOError(f"cannot read {path}: {exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if owned:
            check_file(path, st)
        elif not stat.S_ISREG(st.st_mode):
            raise refusal(path, "it is not a regular file")
        chunks = []
        left = limit + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks), st.st_size
    except OSError as exc:
        raise StateIOError(f"cannot read {path}: {exc.strerror}") from None
    finally:
        os.close(fd)


def fsync_dir(path: str) -> None:
    fd = open_file(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_prefix(path: str) -> str:
    return f".{os.path.basename(path)}.tmp."


def _create_temp(path: str) -> tuple[str, int]:
    folder = folder_of(path)
    while True:
        tmp = os.path.join(folder, temp_prefix(path) + os.urandom(8).hex())
        try:
            return tmp, open_file(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # 2^-64 by chance, or planted: either way, another name
            continue


def write_durable(path: str, data: bytes) -> None:
    """Replace ``path`` with ``data`` atomically and durably, or raise StateIOError.

    A failed write or fsync is never retried and trusted: the temp file goes, the old
    file stays, and the error propagates (an fsync that failed once may have dropped pages).
    Only running out of descriptors while opening is waited out (see OPEN_RETRIES).
    """
    folder = folder_of(path)
    tmp = None
    try:
        failpoints.hit("ckpt.before_tmp_write")
        tmp, fd = _create_temp(path)
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
        tmp = None
        failpoints.hit("ckpt.after_rename")
        fsync_dir(folder)
        failpoints.hit("ckpt.after_dirsync")
    except OSError as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        code = errno.errorcode.get(exc.errno or 0, exc.errno)
        hint = (
            "too many files are open (raise ulimit -n, or find what holds them)"
            if exc.errno in _BUSY
            else "free space or fix the folder"
        )
        raise StateIOError(
            f"writing the checkpoint {path} failed: {exc.strerror or exc} ({code}). The last "
            f"good checkpoint was kept; {hint}, then run again with --resume."
        ) from None


def remove_stale_temps(path: str) -> None:
    """Remove the temp files a crashed write of ``path`` left: our own regular files only."""
    folder = folder_of(path)
    prefix = temp_prefix(path)
    uid = os.geteuid()
    with contextlib.suppress(OSError):
        for name in os.listdir(folder):
            if name.startswith(prefix):
                full = os.path.join(folder, name)
                with contextlib.suppress(OSError):
                    st = os.lstat(full)
                    if stat.S_ISREG(st.st_mode) and st.st_uid == uid:
                        os.unlink(full)


def raise_open_file_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; returns the soft limit now in force.

    The usual soft limit of 1,024 is a few hundred idle connections away from a checkpoint
    that cannot open its temp file; the hard limit is what the system lets us have.
    """
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        target = _nr_open()
    if soft != resource.RLIM_INFINITY and soft < target:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return soft


def _nr_open() -> int:
    try:
        with open("/proc/sys/fs/nr_open") as f:
            return int(f.read())
    except (OSError, ValueError):
        return 10240  # macOS's OPEN_MAX: the most setrlimit accepts there


PID_WIDTH = 20


class StateLock:
    """An exclusive lock on a state file, held for the run's life (flock on a side file).

    The lock file is never truncated: the pid is written over the first bytes of a file
    that was just checked to be ours, so a planted link or file loses nothing.
    """

    def __init__(self, state_path: str) -> None:
        folder, name = os.path.split(os.path.abspath(state_path))
        self.path = os.path.join(folder, f".{name}.lock")
        self._fd: int | None = None

    def acquire(self) -> None:
        check_folder(folder_of(self.path))
        while True:
            fd = self._lock_file()
            # The holder before us removes the file as it releases it: if the file we
            # locked is no longer at self.path, a run starting now would lock another one.
            if self._still_current(fd):
                break
            os.close(fd)
        os.pwrite(fd, str(os.getpid()).ljust(PID_WIDTH - 1).encode() + b"\n", 0)
        self._fd = fd

    def _lock_file(self) -> int:
        try:
            fd = open_file(self.path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as exc:
            raise StateIOError(
                f"cannot create the lock file {self.path}: {exc.strerror}. Is the folder "
                "writable? Pick another with --state-file."
            ) from None
        try:
            check_file(self.path, os.fstat(fd))
        except CheckpointError:
            os.close(fd)
            raise
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            pid = read_pid(self.path)
            who = f" (pid {pid})" if pid else ""
            raise LockedError(
                f"another taskmaster run{who} is using the state file "
                f"{state_path_of(self.path)}. Wait for it to finish or stop it first; two "
                "runs on one checkpoint would both lose track of jobs."
            ) from None
        return fd

    def _still_current(self, fd: int) -> bool:
        try:
            now = os.lstat(self.path)
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


def read_pid(path: str) -> str:
    try:
        fd = open_file(path, os.O_RDONLY)
    except (OSError, CheckpointError):
        return ""
    try:
        return os.read(fd, PID_WIDTH).decode(errors="replace").strip()
    except OSError:
        return ""
    finally:
        os.close(fd)
