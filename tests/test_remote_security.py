"""Attacks on tm-master and tm-slave as real processes over loopback (issue 10, the ZeroMQ
half): each one bounded in count and time, each showing that the attack fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

zmq = pytest.importorskip("zmq")

from conftest import Job  # noqa: E402
from test_remote import (  # noqa: E402
    KEY,
    REMOTE_MODULE,
    SECRET,
    TO_SLAVE,
    Remote,
    assert_exactly_once,
)

from taskmaster.remote import frames as wire  # noqa: E402
from taskmaster.remote.curve import CurveKeys, derive_keys  # noqa: E402

KEYS = derive_keys(wire.Secret(SECRET.encode(), "test"))
MB = 1_000_000


@pytest.fixture
def remote(make_job: Callable[[str], Job]) -> Iterator[Remote]:
    r = Remote(make_job(REMOTE_MODULE))
    try:
        yield r
    finally:
        r.close()


@pytest.fixture
def ctx() -> Iterator[Any]:
    context = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def _dealer(ctx: Any, address: str, keys: CurveKeys | None = None, **curve: bytes) -> Any:
    """A DEALER socket; ``keys``: a CURVE client with the slaves' key, ``curve``: other keys."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if keys is not None:
        sock.curve_serverkey = keys.server_public
        sock.curve_publickey, sock.curve_secretkey = keys.client_public, keys.client_secret
    for name, value in curve.items():
        setattr(sock, name, value)
    sock.connect(address)
    return sock


def _rss(pid: int) -> int:
    return int(psutil.Process(pid).memory_info().rss)


def _sample_rss(proc: Any, peak: list[int]) -> None:
    while proc.poll() is None:
        with contextlib.suppress(psutil.Error):
            peak[0] = max(peak[0], _rss(proc.pid))
        time.sleep(0.005)  # a sampling period, not a wait for anything


def _fds_limit(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open files limit")


# -- item 2: a multipart bomb from a peer without the keys --------------------------------


def test_a_multipart_bomb_from_a_peer_without_the_keys_leaves_the_master_bounded(
    remote: Remote, ctx: Any
) -> None:
    gate = remote.job.folder / "go"
    master = remote.start("master", name="master", TM_N="2000")
    remote.wait_log("master", "listening")
    before = _rss(master.pid)
    peak = [before]
    sampler = threading.Thread(target=_sample_rss, args=(master, peak), daemon=True)
    sampler.start()  # all along: the memory of a bomb is held only while it arrives
    part = b"x" * (4 * MB)  # under the old 16 MiB MAXMSGSIZE, and under the new 4 MiB one
    stranger_public, stranger_secret = zmq.curve_keypair()
    bombers = [
        _dealer(ctx, remote.address),  # plaintext: the mechanisms differ
        _dealer(  # knows the master's public key, but not the slaves' secret key
            ctx,
            remote.address,
            curve_serverkey=KEYS.server_public,
            curve_publickey=stranger_public,
            curve_secretkey=stranger_secret,
        ),
    ]
    for bomber in bombers:
        with contextlib.suppress(zmq.Again):  # queued before the handshake: it never blocks
            bomber.send_multipart([part] * 50, zmq.NOBLOCK, copy=False)  # 200 MB, one message
    with socket.create_connection(("127.0.0.1", remote.port), timeout=2) as raw:
        sent = 0
        with contextlib.suppress(OSError):  # the master hangs up: a bad greeting
            while sent < 200 * MB:
                raw.sendall(part)
                sent += len(part)
    remote.start("slave", name="slave", TM_GATE=str(gate))
    remote.wait_log("master", "joined")
    gate.touch()
    sampler.join(30)
    for bomber in bombers:
        bomber.close()
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    assert peak[0] - before < 50 * MB, (before, peak[0])
    assert sent < 200 * MB  # the master closed the raw connection rather than read it all
    assert "dropped" not in remote.log("master")  # nothing of it reached the application
    assert_exactly_once(remote.job, 2000)


# -- item 3: idle TCP connections ---------------------------------------------------------


def _soft_limit_1024() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (1024, hard))


def test_1100_idle_connections_do_not_stop_a_run(remote: Remote) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 2048:
        pytest.skip(f"the hard limit on open files is {hard}: too low to raise past 1,100")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # for the test's own sockets
    n = 3000
    gate = remote.job.folder / "go"
    idle: list[socket.socket] = []
    try:
        master = remote.start(
            "master",
            "--checkpoint-every",
            "0.05",
            name="master",
            preexec_fn=_soft_limit_1024,  # the usual ulimit -n
            TM_N=str(n),
        )
        remote.wait_log("master", "listening")
        assert _fds_limit(master.pid)[0] == _fds_limit(master.pid)[1]  # raised at start
        for _ in range(1100):
            idle.append(socket.create_connection(("127.0.0.1", remote.port), timeout=5))
        remote.start("spawn", "2", name="spawn", TM_GATE=str(gate))
        remote.wait_log("master", "joined", count=2, timeout=30)  # new slaves still get in
        gate.touch()
        assert remote.exit_code("master") == 0, remote.log("master")
        assert remote.exit_code("spawn") == 0, remote.log("spawn")
    finally:
        for sock in idle:
            sock.close()
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert_exactly_once(remote.job, n)
    assert remote.job.checkpoint()["finished"] is True


# -- item 4: a connection claiming another slave's id --------------------------------------


def _join(sock: Any, sender: str, seq: int = 1) -> tuple[str, Any]:
    """Hello and first status of a hand-driven slave; returns the run id and its sealer."""
    sealer = wire.Sealer(KEY, sender, wire.TO_MASTER)
    sealer.seq = seq - 1
    sock.send_multipart(sealer.seal("hello", None, {"nonce": "n", "pid": 1, "host": "h"}))
    assert sock.poll(10_000), "no welcome"
    welcome = wire.Opener(TO_SLAVE, wire.TO_SLAVE).open(sock.recv_multipart())
    assert welcome.kind == "welcome" and welcome.to == sender
    assert welcome.run is not None
    status = {"ack": welcome.seq, "free": 1, "held": []}
    sock.send_multipart(sealer.seal("status", welcome.run, {"status": status}))
    return welcome.run, sealer


def test_a_peer_with_the_secret_cannot_report_another_slaves_batch(
    remote: Remote, ctx: Any
) -> None:
    n = 300
    remote.start("master", "--heartbeat-timeout", "1", name="master", TM_N=str(n))
    remote.wait_log("master", "listening")
    victim = _dealer(ctx, remote.address, KEYS)
    run, _ = _join(victim, "victim-slave")
    assert victim.poll(10_000), "no batch for the victim"
    task = wire.Opener(TO_SLAVE, wire.TO_SLAVE, wire.SLAVE_MAX_HEADER, wire.SLAVE_MAX_FRAME).open(
        victim.recv_multipart()
    )
    assert task.kind == "task" and task.to == "victim-slave"
    # The thief holds the secret (so the CURVE keys too) and knows the victim's sender id.
    thief = _dealer(ctx, remote.address, KEYS)
    sealer = wire.Sealer(KEY, "victim-slave", wire.TO_MASTER)
    sealer.seq = 1000
    thief.send_multipart(sealer.seal("hello", None, {"nonce": "t"}))
    result = {"task": task.body["task"], "elapsed": 0.1, "failures": []}
    result["status"] = {"ack": task.seq, "free": 1, "held": []}
    for _ in range(3):
        thief.send_multipart(sealer.seal("done", run, result))
    remote.wait_log("master", "joined on another connection")
    victim.close()  # goes silent: its batch runs again on a real slave
    remote.start("slave", name="slave")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    assert_exactly_once(remote.job, n)  # every job counted as done ran
    assert remote.job.checkpoint()["done"] == n
    thief.close()


# -- item 5: forged frames from many addresses ---------------------------------------------


def test_3000_forged_frames_from_300_addresses_log_a_bounded_number_of_lines(
    remote: Remote, ctx: Any
) -> None:
    remote.start("master", "--no-curve", name="master", TM_N="200")  # else nothing reaches it
    remote.wait_log("master", "listening")
    header = json.dumps({"v": 2, "dir": "s2m", "run": None, "from": "x", "seq": 1}).encode()
    for i in range(300):
        source = f"127.0.{1 + i // 250}.{1 + i % 250}"  # one address each
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 5000)
        sock.connect(f"tcp://{source}:0;127.0.0.1:{remote.port}")
        for j in range(10):
            payload = b"p" * 100_000 if j % 2 else b""  # a payload: dropped before the HMAC
            sock.send_multipart([os.urandom(32), header, payload])
        sock.close()  # LINGER: its frames still go out
    remote.start("slave", "--no-curve", name="slave")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert remote.exit_code("slave") == 0, remote.log("slave")
    lines = [line for line in remote.log("master").splitlines() if "dropped" in line]
    assert 1 <= len(lines) <= 5, lines[:10]
    assert_exactly_once(remote.job, 200)


# -- item 6: a master of another user ------------------------------------------------------

MARKER_MODULE = """
import os

def get_jobs(last=0, **kwargs):
    yield from range(int(last), 5)

def handle_job(job):
    open(os.environ["TM_MARKER"], "w").close()
"""


@pytest.mark.parametrize("curve", ["--curve", "--no-curve"])
def test_a_master_of_another_user_is_refused_by_the_slave(
    make_job: Callable[[str], Job], curve: str
) -> None:
    remote = Remote(make_job(MARKER_MODULE))
    marker_file = remote.job.folder / "ran"
    try:
        # No secret anywhere: each side takes the per-user secret of its own config folder,
        # as two users of one host would.
        others = str(remote.job.folder / "other-user")
        foreign = remote.start(
            "master", curve, name="master", TASKMASTER_SECRET="", XDG_CONFIG_HOME=others
        )
        remote.wait_log("master", "listening")
        remote.start(
            "slave",
            curve,
            "--timeout",
            "1",
            "--retries",
            "1",
            name="slave",
            TASKMASTER_SECRET="",
            TM_MARKER=str(marker_file),
        )
        assert remote.exit_code("slave") == 2, remote.log("slave")
        assert "joined" not in remote.log("master")
        os.kill(foreign.pid, signal.SIGINT)
        assert remote.exit_code("master") == 130, remote.log("master")
    finally:
        remote.close()
    assert not marker_file.exists()  # the slave never ran the foreign master's job


# -- item 8: a frame reflected to its sender -----------------------------------------------


def test_the_masters_own_frames_reflected_back_are_refused(remote: Remote, ctx: Any) -> None:
    remote.start("master", "--no-curve", "--heartbeat-timeout", "1", name="master", TM_N="50")
    remote.wait_log("master", "listening")
    peer = _dealer(ctx, remote.address)
    _join(peer, "peer-slave")
    remote.wait_log("master", "joined")
    reflected = 0
    while reflected < 5:
        assert peer.poll(10_000), "nothing from the master"
        frame = peer.recv_multipart()
        peer.send_multipart(frame)  # back to the master, byte for byte
        reflected += 1
    remote.wait_log("master", "dropped a frame")
    assert remote.log("master").count("joined") == 1  # no phantom slave
    peer.close()
    remote.start("slave", "--no-curve", name="slave")
    assert remote.exit_code("master") == 0, remote.log("master")
    assert_exactly_once(remote.job, 50)


# -- item 11: the secret is out of the jobs' reach -----------------------------------------

ENV_MODULE = """
import os

SEEN = os.environ["TM_SEEN"]
AT_IMPORT = "TASKMASTER_SECRET" in os.environ


def get_jobs(last=0, **kwargs):
    yield from range(int(last), 20)


def handle_job(job):
    with open("/proc/self/environ", "rb") as f:
        raw = f.read()
    with open(os.environ["TM_SECRET_FILE"], "rb") as f:
        secret = f.read().strip()
    seen = [AT_IMPORT, "TASKMASTER_SECRET" in os.environ, secret in raw]
    with open(os.path.join(SEEN, "%d" % os.getpid()), "w") as f:
        f.write(repr(seen))
"""


def test_a_job_never_sees_the_secret_in_its_environment(make_job: Callable[[str], Job]) -> None:
    remote = Remote(make_job(ENV_MODULE))
    seen = remote.job.folder / "seen"
    seen.mkdir()
    secret_file = remote.job.folder / "secret.txt"  # for the jobs to look for, not to use
    secret_file.write_text(SECRET)
    env = {"TM_SEEN": str(seen), "TM_SECRET_FILE": str(secret_file)}
    try:
        remote.start("master", name="master", **env)
        remote.start("spawn", "2", name="spawn", **env)
        assert remote.exit_code("master") == 0, remote.log("master")
        assert remote.exit_code("spawn") == 0, remote.log("spawn")
    finally:
        remote.close()
    reports = [path.read_text() for path in seen.iterdir()]
    assert reports and set(reports) == {"[False, False, False]"}, reports


# -- item 13: a slave that connected a moment too late -------------------------------------


def test_tm_spawn_ends_when_a_sibling_was_told_the_run_is_finished(remote: Remote) -> None:
    spawn = remote.start("spawn", "2", name="spawn")  # both slaves look for a master
    remote.wait_log("spawn", "connecting to", count=2)
    late = psutil.Process(spawn.pid).children()[1]
    late.send_signal(signal.SIGSTOP)  # it misses the whole run
    try:
        remote.start("master", name="master", TM_N="100")
        assert remote.exit_code("master") == 0, remote.log("master")
        remote.wait_log("spawn", "the master finished the run")
    finally:
        late.send_signal(signal.SIGCONT)
    # The latecomer's master is gone; --timeout 15 x 9 attempts would keep it for minutes.
    assert remote.exit_code("spawn", timeout=10) == 0, remote.log("spawn")
    assert "a sibling slave was told the run is finished" in remote.log("spawn")
    assert_exactly_once(remote.job, 100)
