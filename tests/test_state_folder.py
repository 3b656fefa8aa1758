"""The state folder against a local attacker and its own limits (issue 10, items 3, 7, 9, 10):
planted symlinks and files, crafted resolved ranges, huge anchors, too few descriptors."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from conftest import Job

from taskmaster.core.ledger import Ledger, ResolvedRange
from taskmaster.errors import CheckpointError
from taskmaster.store import checkpoint, codec, durable
from taskmaster.store.checkpoint import Anchor, State, StateLock, StoredJob

VICTIM = b"precious: nobody may change this\n"


def assert_refused(result: subprocess.CompletedProcess[str], *says: str) -> None:
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    for text in says:
        assert text in result.stderr, result.stderr


# -- item 7: planted links and files -----------------------------------------------------------


@pytest.mark.parametrize(
    "name", [".jobs.state.json.lock", "jobs.failures.jsonl", "jobs.state.json"]
)
def test_planted_symlink_leaves_its_victim_unchanged(job: Job, tmp_path: Path, name: str) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    (tmp_path / name).symlink_to(victim)
    result = job.run("1", TM_N="5")
    assert_refused(result, name, "it is a symbolic link", "never follows links")
    assert victim.read_bytes() == VICTIM
    assert job.counts() == {}


def test_planted_fifo_hangs_nothing(job: Job, tmp_path: Path) -> None:
    os.mkfifo(job.state)
    status = subprocess.run(
        [sys.executable, "-c", "from taskmaster.cli.run import status_command; status_command()"],
        cwd=job.folder,
        env=job.env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert_refused(status, "it is not a regular file")
    assert_refused(job.run("1", "--resume", TM_N="5"), "it is not a regular file")


def test_planted_dangling_symlink_creates_nothing(job: Job, tmp_path: Path) -> None:
    target = tmp_path / "created-by-us"
    (tmp_path / ".jobs.state.json.lock").symlink_to(target)
    assert_refused(job.run("1", TM_N="5"), "it is a symbolic link")
    assert not target.exists()


def test_stale_temp_names_do_not_affect_the_run(job: Job, tmp_path: Path) -> None:
    """Names the old writer would have used (pid-based) are taken by links and a foreign file."""
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    for guess in range(0, 33000, 7):  # a bounded sweep of the pid space a run might get
        (tmp_path / f".jobs.state.json.tmp.{guess}").symlink_to(victim)
    planted = tmp_path / ".jobs.state.json.tmp.planted"
    planted.write_bytes(VICTIM)
    if os.geteuid() == 0:
        os.chown(planted, 65534, 65534)
    result = job.run("2", "--checkpoint-every", "0.01", TM_N="300")
    assert result.returncode == 0, result.stderr
    assert sorted(job.counts()) == list(range(300))
    assert victim.read_bytes() == VICTIM
    assert planted.read_bytes() == VICTIM
    assert job.checkpoint()["finished"] is True


def test_foreign_or_linked_lock_file_is_refused(job: Job, tmp_path: Path) -> None:
    lock = tmp_path / ".jobs.state.json.lock"
    victim = tmp_path / "victim"
    victim.write_bytes(VICTIM)
    victim.chmod(0o600)
    os.link(victim, lock)  # a second name for a file of ours
    assert_refused(job.run("1", TM_N="5"), "it has 2 hard links")
    assert victim.read_bytes() == VICTIM
    lock.unlink()
    if os.geteuid() == 0:
        lock.write_bytes(VICTIM)
        os.chown(lock, 65534, 65534)
        assert_refused(job.run("1", TM_N="5"), "it belongs to uid 65534")
        assert lock.read_bytes() == VICTIM


def test_lock_never_truncates(tmp_path: Path) -> None:
    path = tmp_path / "jobs.state.json"
    lock_path = tmp_path / ".jobs.state.json.lock"
    lock_path.write_bytes(b"x" * 100)  # a stale lock of ours, left by a killed run
    lock_path.chmod(0o600)
    lock = StateLock(str(path))
    lock.acquire()
    try:
        data = lock_path.read_bytes()
        assert len(data) == 100 and data.startswith(f"{os.getpid()} ".encode())
        assert durable.read_pid(str(lock_path)) == str(os.getpid())
    finally:
        lock.release()


@pytest.mark.parametrize(("mode", "ok"), [(0o777, False), (0o775, False), (0o1777, True)])
def test_folder_others_can_write_is_refused_unless_sticky(
    job: Job, tmp_path: Path, mode: int, ok: bool
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir()
    folder.chmod(mode)
    result = job.run("1", "--state-file", str(folder / "s.json"), TM_N="5")
    if ok:
        assert result.returncode == 0, result.stderr
        assert sorted(job.counts()) == list(range(5))
    else:
        assert_refused(result, f"refusing {folder}", f"(mode {mode:o})", "chmod go-w")
        assert list(folder.iterdir()) == []


# -- item 10: resolved ranges no run could have written ----------------------------------------


def signed(watermark: int, ranges: list[list[Any]], window: int | None, version: int = 2) -> bytes:
    state = State(target="jobs:get_jobs", kwargs={}, watermark=watermark, window=1)
    doc = json.loads(checkpoint.encode(state))
    doc["resolved"] = ranges
    doc["version"] = version
    doc.pop("window")
    if window is not None:
        doc["window"] = window
    doc["checksum"] = checkpoint._checksum(doc)  # our own key: only the ranges are wrong
    return json.dumps(doc).encode()


CRAFTED = {
    "20M-wide": (signed(0, [[10, 20_000_010, None]], 1000), "window of 1,000"),
    "overlapping": (signed(0, [[10, 20, None], [15, 25, None]], 1000), "15-25"),
    "unsorted": (signed(0, [[30, 31, None], [10, 11, None]], 1000), "10-11"),
    "below-watermark": (signed(7, [[2, 3, None]], 1000), "2-3"),
    "empty-range": (signed(0, [[5, 5, None]], 1000), "5-5"),
    "too-many": (signed(0, [[i, i + 1, None] for i in range(0, 30, 2)], 10), "15 resolved"),
    "absurd-window": (signed(0, [], 10**12), "not a possible --size"),
    "old-format-200M": (signed(0, [[1, 200_000_001, None]], None, version=1), "100,000,000"),
}


@pytest.mark.parametrize("name", list(CRAFTED))
def test_crafted_ranges_are_refused(name: str) -> None:
    data, says = CRAFTED[name]
    with pytest.raises(CheckpointError, match="cannot have been written by a taskmaster run") as e:
        checkpoint.decode(data, "/x/s.json")
    assert says in str(e.value)


def test_a_20m_range_pulls_nothing_on_resume(job: Job) -> None:
    job.state.write_bytes(CRAFTED["20M-wide"][0])
    result = job.run("1", "--resume", "--size", "1000", TM_N="100")
    assert_refused(result, "cannot have been written by a taskmaster run", "window of 1,000")
    assert job.counts() == {}


def test_40000_ranges_load_and_resume(job: Job) -> None:
    """Every other job of 80,000 resolved: 40,000 ranges, all skipped (quadratic before)."""
    n = 80_010
    ranges = [
        ResolvedRange(s, s + 1, codec.digest(codec.dumps([s])[1])) for s in range(1, 80_000, 2)
    ]
    state = State(
        target="jobs:get_jobs",
        kwargs={},
        watermark=0,
        anchor=Anchor(0, 0, codec.job_digest(0)),
        resolved=tuple(ranges),
        window=100_000,
    )
    job.state.write_bytes(checkpoint.encode(state))
    back = checkpoint.read(str(job.state))
    assert back is not None and len(back.resolved) == 40_000
    ledger = Ledger.resume(0, back.resolved)
    assert ledger.next_resolved_start() == 1
    result = job.run("2", "--resume", "--size", "1000", TM_N=str(n))
    assert result.returncode == 0, result.stderr
    counts = job.counts()
    assert sorted(counts) == [s for s in range(n) if s % 2 == 0 or s > 80_000]
    assert set(counts.values()) == {1}


# -- item 9: huge anchors ----------------------------------------------------------------------


def test_a_huge_anchor_is_kept_as_digest_and_seq(monkeypatch: pytest.MonkeyPatch) -> None:
    job = ("row", b"x" * 5000)
    monkeypatch.setattr(checkpoint, "MAX_ANCHOR_BYTES", 1000)
    state = State(target="t", kwargs={}, watermark=3, anchor=Anchor(3, job, codec.job_digest(job)))
    data = checkpoint.encode(state)
    assert len(data) < 2000
    stored = json.loads(data)["anchor"]["job"]
    assert set(stored) == {"repr", "omitted"} and stored["omitted"] > 5000
    back = checkpoint.decode(data)
    assert back.anchor is not None and isinstance(back.anchor.job, StoredJob)
    assert back.anchor.digest == codec.job_digest(job)
    assert checkpoint.decode(checkpoint.encode(back)) == back  # a resumed run keeps it so


BIG_JOBS = """
import os

N = int(os.environ["TM_N"])
LEDGER = os.environ["TM_LEDGER"]


def get_jobs(last=None):
    start = 0 if last is None else last[0]
    for i in range(start, N):
        yield (i, b"%d" % i * (1_200_000 // len(b"%d" % i)))  # over 1 MiB each


def handle_job(job):
    with open(os.path.join(LEDGER, "%d" % os.getpid()), "a") as f:
        f.write("%d\\n" % job[0])
"""


def test_a_run_with_huge_jobs_resumes(make_job: Any) -> None:
    job = make_job(BIG_JOBS)
    first = job.run("1", "--limit", "3", "--size", "2", TM_N="7")
    assert first.returncode == 0, first.stderr
    assert job.state.stat().st_size < 100_000
    assert "omitted" in job.checkpoint()["anchor"]["job"]  # type: ignore[index]
    result = job.run("1", "--resume", "--size", "2", TM_N="7")
    assert result.returncode == 0, result.stderr
    assert "too big to keep in the checkpoint" in result.stderr
    assert sorted(job.counts()) == list(range(7))
    assert set(job.counts().values()) == {1}


def test_too_big_a_state_file_states_its_size(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "s.json"
    path.write_bytes(b"{" * 5000)
    monkeypatch.setattr(checkpoint, "MAX_STATE_BYTES", 1000)
    with pytest.raises(CheckpointError, match="is 5,000 bytes, too big") as e:
        checkpoint.read(str(path))
    assert "the most one may have is 1,000" in str(e.value)


# -- item 3: running out of file descriptors ---------------------------------------------------

LIMITS_JOB = """
import os, resource

LEDGER = os.environ["TM_LEDGER"]


def get_jobs(last=0):
    yield from range(last, 4)


def handle_job(job):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    with open(os.path.join(LEDGER, str(job)), "w") as f:
        f.write("%d %d" % (soft, hard))
"""


def test_the_run_raises_its_soft_open_file_limit(make_job: Any) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip("the hard limit leaves nothing to raise")
    job = make_job(LIMITS_JOB)
    result = subprocess.run(
        job.args("1"),
        cwd=job.folder,
        env=job.env,
        capture_output=True,
        text=True,
        timeout=45,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
    )
    assert result.returncode == 0, result.stderr
    soft_seen = {int((job.ledger / str(i)).read_text().split()[0]) for i in range(4)}
    assert len(soft_seen) == 1 and soft_seen.pop() > 256


EMFILE_SCRIPT = """
import os, resource, sys
from taskmaster.store import durable

resource.setrlimit(resource.RLIMIT_NOFILE, (64, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = []
while True:  # use up every descriptor, as 1,100 idle connections did
    try:
        held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        break
pauses = []
def pause(attempt):
    pauses.append(attempt)
    if sys.argv[2] == "frees" and attempt == 2:
        os.close(held.pop())  # a connection went away
durable._pause = pause
try:
    durable.write_durable(sys.argv[1], b"checkpoint")
    print("written after", len(pauses), "pauses")
except Exception as exc:
    print(type(exc).__name__, exc, "after", len(pauses), "pauses")
"""


@pytest.mark.parametrize("frees", [True, False], ids=["descriptor-freed", "never-freed"])
def test_emfile_in_the_checkpoint_write_is_waited_out(tmp_path: Path, frees: bool) -> None:
    path = tmp_path / "s.json"
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            textwrap.dedent(EMFILE_SCRIPT),
            str(path),
            "frees" if frees else "-",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    if frees:
        assert done.stdout.strip() == "written after 3 pauses"
        assert path.read_bytes() == b"checkpoint"
    else:
        out = done.stdout.strip()
        assert out.startswith("StateIOError writing the checkpoint"), out
        assert "(EMFILE)" in out and "raise ulimit -n" in out
        assert out.endswith(f"after {durable.OPEN_RETRIES} pauses"), out
        assert not path.exists()
    assert [p.name for p in tmp_path.iterdir() if ".tmp." in p.name] == []
