"""The master's transport in-process, against hand-driven slaves holding the secret.

What a forged or replayed frame cannot do: move a batch to "done" unless the slave it was
assigned to says so, once, while the assignment is open.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

zmq = pytest.importorskip("zmq")


from taskmaster.core.events import (  # noqa: E402
    BatchDone,
    BatchUnreadable,
    Event,
    TaskSent,
    WorkerLost,
)
from taskmaster.remote import frames as wire  # noqa: E402
from taskmaster.remote import master as master_module  # noqa: E402
from taskmaster.remote.curve import derive_keys  # noqa: E402
from taskmaster.remote.master import MasterConfig, ZmqMasterTransport  # noqa: E402

SECRET = wire.Secret(b"an-in-process-secret-0123456789-0123456789", "test")
KEY = wire.frame_key(SECRET, wire.TO_MASTER)  # what the slaves sign with
TO_SLAVE = wire.frame_key(SECRET, wire.TO_SLAVE)


class Master:
    def __init__(self, address: str, heartbeat_timeout: float) -> None:
        self.lines: list[str] = []
        config = MasterConfig(address, SECRET, heartbeat_timeout)
        self.transport = ZmqMasterTransport(config, log=self.lines.append)
        self.transport.start()
        self.events: list[Event] = []

    def pump(self, until: Callable[[], object] = lambda: False, timeout: float = 5) -> None:
        """Let the master handle what arrives, until ``until()`` or ``timeout``."""
        deadline = time.monotonic() + timeout
        while not until() and time.monotonic() < deadline:
            self.events.extend(self.transport.wait(0.01, []))

    def task(self, task_id: int, payload: bytes = b"jobs") -> None:
        self.transport.send(TaskSent(task_id, task_id * 10, 1, "pickle", payload))


class Slave:
    """A slave by hand: a DEALER that signs what the test tells it to send."""

    def __init__(self, ctx: Any, master: Master, name: str, address: str) -> None:
        self.master = master
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(address)
        self.name = name
        self.sealer = wire.Sealer(KEY, name, wire.TO_MASTER)
        self.opener = wire.Opener(TO_SLAVE, wire.TO_SLAVE, wire.SLAVE_MAX_HEADER, 1 << 20)
        self.run: str | None = None
        self.ack = 0

    def send(self, kind: str, body: dict[str, Any] | None = None) -> list[bytes]:
        frame = self.sealer.seal(kind, self.run, body)
        self.sock.send_multipart(frame)
        return frame

    def status(self, free: int, held: list[int], **body: Any) -> dict[str, Any]:
        return {**body, "status": {"ack": self.ack, "free": free, "held": held}}

    def receive(self, timeout: float = 5) -> wire.Message:
        self.master.pump(lambda: self.sock.poll(0), timeout)
        assert self.sock.poll(0), "nothing came from the master"
        msg = self.opener.open(self.sock.recv_multipart())
        assert msg.to == self.name  # every frame of the master names its slave
        self.ack = max(self.ack, msg.seq)
        return msg

    def join(self, free: int = 1, max_frame: int = wire.SLAVE_MAX_FRAME) -> None:
        before = self.master.transport.free_slots()
        self.send("hello", {"nonce": "n1", "pid": 1, "host": "h", "max_frame": max_frame})
        welcome = self.receive()
        assert welcome.kind == "welcome" and welcome.body["nonce"] == "n1"
        self.run = welcome.run
        self.send("status", self.status(free, []))
        self.master.pump(lambda: self.master.transport.free_slots() == before + free)


@pytest.fixture
def address() -> str:
    with __import__("socket").socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"tcp://127.0.0.1:{s.getsockname()[1]}"


@pytest.fixture
def setup(
    address: str, request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[Master, Callable[[str], Slave]]]:
    monkeypatch.setattr(master_module, "FAREWELL_SECONDS", 0.1)  # hand-driven slaves never bye
    ctx = zmq.Context()
    master = Master(address, heartbeat_timeout=getattr(request, "param", 5.0))
    slaves: list[Slave] = []

    def make(name: str) -> Slave:
        slaves.append(Slave(ctx, master, name, address))
        return slaves[-1]

    try:
        yield master, make
    finally:
        master.transport.close()
        master.transport.farewell(finished=False)
        for slave in slaves:
            slave.sock.close()
        ctx.term()


def done(task_id: int) -> dict[str, Any]:
    return {"task": task_id, "elapsed": 0.01, "failures": []}


def test_a_result_counts_only_from_the_assigned_slave_and_only_once(setup: Any) -> None:
    master, make = setup
    owner, other = make("owner"), make("other")
    owner.join(free=1)
    master.task(1)
    assert owner.receive().kind == "task"
    other.join(free=1)
    other.send("done", other.status(1, [], **done(1)))  # not its batch
    owner.send("done", owner.status(1, [1], **done(99)))  # never assigned
    master.pump(timeout=0.3)
    assert master.events == []
    real = owner.send("done", owner.status(1, [], **done(1)))
    master.pump(lambda: master.events)
    assert master.events == [BatchDone(1, 0.01, ())]
    owner.sock.send_multipart(real)  # a replay of the very frame
    owner.send("done", owner.status(1, [], **done(1)))  # a fresh frame, but closed assignment
    master.pump(timeout=0.3)
    assert master.events == [BatchDone(1, 0.01, ())]
    assert any("replayed" in line for line in master.lines)
    assert any("not assigned to its sender" in line for line in master.lines)


def test_only_a_frame_signed_with_another_secret_is_told_bad_signature(setup: Any) -> None:
    master, make = setup
    garbled, stranger = make("garbled"), make("stranger")
    # A signature one byte long fails the size check, whose reason names the signature too
    # ("bad signature or header size"): dropped, and not answered.
    sig, header, payload = garbled.sealer.seal("hello", None, {"nonce": "n1"})
    garbled.sock.send_multipart([sig + b"x", header, payload])
    master.pump(lambda: any("bad signature or header size" in line for line in master.lines))
    assert any("bad signature or header size" in line for line in master.lines)
    master.pump(timeout=0.3)
    assert not garbled.sock.poll(0), "a malformed frame was answered as a bad signature"
    # Well formed, signed with another secret: told, so that a slave can say so and exit.
    other = wire.frame_key(wire.Secret(b"another secret of enough bytes, 32+", "x"), wire.TO_MASTER)
    stranger.sealer = wire.Sealer(other, "stranger", wire.TO_MASTER)
    stranger.send("hello", {"nonce": "n2", "pid": 1, "host": "h", "max_frame": 1 << 20})
    master.pump(lambda: stranger.sock.poll(0))
    assert stranger.sock.recv_multipart() == [wire.NOTICE, wire.BAD_SIGNATURE]
    assert master.events == []


def test_credits_count_batches_the_slave_has_not_seen_yet(setup: Any) -> None:
    master, make = setup
    slave = make("s")
    slave.join(free=2)
    master.task(1)
    master.task(2)
    assert master.transport.free_slots() == 0
    slave.receive()
    slave.receive()
    slave.send("status", slave.status(0, [1, 2]))
    master.pump(timeout=0.2)
    assert master.transport.free_slots() == 0 and master.events == []
    slave.send("done", slave.status(1, [2], **done(1)))
    master.pump(lambda: master.transport.free_slots() == 1)
    assert master.events == [BatchDone(1, 0.01, ())]


def test_a_batch_the_slave_never_got_runs_again_uncharged(setup: Any) -> None:
    master, make = setup
    slave = make("s")
    slave.join(free=2)
    master.task(1)
    master.task(2)
    slave.receive()
    slave.receive()
    # Acknowledges both frames but holds only batch 2: batch 1 was lost on the way.
    slave.send("status", slave.status(1, [2]))
    master.pump(lambda: master.events)
    [lost] = master.events
    assert isinstance(lost, WorkerLost) and lost.task_ids == (1,) and lost.queued == (1,)


@pytest.mark.parametrize("setup", [0.5], indirect=True)
def test_a_silent_slave_is_lost_and_its_late_result_is_passed_on_once(setup: Any) -> None:
    master, make = setup
    slave = make("s")
    slave.join(free=1)
    master.task(1)
    slave.receive()
    master.pump(lambda: master.events, timeout=5)  # no heartbeat from the slave: lost
    [lost] = master.events
    assert isinstance(lost, WorkerLost) and lost.task_ids == (1,) and "went silent" in lost.reason
    slave.send("done", slave.status(1, [], **done(1)))
    master.pump(lambda: len(master.events) == 2)
    assert master.events[1] == BatchDone(1, 0.01, ())  # the coordinator counts it at most once
    slave.send("done", slave.status(1, [], **done(1)))
    master.pump(timeout=0.2)
    assert len(master.events) == 2


def test_a_frame_of_an_earlier_master_run_is_told_to_rejoin(setup: Any) -> None:
    master, make = setup
    slave = make("s")
    slave.run = "an-earlier-run"
    slave.send("status", slave.status(1, []))
    assert slave.receive().kind == "rejoin"
    assert master.transport.free_slots() == 0


def test_a_batch_too_big_for_the_slave_comes_back_unreadable(setup: Any) -> None:
    master, make = setup
    slave = make("s")
    slave.join(free=1, max_frame=100)
    master.task(1, payload=b"x" * 1000)
    master.pump(lambda: master.events)
    [event] = master.events
    assert isinstance(event, BatchUnreadable) and "MessageTooLarge" in event.error


def test_a_result_counts_only_from_the_connection_its_batch_went_to(setup: Any) -> None:
    master, make = setup
    owner = make("owner")
    owner.join(free=2)
    master.task(1)
    master.task(2)
    owner.receive()
    owner.receive()
    # Someone with the secret, on a connection of its own, claims the owner's sender id.
    thief = make("owner")
    thief.run, thief.ack = owner.run, owner.ack
    thief.sealer.seq = 1000  # seqs ahead of the owner's: per connection, they spend nothing
    thief.send("hello", {"nonce": "t"})
    thief.send("status", thief.status(5, []))
    thief.send("done", thief.status(5, [], **done(1)))
    master.pump(timeout=0.3)
    assert master.events == [] and master.transport.free_slots() == 0
    assert any("joined on another connection" in line for line in master.lines)
    owner.send("done", owner.status(1, [2], **done(1)))  # the owner's own result counts
    master.pump(lambda: master.events)
    assert master.events == [BatchDone(1, 0.01, ())]
    # Nothing of the master's goes to the thief but the answer to its own hello.
    received = []
    while thief.sock.poll(0):
        received.append(thief.opener.open(thief.sock.recv_multipart()).kind)
    assert "task" not in received


@pytest.mark.parametrize("setup", [0.5], indirect=True)
def test_a_late_result_of_a_lost_slave_counts_only_from_its_connection(setup: Any) -> None:
    master, make = setup
    slave = make("s")
    slave.join(free=1)
    master.task(1)
    slave.receive()
    master.pump(lambda: master.events, timeout=5)  # silent: lost
    thief = make("s")
    thief.run, thief.ack = slave.run, slave.ack
    thief.sealer.seq = 1000
    thief.send("done", thief.status(1, [], **done(1)))
    master.pump(timeout=0.3)
    assert len(master.events) == 1  # only the WorkerLost


def test_a_finished_master_stops_its_slaves_and_latecomers(address: str) -> None:
    ctx = zmq.Context()
    master = Master(address, heartbeat_timeout=5)
    joined, late = Slave(ctx, master, "joined", address), Slave(ctx, master, "late", address)
    farewell = threading.Thread(target=master.transport.farewell, args=(True,))
    try:
        joined.join()
        master.transport.close()
        late.send("hello", {"nonce": "n"})  # read by the master during its farewell
        farewell.start()  # the master's socket is used by that thread alone from now on
        for slave, extra in ((joined, {}), (late, {"nonce": "n"})):
            assert slave.sock.poll(2000)
            msg = slave.opener.open(slave.sock.recv_multipart())
            assert msg.kind == "stop" and msg.body == {"finished": True, "kill": False, **extra}
            slave.send("bye")
        farewell.join(10)
        assert not farewell.is_alive() and master.transport._sock is None
    finally:
        joined.sock.close()
        late.sock.close()
        ctx.term()


def test_curve_admits_only_connections_with_the_slaves_key(address: str) -> None:
    keys = derive_keys(SECRET)
    assert keys == derive_keys(SECRET) and keys != derive_keys(wire.Secret(b"x" * 32, "x"))
    assert keys.server_secret not in repr(keys).encode()
    ctx = zmq.Context()
    lines: list[str] = []
    transport = ZmqMasterTransport(MasterConfig(address, SECRET, 5.0, curve=keys), lines.append)
    transport.start()
    stranger_public, stranger_secret = zmq.curve_keypair()
    tries = {
        "slave": (keys.client_public, keys.client_secret),
        "stranger": (stranger_public, stranger_secret),  # knows the master's public key
        "plain": None,
    }
    socks = {}
    try:
        for name, pair in tries.items():
            sock = socks[name] = ctx.socket(zmq.DEALER)
            sock.setsockopt(zmq.LINGER, 0)
            if pair is not None:
                sock.curve_serverkey = keys.server_public
                sock.curve_publickey, sock.curve_secretkey = pair
            sock.connect(address)
            hello = wire.Sealer(KEY, name, wire.TO_MASTER).seal("hello", None, {"nonce": "n"})
            sock.send_multipart(hello)
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and not socks["slave"].poll(0):
            transport.wait(0.01, [])
        transport.wait(0.2, [])
        answered = {name for name, sock in socks.items() if sock.poll(0)}
        assert answered == {"slave"}
    finally:
        transport.close()
        transport.farewell(finished=False)
        for sock in socks.values():
            sock.close()
        ctx.term()


def test_a_master_without_slaves_says_how_to_start_one(
    address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(master_module, "LONELY_HINT_EVERY", 0.05)
    master = Master(address, heartbeat_timeout=0.1)
    try:
        master.pump(lambda: any("no slave connected yet" in line for line in master.lines), 5)
    finally:
        master.transport.close()
        master.transport.farewell(finished=False)
    hint = [line for line in master.lines if "no slave connected yet" in line][0]
    assert f"--address {address}" in hint and "tm-slave" in hint
