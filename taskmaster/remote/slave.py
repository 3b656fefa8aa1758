"""tm-slave: runs a master's batches on local worker processes.

::

    tm-master ==DEALER==> Slave (this process, a bridge) --pipes--> forked workers x threads

The slave checks every frame's signature (the
:class:`~taskmaster.remote.slave_inbox.SlaveInbox` acts on those that pass), forwards
batches into a :class:`~taskmaster.local.transport.LocalTransport` (the same forked workers
as tm-run, so a job that segfaults kills a worker, not the connection) and sends the
results back as JSON. It unpickles nothing itself: its workers decode the jobs, after the
signature was checked.

Sessions: the slave says hello with a fresh nonce; the master's welcome echoes the nonce
and names its run id, and from then on only frames of that run count. When the master goes
silent, the slave looks for it again (``--timeout`` per attempt, ``--retries`` more
attempts, with backoff) and rejoins a master restarted with ``--resume``. Results of an
earlier run's batches are dropped: that master is gone, and the new one runs them again.

A frame counts only if signed with the master-to-slave key and addressed to this slave's
sender id, so a frame of another slave (or one of this slave's, reflected) is dropped.
Under tm-spawn, the read end of a pipe (``SlaveConfig.finished_fd``) reaches end-of-file
when a sibling slave was told the run is finished: a slave still looking for a master then
leaves too (exit 0) rather than wait for one that is gone.
"""

from __future__ import annotations

import collections
import os
import secrets
import select
import socket
import time
from collections.abc import Callable
from typing import Any

import zmq

from taskmaster.core.events import Event, JobTimedOut, Notice, WorkerLost
from taskmaster.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, detail_block
from taskmaster.local.signals import counting_signals
from taskmaster.local.transport import LocalTransport
from taskmaster.record import record
from taskmaster.remote import curve, frames
from taskmaster.remote.curve import CurveKeys
from taskmaster.remote.protocol import MalformedBody, result_body, status_body
from taskmaster.remote.slave_inbox import SlaveExit, SlaveInbox
from taskmaster.remote.sockets import dealer_socket, readable

HELLO_EVERY = 0.5
HELLO_UNSENT = 0.05
MAX_BACKOFF = 30.0


@record
class SlaveConfig:
    address: str
    secret: frames.Secret
    timeout: float = 15.0  # seconds one attempt to reach the master lasts
    retries: int = 8  # attempts after the first, each after a longer pause
    curve: CurveKeys | None = None  # encrypt, and talk only to the master's key (--no-curve: None)
    finished_fd: int | None = None  # tm-spawn's pipe: end-of-file once a sibling finished


class Slave:
    def __init__(
        self,
        config: SlaveConfig,
        local: LocalTransport,
        log: Callable[[str], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = config
        self.local = local
        self.log = log
        self.clock = clock
        self.sender = secrets.token_hex(16)
        to_master = frames.frame_key(config.secret, frames.TO_MASTER)
        self._sealer = frames.Sealer(to_master, self.sender, frames.TO_MASTER)
        to_slave = frames.frame_key(config.secret, frames.TO_SLAVE)
        max_header, max_payload = frames.SLAVE_MAX_HEADER, frames.SLAVE_MAX_FRAME
        self._opener = frames.Opener(to_slave, frames.TO_SLAVE, max_header, max_payload)
        self._replay = frames.ReplayGuard()
        self._limited = frames.RateLimitedLog(log)
        self.run_id: str | None = None  # the master's run this slave works for
        self.ack = 0  # last seq seen from that master
        self.heard = 0.0
        self.beat, self.silence = 1.0, 5.0  # the master's heartbeat period and timeout
        self.seeking = True
        self.nonce = ""
        self.attempt = 0
        self.attempt_ends = 0.0
        self.next_hello = 0.0
        self.welcomed = False
        self.tasks: dict[int, tuple[str, int]] = {}  # local task id -> (run, master task id)
        # (kind, run, body) in order; sealed only when sent, so seqs reach the master in order
        self.outbox: collections.deque[tuple[str, str | None, dict[str, Any]]] = collections.deque()
        self.last_sent = 0.0
        self.leaving = False
        self.leave_acked = False
        self.interrupts = 0
        self._sock: zmq.Socket[bytes] | None = None
        self._inbox = SlaveInbox(self)

    # -- the loop -------------------------------------------------------------------------

    def run(self) -> int:
        """Work until the master says the run is finished; returns the exit code."""
        self.local.start()  # fork the workers before the ZeroMQ context starts its threads
        ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        sock = self._sock = dealer_socket(ctx)
        if self.cfg.curve is not None:
            curve.connect_as_slave(sock, self.cfg.curve)
        try:
            sock.connect(self.cfg.address)
            with counting_signals() as (sig_fd, count):
                self.seek(f"connecting to {self.cfg.address}")
                return self._loop(sig_fd, count)
        except SlaveExit as exc:
            self.log(str(exc))
            return exc.code
        finally:
            # Batches still held belong to a master that is gone or gave up on them.
            self.local.close(kill=bool(self.tasks) or self.interrupts > 1)
            sock.close(linger=1000)
            ctx.term()

    def _loop(self, sig_fd: int, interrupts: Callable[[], int]) -> int:
        sock = self._sock
        assert sock is not None
        zmq_fd = int(sock.get(zmq.FD))
        while True:
            now = self.clock()
            self._timers(now)
            self.flush()
            code = self._leave_done()
            if code is not None:
                return code
            wake = [zmq_fd, sig_fd]
            if self.seeking and self.cfg.finished_fd is not None:
                self._sibling_finished(self.cfg.finished_fd)
                wake.append(self.cfg.finished_fd)  # only while seeking: at EOF it stays readable
            timeout = 0.0 if readable(sock) else self._sleep(now)
            for event in self.local.wait(timeout, wake):
                self._on_local(event)
            if interrupts() != self.interrupts:
                self._on_interrupt(interrupts())
            self._drain()

    def _sibling_finished(self, fd: int) -> None:
        if select.select([fd], [], [], 0)[0]:
            raise SlaveExit(EXIT_OK, "a sibling slave was told the run is finished; leaving too")

    def _sleep(self, now: float) -> float:
        if self.outbox:
            return 0.05  # retry a send the master could not take yet
        if self.seeking:
            return max(0.0, min(self.next_hello, self.attempt_ends) - now)
        return max(0.0, min(self.last_sent + self.beat, self.heard + self.silence) - now)

    def _timers(self, now: float) -> None:
        if self.seeking:
            if now >= self.attempt_ends:
                self._next_attempt(now)
            if now >= self.next_hello:
                body = {"nonce": self.nonce, "pid": os.getpid(), "host": socket.gethostname()}
                body["max_frame"] = frames.SLAVE_MAX_FRAME
                sent = self._send_now(self._sealer.seal("hello", None, body))
                # Unsent, it cost nothing (no connection yet): try again soon after one opens.
                self.next_hello = now + (HELLO_EVERY if sent else HELLO_UNSENT)
        elif now - self.heard > self.silence:
            self.seek(f"the master went silent for {self.silence:g} s; looking for it again")
        elif now - self.last_sent >= self.beat and not self.outbox:
            self.queue("status")

    def seek(self, why: str) -> None:
        self.log(why)
        now = self.clock()
        self.seeking = True
        self.nonce = secrets.token_hex(8)
        self.attempt = 0
        self.attempt_ends = now + self.cfg.timeout
        self.next_hello = now

    def _next_attempt(self, now: float) -> None:
        self.attempt += 1
        attempts = self.cfg.retries + 1
        waited = f"no answer from a master at {self.cfg.address} for {self.cfg.timeout:g} s"
        if self.attempt >= attempts:
            waited += ", once" if attempts == 1 else f", {attempts} times"
            if not self.welcomed:
                raise SlaveExit(
                    EXIT_USAGE,
                    f"{waited}: is tm-master running there, reachable from "
                    "this host, with the same secret and CurveZMQ setting? (--address, "
                    "--secret-file, --no-curve)",
                )
            raise SlaveExit(EXIT_FAILED, f"{waited}: giving up")
        pause = min(MAX_BACKOFF, 2.0 ** (self.attempt - 1))
        self.log(f"{waited} (attempt {self.attempt} of {attempts}); trying again in {pause:g} s")
        self.next_hello = now + pause
        self.attempt_ends = now + pause + self.cfg.timeout

    # -- sending --------------------------------------------------------------------------

    def _status(self) -> dict[str, Any]:
        held = [m for run, m in self.tasks.values() if run == self.run_id]
        return status_body(self.ack, max(0, self.local.free_slots()), held)

    def queue(self, kind: str, body: dict[str, Any] | None = None) -> None:
        """Send in order, behind earlier results, with the status as of now."""
        full = dict(body or {})
        if kind != "bye":
            full["status"] = self._status()
        self.outbox.append((kind, self.run_id, full))
        self.last_sent = self.clock()

    def flush(self) -> None:
        while self.outbox:
            # Sealed now, not when queued: a hello sent meanwhile must not get a lower seq
            # than a frame that leaves after it, or the master would drop that as a replay.
            if not self._send_now(self._sealer.seal(*self.outbox[0])):
                return
            self.outbox.popleft()

    def _send_now(self, frame: list[bytes]) -> bool:
        assert self._sock is not None
        try:
            self._sock.send_multipart(frame, zmq.NOBLOCK)
            return True
        except zmq.Again:  # not connected: IMMEDIATE refuses rather than queues
            return False

    # -- from the local workers -----------------------------------------------------------

    def _on_local(self, event: Event) -> None:
        if isinstance(event, WorkerLost):
            self._on_worker_lost(event)
            return
        if isinstance(event, Notice):
            self.log(event.text)
            return
        entry = self.tasks.get(event.task_id)
        if not isinstance(event, JobTimedOut):
            self.tasks.pop(event.task_id, None)
        if entry is None or entry[0] != self.run_id:
            return  # a batch of an earlier master: nobody waits for its result
        kind, body = result_body(event, entry[1])
        self.queue(kind, body)

    def _on_worker_lost(self, event: WorkerLost) -> None:
        detail = detail_block(event.detail)
        self.log(f"worker {event.worker_id} (pid {event.pid}) {event.reason}; replaced{detail}")
        unstarted = set(event.queued)
        mine: list[int] = []
        queued: list[int] = []
        for local_id in event.task_ids:
            entry = self.tasks.pop(local_id, None)
            if entry is not None and entry[0] == self.run_id:
                mine.append(entry[1])
                if local_id in unstarted:
                    queued.append(entry[1])
        if self.run_id is not None:
            body = {"tasks": mine, "queued": queued, "worker": event.worker_id}
            self.queue("worker_lost", {**body, "pid": event.pid, "reason": event.reason})

    # -- from the master ------------------------------------------------------------------

    def _drain(self) -> None:
        sock = self._sock
        assert sock is not None
        for _ in range(1000):
            try:
                parts = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self._on_frame(parts)

    def _on_frame(self, parts: list[bytes]) -> None:
        if parts == [frames.NOTICE, frames.BAD_SIGNATURE]:
            if self.seeking:
                raise SlaveExit(EXIT_USAGE, self._bad_signature())
            return
        try:
            msg = self._opener.open(parts)
        except frames.Dropped as exc:
            self._limited("drop", f"dropped a frame from {self.cfg.address}: {exc}")
            return
        except frames.VersionMismatch as exc:
            raise SlaveExit(
                EXIT_USAGE,
                f"the master at {self.cfg.address} speaks taskmaster protocol {exc.version}, "
                f"this slave speaks {frames.PROTOCOL}: install the same taskmaster version on "
                "every host",
            ) from None
        if msg.to != self.sender:
            self._limited("to", "dropped a frame meant for another slave (reflected?)")
            return
        if not self._replay.fresh(msg.sender, msg.seq):
            self._limited("replay", "dropped a replayed frame")
            return
        try:
            self._inbox.handle(msg)
        except MalformedBody as exc:
            self._limited("body", f"dropped a {msg.kind!r} frame from the master: {exc}")

    def _bad_signature(self) -> str:
        mine = self.cfg.secret.origin
        return (
            f"the master at {self.cfg.address} rejected this slave's signature: its secret "
            f"differs from this slave's ({mine}). Give both the same --secret-file or "
            f"${frames.SECRET_ENV}"
        )

    # -- Ctrl-C ---------------------------------------------------------------------------

    def _on_interrupt(self, count: int) -> None:
        self.interrupts = count
        if count >= 2:
            self.queue("bye")
            self.flush()
            raise SlaveExit(EXIT_INTERRUPTED, "stopped at once; the master runs its jobs again")
        self.leaving = True
        if self.seeking:
            raise SlaveExit(EXIT_INTERRUPTED, "stopped (no master to finish jobs for)")
        held = sum(1 for run, _ in self.tasks.values() if run == self.run_id)
        self.log(
            f"stopping: finishing the {held} batches in hand, then leaving "
            "(press Ctrl-C again to stop at once)"
        )
        self.queue("leave")

    def _leave_done(self) -> int | None:
        if not self.leaving:
            return None
        if self.seeking:
            raise SlaveExit(EXIT_INTERRUPTED, "stopped: the master is gone")
        mine = any(run == self.run_id for run, _ in self.tasks.values())
        if self.leave_acked and not mine and not self.outbox:
            self.queue("bye")
            self.flush()
            self.log("left the master after finishing its jobs")
            return EXIT_INTERRUPTED
        return None
