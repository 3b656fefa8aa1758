"""The state file: round trips, rejection of anything corrupt or foreign (without unpickling
it), durable replacement that keeps the old file when a write fails, and the run lock."""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import MARKER_VAR
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from taskmaster import failpoints
from taskmaster.core.ledger import ResolvedRange
from taskmaster.errors import CheckpointError, LockedError, StateIOError
from taskmaster.store import checkpoint, codec, durable
from taskmaster.store.checkpoint import Anchor, State, StateLock


class Point:
    """A job type of the user's: not JSON, so its anchor is stored pickled."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    def __hash__(self) -> int:
        return hash((self.x, self.y))


class MakesMarker:
    """Unpickling it creates a folder: proof that a checkpoint's pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.path,)


def make_state(job: Any = 42, **changes: Any) -> State:
    fields: dict[str, Any] = {
        "target": "jobs:get_jobs",
        "kwargs": {"table": "users", "n": "10"},
        "watermark": 7,
        "anchor": Anchor(7, job, codec.job_digest(job)),
        "resolved": (ResolvedRange(9, 12, "abc"), ResolvedRange(20, 21, None)),
        "done": 11,
        "failed": 2,
        "finished": False,
        "limit": None,
        "started": 1712345678.25,
        "updated": 1712345699.5,
        "runs": 3,
        "rate": 1234.5,
        "window": 1000,
        "extra": {"note": "x"},
    }
    fields.update(changes)
    return State(**fields)


VALID = checkpoint.encode(make_state())


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "job",
    [
        42,
        "a string",
        None,
        True,
        3.5,
        [1, "two", [3.0, None]],
        {"id": 5, "tags": ["a", "b"], "nested": {"k": False}},
        "caf\u00e9 \u2603",
    ],
    ids=repr,
)
def test_json_jobs_round_trip_as_json(job: Any) -> None:
    state = make_state(job)
    data = checkpoint.encode(state)
    assert json.loads(data)["anchor"]["job"]["json"] == job
    back = checkpoint.decode(data)
    assert back == state
    assert back.anchor is not None and type(back.anchor.job) is type(job)


@pytest.mark.parametrize(
    "job",
    [
        (1, 2, 3),
        {1: "int key", 2: "another"},
        [1, (2, 3)],
        {"a": (1, 2)},
        b"bytes",
        {1, 2, 3},
        Point(3, 4),
        float("nan"),
    ],
    ids=repr,
)
def test_non_json_jobs_round_trip_pickled(job: Any) -> None:
    state = make_state(job)
    data = checkpoint.encode(state)
    stored = json.loads(data)["anchor"]["job"]
    assert "json" not in stored and "pickle" in stored
    back = checkpoint.decode(data)
    assert back.anchor is not None
    if job != job:  # nan: equal by identity only
        assert back.anchor.job != back.anchor.job
        return
    assert back.anchor.job == job and type(back.anchor.job) is type(job)
    assert back == state


def test_job_pickle_cannot_handle_goes_through_dill() -> None:
    def job(x: int) -> int:  # a local function: pickle refuses it, dill does not
        return x * 3

    data = checkpoint.encode(make_state(job))
    assert "dill" in json.loads(data)["anchor"]["job"]
    back = checkpoint.decode(data)
    assert back.anchor is not None and back.anchor.job(5) == 15


def test_state_without_anchor_round_trips() -> None:
    state = make_state(anchor=None, resolved=(), watermark=0, finished=True, limit=100)
    assert checkpoint.decode(checkpoint.encode(state)) == state


def test_file_is_readable_json_with_fingerprint() -> None:
    doc = json.loads(VALID)
    assert doc["format"] == "taskmaster-checkpoint" and doc["version"] == 2
    assert doc["watermark"] == 7 and doc["resolved"] == [[9, 12, "abc"], [20, 21, None]]
    assert doc["fingerprint"] == checkpoint.fingerprint("jobs:get_jobs", doc["kwargs"])
    assert doc["checksum"].startswith("hmac-sha256:")
    assert (
        checkpoint.fingerprint("jobs:get_jobs", {"n": "11", "table": "users"})
        != (doc["fingerprint"])
    )


def test_read_returns_none_without_a_file(tmp_path: Path) -> None:
    assert checkpoint.read(str(tmp_path / "none.json")) is None


def test_read_refuses_a_folder(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="not a regular file"):
        checkpoint.read(str(tmp_path))


# -- rejection ---------------------------------------------------------------------------------


def _rewrite(doc: dict[str, Any], checksum: bool = False) -> bytes:
    if checksum:
        doc["checksum"] = checkpoint._checksum(doc)
    return json.dumps(doc, indent=1).encode()


def _edited(**fields: Any) -> bytes:
    doc = json.loads(VALID)
    doc.update(fields)
    return _rewrite(doc)


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"", "empty"),
        (b"  \n\t", "empty"),
        (b"\x00\xff\xfe garbage \x80", "not valid JSON"),
        (b"hello world", "not valid JSON"),
        (b"[1, 2, 3]", "not a taskmaster checkpoint"),
        (b'{"watermark": 5}', "not a taskmaster checkpoint"),
        (VALID[: len(VALID) // 2], "not valid JSON"),
        (VALID[:1], "not valid JSON"),
        (_edited(watermark=1000), "checksum"),
        (_edited(done=12), "checksum"),
        (_edited(kwargs={"table": "orders", "n": "10"}), "checksum"),
        (_edited(checksum="sha256:" + "0" * 64), "checksum"),
        (_edited(checksum=None), "checksum"),
        (_edited(version=3), "version 3"),
        (_edited(version="1"), "version '1'"),
        (_edited(format="another-tool-checkpoint"), "not a taskmaster checkpoint"),
    ],
    ids=[
        "empty",
        "blank",
        "binary",
        "text",
        "json-list",
        "other-json",
        "half",
        "one-byte",
        "edited-watermark",
        "edited-done",
        "edited-kwargs",
        "wrong-checksum",
        "no-checksum",
        "future-version",
        "string-version",
        "other-format",
    ],
)
def test_bad_files_are_refused(data: bytes, says: str) -> None:
    with pytest.raises(CheckpointError, match=says) as info:
        checkpoint.decode(data, "/x/jobs.state.json")
    message = str(info.value)
    assert "/x/jobs.state.json" in message and "--reset" in message
    assert "\n" not in message


def test_every_truncation_is_refused() -> None:
    # the trailing newline is the only byte whose loss changes nothing
    for cut in range(len(VALID) - 1):
        with pytest.raises(CheckpointError):
            checkpoint.decode(VALID[:cut])
    assert checkpoint.decode(VALID[:-1]) == make_state()


def test_every_single_bit_flip_is_refused() -> None:
    # an ASCII file with no exponent in its numbers has no flip that keeps its meaning
    for i in range(len(VALID)):
        for bit in range(8):
            data = bytearray(VALID)
            data[i] ^= 1 << bit
            with pytest.raises(CheckpointError):
                checkpoint.decode(bytes(data))


def test_oversized_file_is_refused_before_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(checkpoint, "MAX_STATE_BYTES", len(VALID) - 1)
    with pytest.raises(CheckpointError, match="too big"):
        checkpoint.decode(VALID)


def test_malformed_field_with_valid_checksum_is_refused() -> None:
    for field, value in [
        ("watermark", "seven"),
        ("resolved", [[1, 2]]),
        ("kwargs", [1, 2]),
        ("anchor", {"seq": 1}),
        ("done", None),
        ("watermark", 1e999),
        ("window", "wide"),
        ("window", 1e999),
    ]:
        doc = json.loads(VALID)
        doc[field] = value
        with pytest.raises(CheckpointError):
            checkpoint.decode(_rewrite(doc, checksum=True))


def test_anchor_that_cannot_be_unpickled_is_refused() -> None:
    doc = json.loads(VALID)
    doc["anchor"]["job"] = {"repr": "?", "pickle": "bm90IGEgcGlja2xl"}  # "not a pickle"
    with pytest.raises(CheckpointError, match="cannot be decoded"):
        checkpoint.decode(_rewrite(doc, checksum=True))


def _mutations() -> st.SearchStrategy[bytes]:
    """Damage to a valid file: flips, cuts, splices and inserted bytes."""
    index = st.integers(0, len(VALID) - 1)
    flip = st.tuples(index, st.integers(0, 7)).map(
        lambda t: VALID[: t[0]] + bytes([VALID[t[0]] ^ (1 << t[1])]) + VALID[t[0] + 1 :]
    )
    cut = st.tuples(index, index).map(lambda t: VALID[: min(t)] + VALID[max(t) :])
    insert = st.tuples(index, st.binary(min_size=1, max_size=8)).map(
        lambda t: VALID[: t[0]] + t[1] + VALID[t[0] :]
    )
    overwrite = st.tuples(index, st.binary(min_size=1, max_size=8)).map(
        lambda t: VALID[: t[0]] + t[1] + VALID[t[0] + len(t[1]) :]
    )
    return st.one_of(flip, cut, insert, overwrite)


def _parse_or_refuse(data: bytes) -> State | None:
    """The parser's contract: a State or CheckpointError, nothing else."""
    try:
        state = checkpoint.decode(data)
    except CheckpointError as exc:
        assert str(exc)
        return None
    assert isinstance(state, State)
    return state


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_parser_on_any_bytes(data: bytes) -> None:
    assert _parse_or_refuse(data) is None


@settings(max_examples=300, deadline=None)
@given(_mutations())
def test_parser_on_damaged_files(data: bytes) -> None:
    state = _parse_or_refuse(data)
    # A change that survives parsing must not have changed what the file means (e.g. the
    # trailing newline cut, or whitespace turned into other whitespace).
    assert state is None or state == make_state()


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=5),
        lambda kids: (
            st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
        ),
        max_leaves=10,
    ),
    st.sampled_from(sorted(json.loads(VALID))),
)
def test_parser_on_consistent_files_with_odd_fields(value: Any, field: str) -> None:
    # A file whose checksum matches but whose fields are of any JSON shape.
    doc = json.loads(VALID)
    doc[field] = value
    _parse_or_refuse(_rewrite(doc, checksum=True))


# -- a pickle in the checkpoint is never run unless the file is intact -------------------------


_find_class_events: list[tuple[Any, ...]] | None = None


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event == "pickle.find_class" and _find_class_events is not None:
        _find_class_events.append(args)


sys.addaudithook(_audit)


def _evil_checkpoint(marker: Path) -> bytes:
    data = checkpoint.encode(make_state(MakesMarker(str(marker))))
    assert "pickle" in json.loads(data)["anchor"]["job"]
    return data


@pytest.mark.parametrize(
    "damage",
    ["watermark", "flip", "truncate", "version", "payload-swap"],
)
def test_pickle_in_a_bad_file_is_not_loaded(tmp_path: Path, damage: str) -> None:
    global _find_class_events
    marker = tmp_path / "pwned"
    evil = _evil_checkpoint(marker)
    doc = json.loads(evil)
    if damage == "watermark":
        doc["watermark"] = 0
        data = _rewrite(doc)
    elif damage == "flip":
        at = evil.index(b'"updated"') + 14
        data = evil[:at] + bytes([evil[at] ^ 1]) + evil[at + 1 :]
    elif damage == "truncate":
        data = evil[:-40]
    elif damage == "version":
        doc["version"] = 99
        data = _rewrite(doc)
    else:  # a benign file whose anchor pickle was swapped for the evil one
        benign = json.loads(checkpoint.encode(make_state(Point(1, 2))))
        benign["anchor"]["job"] = doc["anchor"]["job"]
        data = _rewrite(benign)
    path = tmp_path / "jobs.state.json"
    path.write_bytes(data)
    _find_class_events = []
    try:
        with pytest.raises(CheckpointError):
            checkpoint.read(str(path))
        assert _find_class_events == [], "the parser looked up a class in an unverified pickle"
    finally:
        _find_class_events = None
    assert not marker.exists(), "a pickle from a corrupt checkpoint was executed"
    assert path.read_bytes() == data


def test_the_marker_pickle_does_run_when_the_file_is_intact(tmp_path: Path) -> None:
    # Shows the test above can fail: the same payload in an intact file is unpickled.
    marker = tmp_path / "pwned"
    checkpoint.decode(_evil_checkpoint(marker))
    assert marker.is_dir()


# -- durable writes ----------------------------------------------------------------------------


def _temps(folder: Path) -> list[str]:
    return [p.name for p in folder.iterdir() if ".tmp." in p.name]


def test_write_durable_replaces_the_file(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    checkpoint.write_durable(str(path), b"one")
    checkpoint.write_durable(str(path), b"two")
    assert path.read_bytes() == b"two"
    assert _temps(tmp_path) == []
    assert os.stat(path).st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    ("point", "kept"),
    [
        ("ckpt.before_tmp_write", "old"),
        ("ckpt.after_tmp_write", "old"),
        ("ckpt.after_fsync", "old"),
        ("ckpt.after_rename", "new"),  # renamed in, not yet durable: reported as failed
        ("ckpt.after_dirsync", "new"),
    ],
)
def test_failed_write_keeps_the_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, point: str, kept: str
) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b"old")
    monkeypatch.setattr(failpoints, "_points", {point: ("raise", 0.0, 1)})
    monkeypatch.setattr(failpoints, "_counts", {})
    with pytest.raises(StateIOError) as info:
        checkpoint.write_durable(str(path), b"new")
    assert str(path) in str(info.value) and "EIO" in str(info.value)
    assert path.read_bytes() == (b"old" if kept == "old" else b"new")
    assert _temps(tmp_path) == []


def test_failpoint_fires_on_its_count_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    monkeypatch.setattr(failpoints, "_points", {"ckpt.after_fsync": ("raise", 0.0, 2)})
    monkeypatch.setattr(failpoints, "_counts", {})
    checkpoint.write_durable(str(path), b"first")
    with pytest.raises(StateIOError):
        checkpoint.write_durable(str(path), b"second")
    checkpoint.write_durable(str(path), b"third")
    assert path.read_bytes() == b"third"


def test_fsync_error_is_not_retried(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b"old")
    calls = []

    def failing_fsync(fd: int) -> None:
        calls.append(fd)
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(durable.os, "fsync", failing_fsync)
    with pytest.raises(StateIOError, match="Input/output error"):
        checkpoint.write_durable(str(path), b"new")
    monkeypatch.undo()
    assert len(calls) == 1
    assert path.read_bytes() == b"old" and _temps(tmp_path) == []


def test_short_writes_are_completed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real_write = os.write
    monkeypatch.setattr(durable.os, "write", lambda fd, data: real_write(fd, data[:7]))
    checkpoint.write_durable(str(tmp_path / "s.json"), VALID)
    monkeypatch.undo()
    assert (tmp_path / "s.json").read_bytes() == VALID


KILLED_WRITER = textwrap.dedent(
    """
    import sys
    from taskmaster.store import checkpoint
    checkpoint.write_durable(sys.argv[1], b"new")
    print("returned")
    """
)


@pytest.mark.parametrize(
    ("point", "kept"),
    [
        ("ckpt.before_tmp_write", "old"),
        ("ckpt.after_tmp_write", "old"),
        ("ckpt.after_fsync", "old"),
        ("ckpt.after_rename", "new"),
        ("ckpt.after_dirsync", "new"),
    ],
)
def test_writer_killed_at_a_failpoint(tmp_path: Path, marker: str, point: str, kept: str) -> None:
    """The env var is read at import: a writer SIGKILLed at each point leaves a whole file,
    and the next start removes its temp file."""
    path = tmp_path / "s.json"
    path.write_bytes(b"old")
    env = {**os.environ, MARKER_VAR: marker, "TASKMASTER_FAILPOINTS": f"{point}=kill"}
    result = subprocess.run(
        [sys.executable, "-c", KILLED_WRITER, str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == -9, result.stderr
    assert "returned" not in result.stdout
    assert path.read_bytes() == (b"old" if kept == "old" else b"new")
    checkpoint.remove_stale_temps(str(path))
    assert _temps(tmp_path) == []
    assert path.read_bytes() == (b"old" if kept == "old" else b"new")


def test_bad_failpoint_spec_is_refused() -> None:
    with pytest.raises(ValueError, match="TASKMASTER_FAILPOINTS"):
        failpoints._parse("ckpt.after_fsync=explode")
    assert failpoints._parse(" a.b=kill@3, c=sleep(0.5)") == {
        "a.b": ("kill", 0.0, 3),
        "c": ("sleep", 0.5, 1),
    }


def test_remove_stale_temps_keeps_other_files(tmp_path: Path) -> None:
    path = tmp_path / "s.json"
    for name in (".s.json.tmp.123", ".s.json.tmp.9", "s.json", ".other.json.tmp.1", "x"):
        (tmp_path / name).write_bytes(b"")
    checkpoint.remove_stale_temps(str(path))
    assert sorted(p.name for p in tmp_path.iterdir()) == [".other.json.tmp.1", "s.json", "x"]


# -- the lock ----------------------------------------------------------------------------------


def test_second_holder_is_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "jobs.state.json")
    first = StateLock(path)
    first.acquire()
    try:
        with pytest.raises(LockedError) as info:
            StateLock(path).acquire()
        message = str(info.value)
        assert f"pid {os.getpid()}" in message and path in message
        assert info.value.exit_code == 75
    finally:
        first.release()
    again = StateLock(path)
    again.acquire()
    again.release()
    assert not os.path.exists(first.path)


def test_lock_is_per_state_file(tmp_path: Path) -> None:
    a, b = StateLock(str(tmp_path / "a.json")), StateLock(str(tmp_path / "b.json"))
    a.acquire()
    b.acquire()
    a.release()
    b.release()


def test_lock_in_an_unwritable_place_is_an_io_error(tmp_path: Path) -> None:
    with pytest.raises(StateIOError, match="cannot use the folder .*/no/such"):
        StateLock(str(tmp_path / "no" / "such" / "s.json")).acquire()


def test_lock_released_while_a_second_run_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """B opens the lock file, A releases it (and removes the file), B locks the removed
    file: a third run C must still be refused while B holds the lock."""
    path = str(tmp_path / "jobs.state.json")
    a, b, c = StateLock(path), StateLock(path), StateLock(path)
    a.acquire()
    real_flock = fcntl.flock
    released = []

    def flock_after_release(fd: int, op: int) -> None:
        if not released:
            released.append(True)
            a.release()
        real_flock(fd, op)

    monkeypatch.setattr(durable.fcntl, "flock", flock_after_release)
    b.acquire()
    monkeypatch.undo()
    try:
        with pytest.raises(LockedError):
            c.acquire()
    finally:
        b.release()
        c.release()


# -- power loss: every crash state of the writer ----------------------------------------------


class FakeDisk:
    """One folder on a disk that loses whatever was not synced (SQLite's crash-test model).

    Stands in for ``os`` inside durable.py: the writer sees an ordinary file system, and
    every call that matters is recorded, so each crash point can be replayed afterwards.
    ``skip`` turns the file's or the folder's fsync into a no-op (a mutation to detect).
    """

    def __init__(self, folder: str, name: str, old: bytes | None, skip: str = "") -> None:
        self.folder, self.skip = folder, skip
        self.names: dict[str, int] = {}  # what the writer sees
        self.data: dict[int, bytes] = {}
        self.fds: dict[int, int | None] = {}  # fd -> inode, None for the folder
        self.ops: list[tuple[Any, ...]] = []
        self.initial: dict[str, int] = {}
        if old is not None:
            self.names[name] = self.initial[name] = 0
            self.data[0] = old
        self.inodes = 1

    def __getattr__(self, attr: str) -> Any:
        return getattr(os, attr)  # constants, os.path, getpid

    def _name(self, path: str) -> str:
        folder, name = os.path.split(os.path.abspath(path))
        assert folder == self.folder, f"the writer touched {path}, outside its folder"
        return name

    def open(self, path: str, flags: int, mode: int = 0o777) -> int:
        fd = 100 + len(self.fds)
        if os.path.abspath(path) == self.folder:
            self.fds[fd] = None
            return fd
        name = self._name(path)
        assert flags & os.O_CREAT and flags & os.O_EXCL, "temp files are created exclusively"
        if name in self.names:
            raise FileExistsError(path)
        ino, self.inodes = self.inodes, self.inodes + 1
        self.names[name], self.data[ino], self.fds[fd] = ino, b"", ino
        self.ops.append(("create", name, ino))
        return fd

    def write(self, fd: int, data: Any) -> int:
        chunk = bytes(data[:97])  # short writes: the writer must loop
        ino = self.fds[fd]
        assert ino is not None
        self.data[ino] += chunk
        self.ops.append(("write", ino, chunk))
        return len(chunk)

    def fsync(self, fd: int) -> None:
        ino = self.fds[fd]
        if (ino is None and self.skip == "dir") or (ino is not None and self.skip == "file"):
            return
        self.ops.append(("sync", ino))

    def close(self, fd: int) -> None:
        del self.fds[fd]

    def replace(self, src: str, dst: str) -> None:
        s, d = self._name(src), self._name(dst)
        self.names[d] = self.names.pop(s)
        self.ops.append(("rename", s, d))

    def unlink(self, path: str) -> None:
        name = self._name(path)
        if name not in self.names:
            raise FileNotFoundError(path)
        del self.names[name]
        self.ops.append(("unlink", name))

    def crash_images(self, upto: int, name: str) -> list[bytes | None]:
        """Every content ``name`` may have after power is lost once ``upto`` ops ran."""
        folder, pending_dir = dict(self.initial), []  # durable entries, unsynced changes
        durable = {ino: data for ino, data in self.data.items() if ino == 0}
        unsynced: dict[int, bytes] = {}
        for op in self.ops[:upto]:
            if op[0] == "write":
                unsynced[op[1]] = unsynced.get(op[1], b"") + op[2]
            elif op[0] == "sync" and op[1] is None:
                for change in pending_dir:
                    _apply(folder, change)
                pending_dir = []
            elif op[0] == "sync":
                durable[op[1]] = durable.get(op[1], b"") + unsynced.pop(op[1], b"")
            else:
                pending_dir.append(op)
        images: list[bytes | None] = []
        for applied in range(len(pending_dir) + 1):  # metadata reaches the disk in order
            entries = dict(folder)
            for change in pending_dir[:applied]:
                _apply(entries, change)
            ino = entries.get(name)
            if ino is None:
                images.append(None)
                continue
            base, tail = durable.get(ino, b""), unsynced.get(ino, b"")
            images += [base, base + tail[: len(tail) // 2], base + bytes(len(tail)), base + tail]
        return images


def _apply(entries: dict[str, int], change: tuple[Any, ...]) -> None:
    if change[0] == "create":
        entries[change[1]] = change[2]
    elif change[0] == "rename":
        entries[change[2]] = entries.pop(change[1])
    elif change[0] == "unlink":
        entries.pop(change[1], None)


def _power_loss_violations(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, old: State | None, skip: str = ""
) -> list[str]:
    """Run the real writer on a FakeDisk; list every crash state that recovers wrongly."""
    new = make_state(watermark=9, done=13, updated=1712345700.0)
    path = str(tmp_path / "jobs.state.json")
    disk = FakeDisk(str(tmp_path), "jobs.state.json", old and checkpoint.encode(old), skip)
    monkeypatch.setattr(durable, "os", disk)
    checkpoint.write_durable(path, checkpoint.encode(new))
    monkeypatch.undo()
    assert disk.ops, "the writer made no calls"
    bad = []
    for upto in range(len(disk.ops) + 1):
        returned = upto == len(disk.ops)
        allowed = [new] if returned else [old, new]
        for image in disk.crash_images(upto, "jobs.state.json"):
            try:
                got = None if image is None else checkpoint.decode(image)
            except CheckpointError as exc:
                bad.append(f"after {upto} ops: unreadable ({str(exc)[:60]})")
                continue
            if got not in allowed:
                what = "nothing" if got is None else f"watermark {got.watermark}"
                bad.append(f"after {upto} ops{' (returned)' if returned else ''}: {what}")
    return bad


@pytest.mark.parametrize("first", [False, True], ids=["replace", "first-write"])
def test_power_loss_at_any_point_recovers_old_or_new(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, first: bool
) -> None:
    old = None if first else make_state()
    assert _power_loss_violations(tmp_path, monkeypatch, old) == []


@pytest.mark.parametrize("skip", ["file", "dir"])
def test_power_loss_check_catches_a_missing_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, skip: str
) -> None:
    # Mutation check: without the temp file's fsync a crash can leave a torn checkpoint;
    # without the folder's, a checkpoint the writer reported durable can vanish.
    bad = _power_loss_violations(tmp_path, monkeypatch, make_state(), skip)
    assert bad
    if skip == "file":
        assert any("unreadable" in b for b in bad)
    else:
        assert all("(returned)" in b for b in bad)
