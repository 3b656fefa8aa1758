"""Nothing from the state folder is unpickled before it is proven ours (issue 10, item 1).

Each attack is real: another user is simulated by a planted file whose pickle would create
a marker folder (``os.mkdir``: no module of ours needed to unpickle it). Every entry point
that reads the folder runs in a real process, and the marker must never appear; a control
at the end of each test decodes the same bytes in-process and shows the payload is live.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Job

from taskmaster.core.ledger import ResolvedRange
from taskmaster.errors import CheckpointError
from taskmaster.store import checkpoint, codec, failures, keys
from taskmaster.store.checkpoint import Anchor, State
from taskmaster.store.failures import FailureRecord

NOBODY = 65534
IS_ROOT = os.geteuid() == 0


class MakesMarker:
    """Unpickling it creates a folder: proof that a planted pickle was executed."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return os.mkdir, (self.path,)

    def __repr__(self) -> str:
        return "MakesMarker()"


def tm_status(job: Job) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", "from taskmaster.cli.run import status_command; status_command()"],
        cwd=job.folder,
        env=job.env,
        capture_output=True,
        text=True,
        timeout=30,
    )


@contextlib.contextmanager
def attackers_key(tmp_path: Path) -> Iterator[None]:
    """Sign with someone else's key inside the block."""
    with pytest.MonkeyPatch.context() as m:
        m.setenv(keys.ENV, str(tmp_path / "attacker" / "state.key"))
        yield


def planted_state(marker: Path, version: int) -> bytes:
    """A checkpoint for jobs.py whose anchor is a pickle that creates ``marker``."""
    state = State(
        target="jobs:get_jobs",
        kwargs={},
        watermark=3,
        anchor=Anchor(3, MakesMarker(str(marker)), "0" * 24),
        resolved=(ResolvedRange(5, 6, None),),
        done=3,
        window=100,
    )
    doc = json.loads(checkpoint.encode(state))
    assert "pickle" in doc["anchor"]["job"]
    if version == 1:  # as taskmaster wrote it before the key: a plain SHA-256
        doc["version"] = 1
        del doc["window"]
        doc["checksum"] = checkpoint._checksum(doc)
    return json.dumps(doc, indent=1).encode()


def make_foreign(path: Path, how: str) -> None:
    if how == "world-writable":
        path.chmod(0o666)
    elif how == "foreign-owner":
        if not IS_ROOT:
            pytest.skip("making a file another user's needs root")
        os.chown(path, NOBODY, NOBODY)
    elif how == "open-folder":
        path.parent.chmod(0o777)  # not sticky: anyone could have replaced the file


def assert_refused(result: subprocess.CompletedProcess[str], *says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for text in says:
        assert text in result.stderr, result.stderr


FOREIGN = [
    ("world-writable", "others can write it (mode 666)"),
    ("foreign-owner", f"it belongs to uid {NOBODY}, not to you"),
    ("open-folder", "others can write in this folder (mode 777)"),
]


@pytest.mark.parametrize(("how", "says"), FOREIGN, ids=[f[0] for f in FOREIGN])
def test_planted_old_format_checkpoint_is_never_unpickled(
    job: Job, tmp_path: Path, how: str, says: str
) -> None:
    marker = tmp_path / "pwned"
    data = planted_state(marker, version=1)
    job.state.write_bytes(data)
    make_foreign(job.state, how)
    try:
        status = tm_status(job)  # shows the stored repr, decodes nothing
        assert status.returncode == 0, status.stderr
        assert "resumes at   job 3: MakesMarker()" in status.stdout
        assert not marker.exists()
        for extra in ([], ["--resume"]):
            assert_refused(job.run("1", *extra), "refusing ", says, "taskmaster trusts only")
            assert not marker.exists()
    finally:
        tmp_path.chmod(0o700)
    assert job.counts() == {}
    checkpoint.decode(data)  # control: the payload is live
    assert marker.is_dir()


def test_checkpoint_signed_with_another_key_is_refused_everywhere(job: Job, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with attackers_key(tmp_path):
        data = planted_state(marker, version=2)
    job.state.write_bytes(data)
    job.state.chmod(0o600)  # ours in every way but the key
    says = ("fails its checksum", "written with another key", os.environ[keys.ENV])
    assert_refused(tm_status(job), *says)
    assert_refused(job.run("1"), *says)
    assert_refused(job.run("1", "--resume"), *says)
    assert not marker.exists()
    assert job.counts() == {}
    with attackers_key(tmp_path):
        checkpoint.decode(data)  # control: with the attacker's key it decodes and runs
    assert marker.is_dir()


def test_tm_status_never_decodes_even_our_own_pickle(job: Job, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    job.state.write_bytes(planted_state(marker, version=2))
    status = tm_status(job)
    assert status.returncode == 0, status.stderr
    assert "resumes at   job 3: MakesMarker()" in status.stdout
    assert not marker.exists()


def test_our_old_format_checkpoint_still_resumes(tmp_path: Path) -> None:
    """A version 1 file (plain SHA-256) of ours, pickled anchor included, is read."""
    path = tmp_path / "jobs.state.json"
    job = (1, 2)  # a tuple: not JSON, so pickled
    state = State(target="jobs:get_jobs", kwargs={}, watermark=4, anchor=Anchor(4, job, "d"))
    doc = json.loads(checkpoint.encode(state))
    doc["version"] = 1
    del doc["window"]
    doc["checksum"] = checkpoint._checksum(doc)
    path.write_text(json.dumps(doc))
    back = checkpoint.read(str(path))
    assert back is not None and back.anchor is not None and back.anchor.job == (1, 2)
    path.chmod(0o666)
    with pytest.raises(CheckpointError, match="others can write it"):
        checkpoint.read(str(path))


def test_old_format_resume_through_the_cli(job: Job) -> None:
    state = State(target="jobs:get_jobs", kwargs={}, watermark=6, anchor=Anchor(6, 6, "x"))
    doc = json.loads(checkpoint.encode(state))
    doc["version"] = 1
    del doc["window"]
    doc["checksum"] = checkpoint._checksum(doc)
    job.state.write_text(json.dumps(doc))
    result = job.run("1", "--resume", TM_N="10")
    assert result.returncode == 0, result.stderr
    assert sorted(job.counts()) == [6, 7, 8, 9]
    assert job.checkpoint()["version"] == 2 and job.checkpoint()["finished"] is True


# -- the failures file -------------------------------------------------------------------------


def record(seq: int, job: Any) -> FailureRecord:
    return failures.make_record(seq, job, "ValueError: no", "", 1)


def planted_line(marker: Path) -> str:
    return record(5, MakesMarker(str(marker))).to_json()


@pytest.mark.parametrize(("how", "says"), FOREIGN, ids=[f[0] for f in FOREIGN])
def test_planted_failures_file_is_never_unpickled(
    job: Job, tmp_path: Path, how: str, says: str
) -> None:
    marker = tmp_path / "pwned"
    line = planted_line(marker)
    job.failures_path.write_text(line + "\n")
    make_foreign(job.failures_path, how)
    try:
        assert_refused(job.run("1", "--retry-failed"), "refusing ", says)
    finally:
        tmp_path.chmod(0o700)
    assert not marker.exists()
    assert job.failures_path.read_text() == line + "\n"
    codec.loads("pickle", base64.b64decode(json.loads(line)["payload"]))  # control
    assert marker.is_dir()


@pytest.mark.parametrize("how", ["other-key", "edited"])
def test_failure_lines_that_fail_their_mac_are_refused(job: Job, tmp_path: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    good = record(1, 1).to_json()
    if how == "other-key":
        with attackers_key(tmp_path):
            bad = planted_line(marker)
    else:  # a line of ours whose payload was swapped for the planted one
        doc = json.loads(record(5, 5).to_json())
        doc["payload"] = json.loads(planted_line(marker))["payload"]
        bad = json.dumps(doc)
    text = f"{good}\n{bad}\n{good}\n"
    job.failures_path.write_text(text)
    job.failures_path.chmod(0o600)
    result = job.run("1", "--retry-failed")
    assert_refused(result, "line 2 fails its MAC", "nothing was run", "Delete those lines")
    assert not marker.exists()
    assert job.counts() == {}, "a refused file ran some jobs"
    assert job.failures_path.read_text() == text


def test_old_failure_lines_without_a_mac_are_retried_from_our_own_file(job: Job) -> None:
    doc = json.loads(record(3, 3).to_json())
    del doc["mac"]  # as written before the MAC existed
    job.failures_path.write_text(json.dumps(doc) + "\n")
    job.failures_path.chmod(0o600)
    result = job.run("1", "--retry-failed")
    assert result.returncode == 0, result.stderr
    assert job.counts() == {3: 1}


def test_failure_lines_carry_a_mac_of_our_key() -> None:
    doc = json.loads(record(2, [1, 2]).to_json())
    assert doc["mac"].startswith("hmac-sha256:")
    body = {k: v for k, v in doc.items() if k != "mac"}
    canon = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert keys.verify(canon.encode(), doc["mac"])
    assert not keys.verify(canon.encode() + b" ", doc["mac"])


# -- the key file ------------------------------------------------------------------------------


def test_key_file_is_made_on_first_use_mode_0600(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(keys.ENV)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    assert keys.key_path() == str(tmp_path / "xdg" / "taskmaster" / "state.key")
    tag = keys.sign(b"x")
    st = os.stat(keys.key_path())
    assert stat.S_IMODE(st.st_mode) == 0o600 and st.st_uid == os.geteuid()
    assert keys.verify(b"x", tag)
    monkeypatch.delenv("XDG_CONFIG_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert keys.key_path() == str(tmp_path / "home" / ".config" / "taskmaster" / "state.key")
    assert keys.sign(b"x") != tag  # another key file, another key


@pytest.mark.parametrize("how", ["readable", "foreign-owner", "symlink", "garbage"])
def test_an_untrustworthy_key_file_is_refused(job: Job, tmp_path: Path, how: str) -> None:
    key = tmp_path / "my.key"
    key.write_text(os.urandom(32).hex() + "\n")
    key.chmod(0o600)
    says = {"readable": "others can read or write it (mode 644)", "garbage": "64 hex digits"}
    if how == "readable":
        key.chmod(0o644)
    elif how == "foreign-owner":
        if not IS_ROOT:
            pytest.skip("making a file another user's needs root")
        os.chown(key, NOBODY, NOBODY)
        says[how] = f"it belongs to uid {NOBODY}"
    elif how == "symlink":
        key.rename(tmp_path / "real.key")
        key.symlink_to(tmp_path / "real.key")
        says[how] = "it is a symbolic link"
    else:
        key.write_text("not a key\n")
    result = job.run("1", TM_N="3", TASKMASTER_KEY_FILE=str(key))
    assert_refused(result, f"refusing the key file {key}", says[how])
    assert job.counts() == {}


def test_tm_master_never_unpickles_a_planted_checkpoint(job: Job, tmp_path: Path) -> None:
    pytest.importorskip("zmq")
    marker = tmp_path / "pwned"
    job.state.write_bytes(planted_state(marker, version=1))
    job.state.chmod(0o666)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for extra in ([], ["--resume"]):
        result = subprocess.run(
            [*job.remote_args("master", "--address", f"tcp://127.0.0.1:{port}"), *extra],
            cwd=job.folder,
            env={**job.env, "TASKMASTER_SECRET": os.urandom(32).hex()},
            capture_output=True,
            text=True,
            timeout=30,
            stdin=subprocess.DEVNULL,
        )
        assert_refused(result, "refusing ", "others can write it (mode 666)")
        assert not marker.exists()
