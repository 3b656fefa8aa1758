"""What tm-master does with each message from a slave, once its frame passed every check.

::

    ZmqMasterTransport --frames.Message--> MasterInbox --> Roster
    (the socket, signatures,               hello, status,   (credits,
     replays, connections,                 results, leave,   assignments)
     heartbeats)                           bye; the stop

The transport opens every frame with :mod:`taskmaster.remote.frames` (sizes, signature,
version, replay, the connection its sender joined on) and hands over only what passed; the
inbox turns it into roster changes and events for the coordinator, and answers through the
transport's :class:`Tell`. No sockets here, and nothing unpickled: bodies are JSON, read
through :class:`~taskmaster.remote.protocol.Body`, and a malformed one raises
:class:`~taskmaster.remote.protocol.MalformedBody` before it changes anything.

The inbox also keeps how the run ends (closing, finished, killed), since that decides the
answer to a hello, and which slaves were told to stop and have not said goodbye yet.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from taskmaster.core.events import Event
from taskmaster.remote import frames
from taskmaster.remote.protocol import Body, result_event, status_of
from taskmaster.remote.roster import Roster, SlaveRecord

RESULT_KINDS = ("done", "unreadable", "timed_out", "worker_lost")


class Tell(Protocol):
    """Seal a ``kind`` frame of this run for the slave ``to`` and send it to ``routing``;
    whether the socket took it."""

    def __call__(
        self, routing: bytes, kind: str, to: str, body: dict[str, object] | None = None
    ) -> bool: ...


class MasterInbox:
    """A slave's checked messages, for the master's transport; see the module docstring."""

    def __init__(
        self,
        run_id: str,
        roster: Roster,
        tell: Tell,
        welcome: dict[str, object],
        log: Callable[[str], None],
        limited: frames.RateLimitedLog,
        clock: Callable[[], float],
    ) -> None:
        self.run_id = run_id
        self.roster = roster
        self._tell = tell
        self._welcome = welcome  # heartbeat, timeout, target: the same for every slave
        self.log = log
        self._limited = limited
        self.clock = clock
        self.closing = False
        self.kill = False
        self.finished = False
        self.farewell_started = False  # from then on, a slave that says hello is told to stop
        self.awaiting_bye: set[str] = set()  # senders told to stop, until they say goodbye

    # -- how the run ends -----------------------------------------------------------------

    def close(self, kill: bool) -> None:
        """No more batches go out and no slave joins; ``kill``: the slaves stop their jobs."""
        self.closing = True
        self.kill = self.kill or kill

    def tell_the_end(self, finished: bool) -> None:
        """Tell every slave how the run ended; a latecomer's hello hears it too, if finished."""
        self.finished = finished
        self.farewell_started = True
        for slave in list(self.roster.slaves.values()):
            self.send_stop(slave.sender, slave.routing)

    def send_stop(self, sender: str, routing: bytes, nonce: str | None = None) -> None:
        """``nonce``: to a slave not in this run, which only believes a stop for its hello."""
        body: dict[str, object] = {"finished": self.finished, "kill": self.kill}
        if nonce is not None:
            body["nonce"] = nonce
        if self._tell(routing, "stop", sender, body):
            self.awaiting_bye.add(sender)

    # -- the messages ---------------------------------------------------------------------

    def handle(self, msg: frames.Message, routing: bytes, peer: str, events: list[Event]) -> None:
        """Act on one checked message; the events it causes go to ``events``.

        Raises MalformedBody for a body that lacks a field or has a wrong type.
        """
        if msg.kind == "hello":
            self._on_hello(msg, routing)
            return
        slave = self.roster.slaves.get(msg.sender)
        if msg.kind == "bye":
            self.awaiting_bye.discard(msg.sender)
        if msg.run != self.run_id:
            # From a slave of an earlier master (this one restarted): it must say hello again.
            if msg.kind != "bye":
                self._tell(routing, "rejoin", msg.sender)
            return
        if slave is not None:
            slave.last_seen = self.clock()
        body = Body(msg.body)
        if msg.kind in RESULT_KINDS:
            self._on_result(slave, msg.sender, routing, msg.kind, body, events)
        if msg.kind == "bye":
            if slave is not None:
                self._on_bye(slave, events)
            return
        slave = slave or self._admit(msg.sender, routing, peer)
        if slave is None:
            return
        lost = self.roster.status(slave, *status_of(body))
        if lost is not None:
            events.append(lost)
        if msg.kind == "leave" and not slave.leaving:
            slave.leaving = True
            self._tell(routing, "leave_ok", slave.sender)
            self.log(f"{slave.name} is leaving once its {len(slave.assigned)} batches are done")

    def _admit(self, sender: str, routing: bytes, peer: str) -> SlaveRecord | None:
        """A slave's first frame in this run (after its hello, or back after being lost)."""
        if self.closing:
            return None  # it joins the next master, or hears of the end on its next hello
        slave = self.roster.join(sender, routing, peer, self.clock())
        self.log(f"{slave.name} joined from {peer}")
        return slave

    def _on_hello(self, msg: frames.Message, routing: bytes) -> None:
        body = Body(msg.body)
        nonce = body.text("nonce")
        known = self.roster.slaves.get(msg.sender)
        if known is not None and known.routing == routing:  # it lost touch with us but is alive
            known.last_seen = self.clock()
        if self.closing:
            if self.farewell_started and self.finished:
                self.send_stop(msg.sender, routing, nonce)  # a latecomer learns of the end
            return
        self.roster.hello(msg.sender, body)
        self._tell(routing, "welcome", msg.sender, {"nonce": nonce, **self._welcome})

    def _on_result(
        self,
        slave: SlaveRecord | None,
        sender: str,
        routing: bytes,
        kind: str,
        body: Body,
        events: list[Event],
    ) -> None:
        if kind == "worker_lost":
            if slave is not None:  # else the slave was lost: its batches were sent again
                events.append(self.roster.worker_lost(slave, body))
            return
        task_id = body.integer("task")
        event = result_event(kind, task_id, body)  # a malformed body fails before any change
        if kind == "timed_out":  # the WorkerLost that follows closes the assignment
            if self.roster.holds(slave, task_id):
                events.append(event)
            return
        taken = self.roster.take_result(slave, sender, routing, task_id)
        if taken is None:
            self._limited(
                "unassigned",
                f"dropped a result for batch {task_id}, which is not assigned to its sender",
            )
            return
        if taken == "late":
            self.log(f"a late result for batch {task_id} from a lost slave: already sent again")
        events.append(event)

    def _on_bye(self, slave: SlaveRecord, events: list[Event]) -> None:
        if slave.assigned:
            events.append(self.roster.lose(slave, "left while holding batches"))
        else:
            del self.roster.slaves[slave.sender]
            self.log(f"{slave.name} left")
