"""The ZeroMQ transport of tm-master: batches go to remote tm-slaves over one ROUTER socket.

::

    Coordinator --TaskSent--> ZmqMasterTransport ==ROUTER/DEALER==> tm-slave x N
                <--events---   (Roster: credits,        <== done / lost / status
                                assignments, silence)

It is a :class:`~taskmaster.core.events.Transport` like the local one, so the coordinator
applies the same rules to remote batches: retries, failures, the watermark, the window.
The :class:`~taskmaster.remote.roster.Roster` decides which results count and which slaves are
lost, and the :class:`~taskmaster.remote.master_inbox.MasterInbox` what each message from a
slave means; this module does the sockets: every frame is checked by
:mod:`taskmaster.remote.frames` before anything in it is parsed (and before the inbox sees
it), heartbeats go out every ``heartbeat_timeout / 5``, and a slave silent for
``heartbeat_timeout`` is lost. The master never unpickles: results are JSON, and job
payloads only pass through.

Identities: the ROUTER socket gives each connection a routing id of its own (no handover;
the slave cannot choose it). A slave is bound to the connection it joined on: a frame that
names its sender from any other connection is dropped, so a result counts only from the
connection its batch went to. With CURVE (the default), only connections that passed the
ZAP check exist at all.
"""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Callable

import zmq
from zmq.auth.thread import ThreadAuthenticator

from taskmaster.core.events import BatchUnreadable, Event, TaskSent
from taskmaster.core.pull import BATCH_SECONDS
from taskmaster.errors import UsageError
from taskmaster.record import record
from taskmaster.remote import curve, frames
from taskmaster.remote.curve import CurveKeys
from taskmaster.remote.master_inbox import MasterInbox
from taskmaster.remote.protocol import MalformedBody
from taskmaster.remote.roster import Roster
from taskmaster.remote.sockets import readable, router_socket

HEARTBEATS_PER_TIMEOUT = 5
LONELY_HINT_EVERY = 30.0  # while no slave is connected, say how to start one this often
FAREWELL_SECONDS = 3.0  # how long a finished master waits for its slaves to say goodbye
LATECOMER_SECONDS = 1.0  # how long a finished master still tells latecomers it finished
MAX_DRAIN = 10_000  # frames handled per wait(), so the coordinator keeps its turn


@record
class MasterConfig:
    address: str
    secret: frames.Secret
    heartbeat_timeout: float = 5.0
    target: str = ""
    curve: CurveKeys | None = None  # encrypt, and admit only the slaves' key (--no-curve: None)


class ZmqMasterTransport:
    """Hands batches to tm-slaves; see the module docstring."""

    batch_seconds = BATCH_SECONDS

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
        to_slave = frames.frame_key(config.secret, frames.TO_SLAVE)
        self._sealer = frames.Sealer(to_slave, self.run_id, frames.TO_SLAVE)
        to_master = frames.frame_key(config.secret, frames.TO_MASTER)
        self._opener = frames.Opener(to_master, frames.TO_MASTER, frames.MASTER_MAX_FRAME, 0)
        self._replay = frames.ReplayGuard()
        self._limited = frames.RateLimitedLog(log)
        self.roster = Roster()
        self._notified: dict[bytes, float] = {}
        self._pending: list[Event] = []
        self._ctx: zmq.Context[zmq.Socket[bytes]] | None = None
        self._sock: zmq.Socket[bytes] | None = None
        self._poller: tuple[tuple[int, ...], zmq.Poller] | None = None
        self._auth: ThreadAuthenticator | None = None
        self._last_beat = 0.0
        self._next_hint = 0.0
        welcome: dict[str, object] = {
            "heartbeat": self.beat_every,
            "timeout": config.heartbeat_timeout,
            "target": config.target,
        }
        self._inbox = MasterInbox(
            self.run_id, self.roster, self._tell, welcome, log, self._limited, clock
        )

    @property
    def beat_every(self) -> float:
        return self.cfg.heartbeat_timeout / HEARTBEATS_PER_TIMEOUT

    # -- Transport ------------------------------------------------------------------------

    def start(self) -> None:
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = router_socket(ctx)
        if self.cfg.curve is not None:
            self._auth = curve.serve(ctx, sock, self.cfg.curve)
        try:
            sock.bind(self.cfg.address)
        except zmq.ZMQError as exc:
            sock.close(linger=0)
            self._stop_auth()
            ctx.term()
            raise UsageError(
                f"cannot listen on {self.cfg.address}: {exc.strerror} (another tm-master "
                "there? pick another port with --address)"
            ) from None
        self._ctx, self._sock = ctx, sock
        self._last_beat = self.clock()
        self._next_hint = self._last_beat + LONELY_HINT_EVERY
        how = ", encrypted (CurveZMQ)" if self.cfg.curve else ", NOT encrypted (--no-curve)"
        self.log(f"listening on {self.cfg.address} for slaves{how} (run {self.run_id})")

    def free_slots(self) -> int:
        return 0 if self._inbox.closing else self.roster.free_slots()

    def send(self, task: TaskSent) -> None:
        slave = self.roster.most_free()
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
        body: dict[str, object] = {"task": task.task_id, "first": task.first_seq}
        body["count"] = task.count
        body["codec"] = task.codec
        frame = self._sealer.seal("task", self.run_id, body, task.payload, to=slave.sender)
        slave.assigned[task.task_id] = self._sealer.seq
        if not self._send_to(slave.routing, frame):
            self._pending.append(self.roster.lose(slave, "could not be reached (disconnected)"))

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
        self._inbox.close(kill)

    # -- after the run --------------------------------------------------------------------

    def farewell(self, finished: bool) -> None:
        """Tell the slaves how the run ended, wait (a little) for their goodbyes, close.

        Finished: they exit; a slave that says hello meanwhile is told too. Otherwise they
        wait for a master to come back (``--resume``); with ``kill``, they first stop the
        jobs this run gave them. The master waits for the goodbyes because a slave drops
        what it has not read yet when the connection closes (its socket is IMMEDIATE).
        """
        self._inbox.close(kill=False)
        if self._sock is None or self._ctx is None:
            return
        self._inbox.tell_the_end(finished)
        start = self.clock()
        deadline, latecomers = start + FAREWELL_SECONDS, start + LATECOMER_SECONDS
        # Finished: a slave that says hello now (it connected a moment too late) hears so.
        while (self._inbox.awaiting_bye and self.clock() < deadline) or (
            finished and self.clock() < latecomers
        ):
            if self._sock.poll(50):
                self._drain([])
        self._sock.close(linger=1000)
        self._stop_auth()
        self._ctx.term()
        self._sock = self._ctx = None

    def _stop_auth(self) -> None:
        if self._auth is not None:
            self._auth.stop()
            self._auth = None

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
        except frames.Dropped as exc:
            self._limited("drop", f"dropped a frame from {peer}: {exc}")
            if isinstance(exc, frames.BadSignature):
                self._notify_bad_signature(routing)
            return
        except frames.VersionMismatch as exc:
            self._refuse(routing, peer, exc)
            return
        known = self.roster.slaves.get(msg.sender)
        foreign = known is not None and known.routing != routing
        if foreign and msg.kind != "hello":
            self._limited(
                "foreign",
                f"dropped a {msg.kind!r} frame from {peer}: its sender joined on another "
                "connection (a result counts only from the connection its batch went to)",
            )
            return
        # A hello from another connection (the slave reconnected, or someone claims its id)
        # gets a welcome, but cannot spend the seqs of the slave's own connection.
        if not foreign and not self._replay.fresh(msg.sender, msg.seq):
            self._limited("replay", f"dropped a replayed frame from {peer}")
            return
        try:
            self._inbox.handle(msg, routing, peer, events)
        except MalformedBody as exc:
            self._limited("body", f"dropped a {msg.kind!r} frame from {peer}: {exc}")

    # -- liveness and the rest ------------------------------------------------------------

    def _tick(self, events: list[Event]) -> None:
        now = self.clock()
        if now - self._last_beat >= self.beat_every:
            self._last_beat = now
            for slave in list(self.roster.slaves.values()):
                self._tell(slave.routing, "heartbeat", slave.sender)
            if not self.roster.slaves and not self._inbox.closing and now >= self._next_hint:
                self._next_hint = now + LONELY_HINT_EVERY
                self.log(f"no slave connected yet; start some with: {self._slave_command()}")
        limit = self.cfg.heartbeat_timeout
        for slave in self.roster.silent(now, limit):
            why = f"went silent for more than {limit:g} s (host down, network cut, or killed)"
            events.append(self.roster.lose(slave, why))

    def _slave_command(self) -> str:
        host, port = frames.parse_address(self.cfg.address)
        if host in ("0.0.0.0", "*", "::"):
            host = socket.gethostname()
        module = self.cfg.target.rpartition(":")[0] or "JOBS.py"
        curve_flag = "" if self.cfg.curve else " --no-curve"
        return f"tm-slave {module} --address tcp://{host}:{port}{curve_flag}"

    def _tell(
        self, routing: bytes, kind: str, to: str, body: dict[str, object] | None = None
    ) -> bool:
        """Seal a ``kind`` frame of this run for the slave ``to``; whether the socket took it."""
        return self._send_to(routing, self._sealer.seal(kind, self.run_id, body, to=to))

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
        self._send_to(routing, [frames.NOTICE, frames.BAD_SIGNATURE])

    def _refuse(self, routing: bytes, peer: str, exc: frames.VersionMismatch) -> None:
        reason = (
            f"this master speaks taskmaster protocol {frames.PROTOCOL}, the slave at {peer} "
            f"speaks {exc.version}: install the same taskmaster version on every host"
        )
        self._limited("version", f"refused a slave: {reason}")
        self._tell(routing, "refused", exc.sender, {"reason": reason})
