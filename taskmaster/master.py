"""The ZeroMQ transport of tm-master: batches go to remote tm-slaves over one ROUTER socket.

::

    Coordinator --TaskSent--> ZmqMasterTransport ==ROUTER/DEALER==> tm-slave x N
                <--events---   (credits, assignments,   <== done / lost / status
                                heartbeats)

It is a :class:`~taskmaster.messages.Transport` like the local one, so the coordinator
applies the same rules to remote batches: retries, failures, the watermark, the window.

- **Credits.** Each slave reports its free batch slots with the last frame seq it has seen.
  A slave's credit is that count minus the batches sent after that seq, so the master never
  sends more than the slaves can start, and the window bounds everything in flight.
- **Assignments.** A result counts only from the slave its batch was sent to, while that
  assignment is open. A batch the slave says it never got (its status acknowledges the
  frame but does not list the batch: the connection dropped) runs again.
- **Liveness.** Heartbeats both ways. A slave silent for ``heartbeat_timeout`` seconds is
  lost: a WorkerLost with its batches, as for a dead local worker. Its late results are
  passed on once (the coordinator has already sent those jobs again, so it counts nothing).
- **Security.** Every frame is signed and checked by :mod:`taskmaster.wire` before anything
  in it is parsed; the master itself never unpickles: results are JSON.
"""

from __future__ import annotations

import collections
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from . import wire
from .errors import UsageError
from .messages import (
    BatchDone,
    BatchUnreadable,
    Event,
    JobTimedOut,
    TaskSent,
    WorkerLost,
)
from .remote import Body, MalformedBody, readable, status_of

HEARTBEATS_PER_TIMEOUT = 5
FAREWELL_SECONDS = 3.0  # how long a finished master waits for its slaves to say goodbye
MAX_DRAIN = 10_000  # frames handled per wait(), so the coordinator keeps its turn
REMEMBERED = 100_000  # batches of lost slaves remembered, for their late results


@dataclass(frozen=True, slots=True)
class MasterConfig:
    address: str
    secret: wire.Secret | None
    heartbeat_timeout: float = 5.0
    target: str = ""


@dataclass(slots=True, eq=False)
class _Slave:
    sender: str
    routing: bytes
    number: int
    pid: int
    host: str
    max_frame: int
    last_seen: float
    free: int = 0
    ack: int = 0
    assigned: dict[int, int] = field(default_factory=dict)  # task_id -> seq of its frame
    leaving: bool = False

    def slots(self) -> int:
        if self.leaving:
            return 0
        unseen = sum(1 for seq in self.assigned.values() if seq > self.ack)
        return max(0, self.free - unseen)

    @property
    def name(self) -> str:
        return f"slave {self.number} on {self.host} (pid {self.pid})"


class ZmqMasterTransport:
    """Hands batches to tm-slaves; see the module docstring."""

    def __init__(
        self,
        config: MasterConfig,
        log: Callable[[str], None] = lambda text: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = config
        self.log = log
        self.clock = clock
        self.run_id = secrets.token_hex(8)  # new for every master start: old frames are stale
        key = wire.frame_key(config.secret)
        self._sealer = wire.Sealer(key, self.run_id)
        self._opener = wire.Opener(key, wire.MASTER_MAX_FRAME)
        self._replay = wire.ReplayGuard()
        self._limited = wire.RateLimitedLog(log)
        self._slaves: dict[str, _Slave] = {}
        self._hellos: collections.OrderedDict[str, Body] = collections.OrderedDict()
        self._lost: collections.OrderedDict[tuple[str, int], None] = collections.OrderedDict()
        self._notified: dict[bytes, float] = {}
        self._pending: list[Event] = []
        self._numbers = 0
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._poller: tuple[tuple[int, ...], zmq.Poller] | None = None
        self._last_beat = 0.0
        self._closing = False
        self._kill = False
        self._finished = False
        self._farewell_started = False  # from then on, a slave that says hello is told to stop
        self.slaves_lost = 0

    @property
    def beat_every(self) -> float:
        return self.cfg.heartbeat_timeout / HEARTBEATS_PER_TIMEOUT

    # -- Transport ------------------------------------------------------------------------

    def describe(self) -> str:
        return f"ZeroMQ master on {self.cfg.address}, {len(self._slaves)} slaves"

    def start(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 1000)
        sock.setsockopt(zmq.MAXMSGSIZE, wire.MASTER_MAX_FRAME)  # before any allocation
        sock.setsockopt(zmq.RCVHWM, 1000)
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)  # an unreachable slave is an error, not a drop
        sock.setsockopt(zmq.ROUTER_HANDOVER, 1)  # a reconnecting slave takes its id back
        sock.setsockopt(zmq.HEARTBEAT_IVL, 1000)  # drop dead TCP connections by themselves
        sock.setsockopt(zmq.HEARTBEAT_TIMEOUT, 5000)
        try:
            sock.bind(self.cfg.address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            ctx.term()
            raise UsageError(
                f"cannot listen on {self.cfg.address}: {exc.strerror} (another tm-master "
                "there? pick another port with --address)"
            ) from None
        self._ctx, self._sock = ctx, sock
        self._last_beat = self.clock()
        self.log(f"listening on {self.cfg.address} for slaves (run {self.run_id})")

    def free_slots(self) -> int:
        if self._closing:
            return 0
        return sum(s.slots() for s in self._slaves.values())

    def send(self, task: TaskSent) -> None:
        slave = max(self._slaves.values(), key=_Slave.slots)
        if len(task.payload) > slave.max_frame:  # the slave's socket would drop it unread
            self._pending.append(
                BatchUnreadable(
                    task.task_id,
                    f"MessageTooLarge: the batch is {len(task.payload):,} bytes, more than "
                    f"the {slave.max_frame:,} a slave accepts in one message",
                    "",
                )
            )
            return
        body = {"task": task.task_id, "first": task.first_seq, "count": task.count}
        frame = self._sealer.seal("task", self.run_id, {**body, "codec": task.codec}, task.payload)
        slave.assigned[task.task_id] = self._sealer.seq
        if not self._send_to(slave.routing, frame):
            self._lose(slave, "could not be reached (its connection is gone)", self._pending)

    def wait(self, timeout: float | None, wake_fds: list[int]) -> list[Event]:
        assert self._sock is not None, "start() first"
        now = self.clock()
        limit = max(0.0, self._last_beat + self.beat_every - now)
        timeout = limit if timeout is None else min(timeout, limit)
        if self._pending or readable(self._sock):
            timeout = 0.0
        self._poller_for(wake_fds).poll(int(timeout * 1000))
        events, self._pending = self._pending, []
        self._drain(events)
        self._tick(events)
        return events

    def close(self, kill: bool = False) -> None:
        """No more batches go out. The socket stays open for :meth:`farewell`."""
        self._closing = True
        self._kill = self._kill or kill

    # -- after the run --------------------------------------------------------------------

    def farewell(self, finished: bool) -> None:
        """Tell the slaves how the run ended, then close the socket.

        Finished: they exit (and the master waits a little for their goodbyes). Otherwise
        they wait for a master to come back (``--resume``); with ``kill``, they first stop
        the jobs this run gave them.
        """
        self._closing = True
        if self._sock is None or self._ctx is None:
            return
        self._finished = finished
        self._farewell_started = True
        for slave in list(self._slaves.values()):
            self._send_stop(slave.routing)
        deadline = self.clock() + (FAREWELL_SECONDS if finished else 0.0)
        while self._slaves and self.clock() < deadline:
            if self._sock.poll(100):
                self._drain([])
        self._sock.close(linger=1000)
        self._ctx.term()
        self._sock = self._ctx = None

    def _send_stop(self, routing: bytes) -> None:
        body = {"finished": self._finished, "kill": self._kill}
        self._send_to(routing, self._sealer.seal("stop", self.run_id, body))

    # -- receiving ------------------------------------------------------------------------

    def _poller_for(self, wake_fds: list[int]) -> zmq.Poller:
        key = tuple(wake_fds)
        if self._poller is None or self._poller[0] != key:
            poller = zmq.Poller()
            poller.register(self._sock, zmq.POLLIN)
            for fd in wake_fds:
                poller.register(fd, zmq.POLLIN)
            self._poller = (key, poller)
        return self._poller[1]

    def _drain(self, events: list[Event]) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(MAX_DRAIN):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                peer = str(parts[0].get("Peer-Address"))
            except zmq.ZMQError:
                peer = "an unknown address"
            self._receive(parts[0].bytes, [p.bytes for p in parts[1:]], peer, events)

    def _receive(self, routing: bytes, parts: list[bytes], peer: str, events: list[Event]) -> None:
        try:
            msg = self._opener.open(parts)
        except wire.Dropped as exc:
            self._limited(f"drop {peer}", f"dropped a frame from {peer}: {exc}")
            if "signature" in str(exc):
                self._notify_bad_signature(routing)
            return
        except wire.VersionMismatch as exc:
            self._refuse(routing, peer, exc)
            return
        if msg.sender.encode() != routing:
            self._limited(
                f"spoof {peer}",
                f"dropped a frame from {peer}: its sender id is not "
                "the one its connection announced",
            )
            return
        if not self._replay.fresh(msg.sender, msg.seq):
            self._limited(f"replay {peer}", f"dropped a replayed frame from {peer}")
            return
        try:
            self._dispatch(msg, routing, peer, events)
        except MalformedBody as exc:
            self._limited(f"body {peer}", f"dropped a {msg.kind!r} frame from {peer}: {exc}")

    def _dispatch(self, msg: wire.Message, routing: bytes, peer: str, events: list[Event]) -> None:
        if msg.kind == "hello":
            self._on_hello(msg, routing, peer)
            return
        if msg.run != self.run_id:
            # From a slave of an earlier master (this one restarted): it must say hello again.
            if msg.kind != "bye":
                self._send_to(routing, self._sealer.seal("rejoin", self.run_id))
            return
        slave = self._slaves.get(msg.sender)
        if slave is not None:
            slave.last_seen = self.clock()
            slave.routing = routing
        body = Body(msg.body)
        if msg.kind in ("done", "unreadable", "timed_out", "worker_lost"):
            self._on_result(slave, msg.sender, msg.kind, body, events)
        if msg.kind == "bye":
            if slave is not None:
                self._on_bye(slave, events)
            return
        if slave is None:
            if self._closing:
                if self._farewell_started:
                    self._send_stop(routing)
                return
            slave = self._register(msg.sender, routing, peer)
        self._on_status(slave, status_of(body), events)
        if msg.kind == "leave" and not slave.leaving:
            slave.leaving = True
            self._send_to(routing, self._sealer.seal("leave_ok", self.run_id))
            self.log(f"{slave.name} is leaving once its {len(slave.assigned)} batches are done")

    def _on_hello(self, msg: wire.Message, routing: bytes, peer: str) -> None:
        body = Body(msg.body)
        nonce = body.text("nonce")
        if self._closing:
            if self._farewell_started:
                self._send_stop(routing)  # the run is over: a latecomer is told at once
            return
        self._hellos[msg.sender] = body
        self._hellos.move_to_end(msg.sender)
        while len(self._hellos) > 4096:
            self._hellos.popitem(last=False)
        welcome = {
            "nonce": nonce,
            "heartbeat": self.beat_every,
            "timeout": self.cfg.heartbeat_timeout,
            "target": self.cfg.target,
        }
        self._send_to(routing, self._sealer.seal("welcome", self.run_id, welcome))

    def _register(self, sender: str, routing: bytes, peer: str) -> _Slave:
        hello = self._hellos.get(sender, Body({}))
        self._numbers += 1
        slave = _Slave(
            sender=sender,
            routing=routing,
            number=self._numbers,
            pid=hello.integer("pid", default=0),
            host=hello.text("host", default=peer)[:255],
            max_frame=hello.integer("max_frame", default=wire.SLAVE_MAX_FRAME),
            last_seen=self.clock(),
        )
        self._slaves[sender] = slave
        self.log(f"{slave.name} joined from {peer}")
        return slave

    def _on_result(
        self, slave: _Slave | None, sender: str, kind: str, body: Body, events: list[Event]
    ) -> None:
        if kind == "worker_lost":
            self._on_worker_lost(slave, body, events)
            return
        task_id = body.integer("task")
        if slave is not None and task_id in slave.assigned:
            if kind != "timed_out":  # the WorkerLost that follows closes the assignment
                del slave.assigned[task_id]
        elif (sender, task_id) in self._lost and kind != "timed_out":
            del self._lost[(sender, task_id)]
            self.log(f"a late result for batch {task_id} from a lost slave: already sent again")
        else:
            self._limited(
                f"unassigned {sender}",
                f"dropped a result for batch {task_id}, which is not assigned to its sender",
            )
            return
        events.append(_result_event(kind, task_id, body))

    def _on_worker_lost(self, slave: _Slave | None, body: Body, events: list[Event]) -> None:
        if slave is None:
            return  # the slave itself was lost: its batches were sent again already
        held = [t for t in body.integers("tasks") if t in slave.assigned]
        for task_id in held:
            del slave.assigned[task_id]
        queued = set(body.integers("queued"))
        events.append(
            WorkerLost(
                body.integer("worker"),
                body.integer("pid"),
                tuple(held),
                f"{body.text('reason')} [a worker of slave {slave.number} on {slave.host}]",
                queued=tuple(t for t in held if t in queued),
            )
        )

    def _on_status(
        self, slave: _Slave, status: tuple[int, int, set[int]], events: list[Event]
    ) -> None:
        ack, free, held = status
        slave.ack = max(slave.ack, ack)
        slave.free = free
        missing = [t for t, seq in slave.assigned.items() if seq <= ack and t not in held]
        if missing:
            for task_id in missing:
                del slave.assigned[task_id]
            events.append(
                WorkerLost(
                    slave.number,
                    slave.pid,
                    tuple(missing),
                    f"on {slave.host} never got them (the connection dropped)",
                    queued=tuple(missing),
                )
            )

    def _on_bye(self, slave: _Slave, events: list[Event]) -> None:
        if slave.assigned:
            self._lose(slave, "left while holding batches", events)
        else:
            del self._slaves[slave.sender]
            self.log(f"{slave.name} left")

    # -- liveness and the rest ------------------------------------------------------------

    def _tick(self, events: list[Event]) -> None:
        now = self.clock()
        if now - self._last_beat >= self.beat_every:
            self._last_beat = now
            for slave in list(self._slaves.values()):
                self._send_to(slave.routing, self._sealer.seal("heartbeat", self.run_id))
        limit = self.cfg.heartbeat_timeout
        for slave in list(self._slaves.values()):
            if now - slave.last_seen > limit:
                self._lose(
                    slave,
                    f"went silent for more than {limit:g} s (host down, network cut, or the "
                    "slave was killed)",
                    events,
                )

    def _lose(self, slave: _Slave, why: str, events: list[Event]) -> None:
        self._slaves.pop(slave.sender, None)
        self.slaves_lost += 1
        for task_id in slave.assigned:
            self._lost[(slave.sender, task_id)] = None
        while len(self._lost) > REMEMBERED:
            self._lost.popitem(last=False)
        reason = f"on {slave.host} {why}"  # the number and pid are those of "slave N joined"
        events.append(WorkerLost(slave.number, slave.pid, tuple(slave.assigned), reason))

    def _send_to(self, routing: bytes, frame: list[bytes]) -> bool:
        assert self._sock is not None
        try:
            self._sock.send_multipart([routing, *frame], zmq.NOBLOCK)
            return True
        except zmq.ZMQError:  # EHOSTUNREACH (gone) or EAGAIN (not reading): it will time out
            return False

    def _notify_bad_signature(self, routing: bytes) -> None:
        """Tell a peer, unsigned and at most once a second, that its signature failed.

        Only a hint for a slave with the wrong secret: it learns nothing of the secret and
        acts on nothing but its own decision to give up.
        """
        now = self.clock()
        if now - self._notified.get(routing, -1.0) < 1.0:
            return
        if len(self._notified) > 1024:
            self._notified.clear()
        self._notified[routing] = now
        self._send_to(routing, [wire.NOTICE, wire.BAD_SIGNATURE])

    def _refuse(self, routing: bytes, peer: str, exc: wire.VersionMismatch) -> None:
        reason = (
            f"this master speaks taskmaster protocol {wire.PROTOCOL}, the slave at {peer} "
            f"speaks {exc.version}: install the same taskmaster version on every host"
        )
        self._limited(f"version {peer}", f"refused a slave: {reason}")
        self._send_to(routing, self._sealer.seal("refused", self.run_id, {"reason": reason}))


def _result_event(kind: str, task_id: int, body: Body) -> Event:
    if kind == "done":
        failures = tuple(body.failures("failures"))
        return BatchDone(task_id, body.number("elapsed"), failures)
    if kind == "unreadable":
        return BatchUnreadable(task_id, body.text("error"), body.text("traceback"))
    return JobTimedOut(task_id, body.integer("index"), body.number("seconds"))
