"""tm-master, tm-slave and tm-spawn as real processes over loopback, on random ports.

Every process logs to a file of its own (a pipe nobody reads could fill and block it) and
carries the test's marker, so the ``marker`` fixture sees any process left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

zmq = pytest.importorskip("zmq")

from conftest import LEDGER_MODULE, Job, wait_until  # noqa: E402
from faultlib import FAULT_MODULE, assert_checkpoint_safe, assert_no_loss  # noqa: E402

from taskmaster.remote import frames as wire  # noqa: E402
from taskmaster.store import checkpoint  # noqa: E402

SECRET = "a-test-secret-0123456789abcdef-0123456789"
KEY = wire.frame_key(wire.Secret(SECRET.encode(), "test"), wire.TO_MASTER)  # slaves sign with
TO_SLAVE = wire.frame_key(wire.Secret(SECRET.encode(), "test"), wire.TO_SLAVE)

# The ledger module, plus a gate: jobs wait for the file TM_GATE before they run, so a test
# can let every slave join before any job finishes; and get_jobs can stall at TM_STALL_AT.
REMOTE_MODULE = (
    LEDGER_MODULE
    + """
GATE = os.environ.get("TM_GATE", "")
STALL_AT = int(os.environ.get("TM_STALL_AT", "-1"))


def get_jobs(last=0, **kwargs):
    for i in range(int(last), N):
        if i == STALL_AT:
            time.sleep(float(os.environ["TM_STALL"]))  # a slow query: the master stops
        yield i


def handle_job(job):
    while GATE and not os.path.exists(GATE):
        time.sleep(0.005)
    if SLEEP:
        time.sleep(SLEEP)
    record(job)
"""
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class Bomb:
    """Unpickling this creates a file: proof that a payload was (wrongly) decoded."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self) -> tuple[Any, ...]:
        return (open, (self.path, "w"))


class Remote:
    """The processes of one test, each logging to ``<name>.log``; what is left is killed."""

    def __init__(self, job: Job) -> None:
        self.job = job
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        # PYTHONFAULTHANDLER: a process that hangs is sent SIGABRT and dumps its stacks.
        self.env = {**job.env, wire.SECRET_ENV: SECRET, "PYTHONFAULTHANDLER": "1"}
        self.env["XDG_CONFIG_HOME"] = str(job.folder / "config")  # the per-user secret
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(
        self,
        command: str,
        *extra: str,
        name: str,
        preexec_fn: Callable[[], None] | None = None,
        **env: str,
    ) -> subprocess.Popen[bytes]:
        args = self.job.remote_args(command, *extra)
        if "--address" not in extra:
            args += ["--address", self.address]
        full_env = {**self.env, **env}
        if env.get(wire.SECRET_ENV) == "":
            del full_env[wire.SECRET_ENV]  # "" here means: no secret at all
        with open(self.job.folder / f"{name}.log", "wb") as log:
            proc = subprocess.Popen(
                args,
                cwd=self.job.folder,
                env=full_env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=preexec_fn,
            )
        self.procs[name] = proc
        return proc

    def log(self, name: str) -> str:
        return (self.job.folder / f"{name}.log").read_text(errors="replace")

    def wait_log(self, name: str, text: str, count: int = 1, timeout: float = 15) -> None:
        wait_until(
            lambda: self.log(name).count(text) >= count,
            timeout,
            f"{count} x {text!r} in {name}.log:\n{self.log(name)}",
        )

    def exit_code(self, name: str, timeout: float = 20) -> int:
        proc = self.procs[name]
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGABRT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            pytest.fail(f"{name} still running after {timeout} s:\n{self.log(name)}")

    def close(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                with_children = [proc.pid]
                with contextlib.suppress(psutil.NoSuchProcess):
                    with_children += [c.pid for c in psutil.Process(proc.pid).children(True)]
                for pid in with_children:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
                proc.wait()


@pytest.fixture
def remote(make_job: Callable[[str], Job]) -> Iterator[Remote]:
    r = Remote(make_job(REMOTE_MODULE))
    try:
        yield r
    finally:
        r.close()


def assert_exactly_once(job: Job, n: int) -> None:
    counts = job.counts()
    assert sorted(counts) == list(range(n)), f"missing: {sorted(set(range(n)) - set(counts))}"
    assert set(counts.values()) == {1}, [j for j, c in counts.items() if c > 1][:20]


def test_master_and_two_spawned_slaves_run_every_job_exactly_once(remote: Remote) -> None:
    n = 3000
    gate = remote.job.folder / "go"
    secret_file = remote.job.folder / "tm.secret"
    secret_file.write_text(SECRET + "\n")
    secret_file.chmod(0o600)
    remote.start("master", "--checkpoint-every", "0.2", name="master", TM_N=str(n))
    spawn = remote.start(
        "spawn",
        "2",
        "--threads",
        "2",
        "--secret-file",
        str(secret_file),
        name="spawn",
        TM_GATE=str(gate),
        TASKMASTER_SECRET="",
    )
    remote.wait_log("master", "joined", count=2)
    for slave in psutil.Process(spawn.pid).children():  # tm-spawn passed it by environment
        cmdline = slave.cmdline()
        assert SECRET not in " ".join(cmdline) and "--secret-file" not in cmdline
    gate.touch()
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("spawn") == 0, remote.log("spawn")
    assert_exactly_once(remote.job, n)
    state = remote.job.checkpoint()
    assert state["finished"] is True and state["done"] == n and state["watermark"] == n
    assert "the master finished the run" in remote.log("spawn")
    assert "dropped" not in remote.log("master") + remote.log("spawn")
    assert SECRET not in remote.log("master") + remote.log("spawn")
    assert SECRET not in remote.job.state.read_text()


def test_a_slave_started_before_the_master(remote: Remote) -> None:
    remote.start("slave", "--threads", "2", name="slave")
    remote.wait_log("slave", "connecting to")
    remote.start("master", name="master", TM_N="500")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    assert_exactly_once(remote.job, 500)


def test_a_checkpoint_of_tm_run_is_resumed_by_tm_master(remote: Remote) -> None:
    n = 300
    first = remote.job.run("1", "--limit", "100", TM_N=str(n))
    assert first.returncode == 0, first.stderr
    remote.start("master", "--resume", name="master", TM_N=str(n))
    remote.start("slave", name="slave")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    assert_exactly_once(remote.job, n)
    assert remote.job.checkpoint()["done"] == n


def test_a_master_stalled_in_get_jobs_keeps_its_slaves(remote: Remote) -> None:
    n = 400
    stall = {"TM_STALL_AT": "200", "TM_STALL": "2"}  # 4 heartbeat timeouts
    remote.start("master", "--heartbeat-timeout", "0.5", name="master", TM_N=str(n), **stall)
    remote.start("slave", name="slave")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    assert "back in touch" in remote.log("slave")
    assert "went silent" not in remote.log("master") and "dropped" not in remote.log("master")
    assert_exactly_once(remote.job, n)


@pytest.mark.parametrize(
    ("fault", "slave_args", "error"),
    [
        ("raise", (), "ValueError: job 7 is bad"),
        ("sigkill", (), "WorkerDied: worker"),
        ("hang", ("--job-timeout", "1"), "JobTimeout"),
    ],
)
def test_job_faults_on_a_slave_end_as_under_tm_run(
    make_job: Callable[[str], Job], fault: str, slave_args: tuple[str, ...], error: str
) -> None:
    remote = Remote(make_job(FAULT_MODULE))
    try:
        env = {"TM_N": "30", "TM_FAULT": fault, "TM_BAD": "7"}
        remote.start("master", "--retry-delay", "0", name="master", **env)
        remote.start("slave", *slave_args, name="slave", **env)
        assert remote.exit_code("master", timeout=40) == 1, remote.log("master")
        assert remote.exit_code("slave") == 0, remote.log("slave")
        [failure] = remote.job.failures()
        assert failure["seq"] == 7 and str(failure["error"]).startswith(error), failure
        assert failure["attempts"] == 3
        assert_no_loss(remote.job, 30)
    finally:
        remote.close()


def test_retry_failed_through_the_master(make_job: Callable[[str], Job]) -> None:
    remote = Remote(make_job(FAULT_MODULE))
    try:
        bad = {"TM_N": "30", "TM_FAULT": "raise", "TM_BAD": "7"}
        remote.start("master", "--retry-delay", "0", name="master", **bad)
        remote.start("slave", name="slave", **bad)
        assert remote.exit_code("master") == 1, remote.log("master")
        assert remote.exit_code("slave") == 0, remote.log("slave")
        assert [f["seq"] for f in remote.job.failures()] == [7]
        remote.start("master", "--retry-failed", name="retry", TM_N="30")
        remote.start("slave", name="fixed", TM_N="30")  # the bug is fixed: no TM_FAULT
        assert remote.exit_code("retry") == 0, remote.log("retry")
        assert remote.exit_code("fixed") == 0, remote.log("fixed")
        assert remote.job.failures() == []
        assert remote.job.counts()[7] == 4  # 3 failed attempts, then the retry
    finally:
        remote.close()


def test_kill_9_of_one_slave_loses_no_job(remote: Remote) -> None:
    n = 1500
    remote.start("master", "--heartbeat-timeout", "1", name="master", TM_N=str(n))
    spawn = remote.start("spawn", "2", name="spawn", TM_SLEEP="0.002")
    remote.wait_log("master", "joined", count=2)
    wait_until(lambda: sum(remote.job.counts().values()) > 100, 15, "jobs to run")
    slaves = psutil.Process(spawn.pid).children()
    assert len(slaves) == 2
    os.kill(slaves[0].pid, signal.SIGKILL)
    assert remote.exit_code("master", timeout=30) == 0, remote.log("master")
    assert remote.exit_code("spawn") == 1, remote.log("spawn")
    assert "went silent" in remote.log("master")
    assert "killed by SIGKILL" in remote.log("spawn")
    assert_no_loss(remote.job, n)
    assert remote.job.checkpoint()["finished"] is True


def test_kill_9_of_the_master_then_resume_with_the_slaves_still_running(remote: Remote) -> None:
    n = 2000
    opts = ("--heartbeat-timeout", "1", "--checkpoint-every", "0.1")
    master = remote.start("master", *opts, name="master", TM_N=str(n))
    remote.start("spawn", "2", "--timeout", "5", name="spawn", TM_SLEEP="0.002")
    remote.wait_log("master", "joined", count=2)

    def watermark() -> int:
        state = checkpoint.read(str(remote.job.state))
        return 0 if state is None else state.watermark

    wait_until(lambda: watermark() >= 200, 15, "a checkpoint past 200")
    os.kill(master.pid, signal.SIGKILL)
    master.wait()
    assert_checkpoint_safe(remote.job)
    remote.start("master", "--resume", *opts, name="master2", TM_N=str(n))
    assert remote.exit_code("master2", timeout=30) == 0, remote.log("master2")
    assert remote.exit_code("spawn") == 0, remote.log("spawn")
    assert remote.log("spawn").count("joined a new master") == 2
    assert_no_loss(remote.job, n)
    state = remote.job.checkpoint()
    assert state["finished"] is True and state["done"] == n


def test_ctrl_c_on_the_master_then_resume_with_the_same_slaves(remote: Remote) -> None:
    n = 1500
    master = remote.start("master", name="master", TM_N=str(n))
    remote.start("spawn", "2", name="spawn", TM_SLEEP="0.002")
    remote.wait_log("master", "joined", count=2)
    wait_until(lambda: sum(remote.job.counts().values()) > 100, 15, "jobs to run")
    os.kill(master.pid, signal.SIGINT)
    assert remote.exit_code("master") == 130, remote.log("master")
    remote.wait_log("spawn", "the master stopped before the run finished", count=2)
    assert_checkpoint_safe(remote.job)
    remote.start("master", "--resume", name="master2", TM_N=str(n))
    assert remote.exit_code("master2") == 0, remote.log("master2")
    assert remote.exit_code("spawn") == 0, remote.log("spawn")
    assert_exactly_once(remote.job, n)  # Ctrl-C let the jobs in flight finish: none repeats
    assert "dropped" not in remote.log("master") + remote.log("master2")
    assert remote.log("master").count(" left") == 2  # both said goodbye before it closed
    assert remote.job.checkpoint()["finished"] is True


def test_ctrl_c_on_a_slave_finishes_its_jobs_and_leaves(remote: Remote) -> None:
    n = 600
    remote.start("master", name="master", TM_N=str(n))
    leaver = remote.start("slave", name="leaver", TM_SLEEP="0.005")
    remote.start("slave", name="stayer", TM_SLEEP="0.005")
    remote.wait_log("master", "joined", count=2)
    wait_until(lambda: sum(remote.job.counts().values()) > 50, 15, "jobs to run")
    os.killpg(leaver.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the slave and its workers
    assert remote.exit_code("leaver") == 130, remote.log("leaver")
    assert "left the master after finishing its jobs" in remote.log("leaver")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("stayer") == 0, remote.log("stayer")
    assert "is leaving" in remote.log("master") and "went silent" not in remote.log("master")
    assert_exactly_once(remote.job, n)


def test_ctrl_c_on_tm_spawn_reaches_each_slave_once(remote: Remote) -> None:
    master = remote.start("master", name="master", TM_N="100000")
    spawn = remote.start("spawn", "2", name="spawn", TM_SLEEP="0.001")
    remote.wait_log("master", "joined", count=2)
    wait_until(lambda: sum(remote.job.counts().values()) > 50, 15, "jobs to run")
    os.killpg(spawn.pid, signal.SIGINT)  # tm-spawn's group only: it passes the signal on
    assert remote.exit_code("spawn") == 130, remote.log("spawn")
    assert remote.log("spawn").count("left the master after finishing its jobs") == 2
    os.kill(master.pid, signal.SIGINT)
    assert remote.exit_code("master") == 130, remote.log("master")
    assert_checkpoint_safe(remote.job)


# -- forged and foreign traffic ------------------------------------------------------------


def _forged(kind: str, payload: bytes, key: bytes | None = None) -> list[bytes]:
    """A well-formed frame whose signature is random, or made with another key."""
    header = {"v": 2, "dir": "s2m", "run": None, "from": "attacker", "seq": 1, "kind": kind}
    header["body"] = {}
    if key is not None:
        return wire.Sealer(key, "attacker", wire.TO_MASTER).seal(kind, None, {"task": 1}, payload)
    return [os.urandom(32), json.dumps(header).encode(), payload]


def test_forged_frames_to_the_master_are_dropped_undecoded(remote: Remote) -> None:
    # --no-curve: with CurveZMQ (the default) none of this would even reach the master.
    bomb = remote.job.folder / "unpickled"
    payload = pickle.dumps(Bomb(bomb))
    gate = remote.job.folder / "go"
    remote.start("master", "--no-curve", name="master", TM_N="300")
    remote.start("slave", "--no-curve", name="slave", TM_GATE=str(gate))
    remote.wait_log("master", "joined")
    other = wire.Secret(b"not-the-secret-0123456789-0123456789", "x")
    other_key = wire.frame_key(other, wire.TO_MASTER)
    ctx = zmq.Context()
    try:
        attacker = ctx.socket(zmq.DEALER)
        attacker.setsockopt(zmq.LINGER, 0)
        attacker.connect(remote.address)
        for kind in ("done", "hello", "task"):
            attacker.send_multipart(_forged(kind, payload))
            attacker.send_multipart(_forged(kind, payload, other_key))
            attacker.send_multipart(_forged(kind, b"", other_key))  # no payload: to the HMAC
        attacker.send_multipart([b"garbage"])
        attacker.send(b"x" * (wire.MASTER_MAX_FRAME + 1))  # over MAXMSGSIZE
        with socket.create_connection(("127.0.0.1", remote.port)) as raw:
            raw.sendall(b"GET / HTTP/1.0\r\n\r\n" + os.urandom(4096))
        remote.wait_log("master", "dropped a frame")  # one line: the limit is global
        attacker.close()
    finally:
        ctx.destroy(linger=0)
    gate.touch()
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    assert not bomb.exists()
    assert_exactly_once(remote.job, 300)


def _fake_master(ctx: Any, port: int) -> Any:
    sock = ctx.socket(zmq.ROUTER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(f"tcp://127.0.0.1:{port}")
    return sock


def _hello(sock: Any) -> tuple[bytes, dict[str, Any]]:
    """The routing id and the (readable, not secret) header of a slave's hello."""
    assert sock.poll(15_000), "no hello from the slave"
    routing, _sig, header, _payload = sock.recv_multipart()
    return routing, json.loads(header)


def test_forged_frames_to_a_slave_are_dropped_and_it_joins_the_real_master(
    remote: Remote,
) -> None:
    bomb = remote.job.folder / "unpickled"
    payload = pickle.dumps(Bomb(bomb))
    ctx = zmq.Context()
    try:
        impostor = _fake_master(ctx, remote.port)  # --no-curve: else no hello reaches it
        remote.start("slave", "--no-curve", "--timeout", "20", name="slave")
        routing, hello = _hello(impostor)
        nonce = hello["body"]["nonce"]
        welcome = {"v": 2, "dir": "m2s", "run": "r" * 16, "from": "r" * 16, "to": hello["from"]}
        welcome.update(seq=1, kind="welcome")
        welcome["body"] = {"nonce": nonce, "heartbeat": 1, "timeout": 5, "target": ""}
        impostor.send_multipart([routing, os.urandom(32), json.dumps(welcome).encode(), b""])
        task = {**welcome, "seq": 2, "kind": "task"}
        task["body"] = {"task": 1, "first": 0, "count": 1, "codec": "pickle"}
        impostor.send_multipart([routing, os.urandom(32), json.dumps(task).encode(), payload])
        remote.wait_log("slave", "bad signature")
        impostor.close()
    finally:
        ctx.term()
    remote.start("master", "--no-curve", name="master", TM_N="200")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    assert not bomb.exists()
    assert_exactly_once(remote.job, 200)


@pytest.mark.parametrize("slave_secret", ["another-secret-0123456789-0123456789", ""])
def test_a_slave_with_a_wrong_or_missing_secret_says_so(remote: Remote, slave_secret: str) -> None:
    # --no-curve, where the master can still tell a slave that its signature failed.
    master = remote.start("master", "--no-curve", name="master", TM_N="10")
    remote.wait_log("master", "listening")
    remote.start("slave", "--no-curve", name="slave", **{wire.SECRET_ENV: slave_secret})
    assert remote.exit_code("slave") == 2, remote.log("slave")
    assert "rejected this slave's signature" in remote.log("slave")
    assert ("per-user secret" if not slave_secret else wire.SECRET_ENV) in remote.log("slave")
    assert slave_secret not in remote.log("slave") or not slave_secret
    remote.wait_log("master", "bad signature")
    os.kill(master.pid, signal.SIGINT)
    assert remote.exit_code("master") == 130, remote.log("master")
    assert remote.job.counts() == {}


def test_a_master_without_a_secret_refuses_a_public_address(remote: Remote) -> None:
    proc = remote.start(
        "master", "--address", f"tcp://0.0.0.0:{remote.port}", name="master", TASKMASTER_SECRET=""
    )
    assert remote.exit_code("master") == 2
    assert "without a secret" in remote.log("master") and "secrets.token_hex" in remote.log(
        "master"
    )
    assert proc.returncode == 2


def test_curve_encrypted_run_and_a_slave_without_curve_left_out(remote: Remote) -> None:
    gate = remote.job.folder / "go"
    remote.start("master", name="master", TM_N="300")  # CurveZMQ is the default
    remote.wait_log("master", "encrypted (CurveZMQ)")
    remote.start("slave", "--no-curve", "--timeout", "0.5", "--retries", "0", name="plain")
    remote.start("slave", "--curve", name="curve", TM_GATE=str(gate))  # --curve: a no-op alias
    assert remote.exit_code("plain") == 2, remote.log("plain")  # its handshake fails
    assert "--no-curve" in remote.log("plain")
    gate.touch()
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("curve") == 0, remote.log("curve")
    assert remote.log("master").count("joined") == 1
    assert_exactly_once(remote.job, 300)


def test_without_a_secret_master_and_slaves_use_the_per_user_secret(remote: Remote) -> None:
    no_secret = {wire.SECRET_ENV: ""}
    remote.start("master", name="master", TM_N="200", **no_secret)
    remote.start("spawn", "2", name="spawn", **no_secret)
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("spawn") == 0, remote.log("spawn")
    assert "per-user secret" in remote.log("master") and "encrypted (CurveZMQ)" in remote.log(
        "master"
    )
    secret_file = remote.job.folder / "config" / "taskmaster" / "zmq.secret"
    assert secret_file.stat().st_mode & 0o777 == 0o600
    assert_exactly_once(remote.job, 200)


@pytest.mark.parametrize("weak", ["tooshort", "0123456789abcdef" * 2])
def test_a_short_secret_is_refused(remote: Remote, weak: str) -> None:
    remote.start("master", name="master", **{wire.SECRET_ENV: weak})
    assert remote.exit_code("master") == 2
    log = remote.log("master")
    assert "it needs 32" in log and "secrets.token_hex(32)" in log and weak not in log
    assert "Traceback" not in log


def test_a_slave_with_no_master_to_find_gives_up_clearly(remote: Remote) -> None:
    remote.start("slave", "--timeout", "0.3", "--retries", "1", name="slave")
    assert remote.exit_code("slave") == 2, remote.log("slave")
    assert "is tm-master running there" in remote.log("slave")
    assert "attempt 1 of 2" in remote.log("slave")


def test_a_slave_whose_master_vanished_gives_up_after_its_retries(remote: Remote) -> None:
    master = remote.start("master", "--heartbeat-timeout", "0.5", name="master", TM_N="100000")
    remote.start("slave", "--timeout", "0.5", "--retries", "1", name="slave", TM_SLEEP="0.001")
    remote.wait_log("master", "joined")
    os.kill(master.pid, signal.SIGKILL)
    master.wait()
    assert remote.exit_code("slave") == 1, remote.log("slave")
    assert "the master went silent" in remote.log("slave")
    assert "attempt 1 of 2" in remote.log("slave") and "giving up" in remote.log("slave")


def test_a_master_refuses_a_slave_of_another_protocol_version(remote: Remote) -> None:
    remote.start("master", "--no-curve", name="master", TM_N="10")
    remote.wait_log("master", "listening")
    ctx = zmq.Context()
    try:
        peer = ctx.socket(zmq.DEALER)
        peer.setsockopt(zmq.LINGER, 0)
        peer.connect(remote.address)
        future = wire.Sealer(KEY, "future-slave", wire.TO_MASTER, version=3)
        peer.send_multipart(future.seal("hello", None))
        assert peer.poll(15_000), "no answer from the master"
        refusal = wire.Opener(TO_SLAVE, wire.TO_SLAVE).open(peer.recv_multipart())
        peer.close()
    finally:
        ctx.term()
    assert refusal.kind == "refused" and refusal.to == "future-slave"
    assert "protocol 2" in refusal.body["reason"] and "speaks 3" in refusal.body["reason"]
    remote.wait_log("master", "refused a slave")
    os.kill(remote.procs["master"].pid, signal.SIGINT)
    assert remote.exit_code("master") == 130


def test_a_slave_refuses_a_master_of_another_protocol_version(remote: Remote) -> None:
    ctx = zmq.Context()
    try:
        master = _fake_master(ctx, remote.port)
        remote.start("slave", "--no-curve", name="slave")
        routing, hello = _hello(master)
        welcome = {"nonce": hello["body"]["nonce"], "heartbeat": 1, "timeout": 5, "target": ""}
        future = wire.Sealer(TO_SLAVE, "m" * 16, wire.TO_SLAVE, version=3)
        frame = future.seal("welcome", "m" * 16, welcome, to=hello["from"])
        master.send_multipart([routing, *frame])
        assert remote.exit_code("slave") == 2, remote.log("slave")
        master.close()
    finally:
        ctx.term()
    assert "speaks taskmaster protocol 3, this slave speaks 2" in remote.log("slave")


def test_without_pyzmq_the_commands_say_how_to_install_it(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['zmq'] = None\n"
        "from taskmaster.cli.remote import remote_main\n"
        "remote_main(['master', 'jobs.py'])\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert result.returncode == 2
    assert "pip install 'taskmaster-runner[zmq]'" in result.stderr
