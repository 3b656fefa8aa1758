"""The master's book of its slaves: who is there, their credit, which batches each holds.

Pure: no sockets and no clock of its own. The ZeroMQ transport tells it what the slaves
said and turns its answers into events for the coordinator. The rules it keeps:

- **Credit.** A slave reports its free batch slots with the last frame seq it had seen;
  its credit is that count minus the batches sent to it after that seq.
- **Assignments.** A result is taken only from the slave its batch was sent to, on the
  connection it was sent on, while that assignment is open. A batch the slave
  acknowledges (seq at or below its ack) but does not hold was lost on the way; it runs
  again, uncharged.
- **Lost slaves.** Their batches run again (a WorkerLost, as for a dead local worker); a
  result of theirs that arrives late after all is passed on once, and the coordinator,
  which already sent those jobs again, counts nothing twice.
"""

from __future__ import annotations

import collections

from taskmaster.core.events import WorkerLost
from taskmaster.record import field, record
from taskmaster.remote import frames
from taskmaster.remote.protocol import Body

REMEMBERED = 100_000  # batches of lost slaves kept in mind for their late results
HELLOS = 4096  # hellos kept in mind (pid, host) until the slave's first status


@record(frozen=False, eq=False)
class SlaveRecord:
    sender: str
    routing: bytes  # the ZeroMQ routing id of its connection
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


class Roster:
    def __init__(self) -> None:
        self.slaves: dict[str, SlaveRecord] = {}
        self._hellos: collections.OrderedDict[str, Body] = collections.OrderedDict()
        # (sender, task_id) -> the routing id of the lost slave's connection
        self._lost: collections.OrderedDict[tuple[str, int], bytes] = collections.OrderedDict()
        self._numbers = 0

    def free_slots(self) -> int:
        return sum(s.slots() for s in self.slaves.values())

    def most_free(self) -> SlaveRecord:
        return max(self.slaves.values(), key=SlaveRecord.slots)

    def hello(self, sender: str, body: Body) -> None:
        """Remember what a slave said of itself until it joins with its first status."""
        self._hellos[sender] = body
        self._hellos.move_to_end(sender)
        while len(self._hellos) > HELLOS:
            self._hellos.popitem(last=False)

    def join(self, sender: str, routing: bytes, peer: str, now: float) -> SlaveRecord:
        hello = self._hellos.pop(sender, Body({}))
        self._numbers += 1
        slave = SlaveRecord(
            sender=sender,
            routing=routing,
            number=self._numbers,
            pid=hello.integer("pid", default=0),
            host=hello.text("host", default=peer)[:255],
            max_frame=hello.integer("max_frame", default=frames.SLAVE_MAX_FRAME),
            last_seen=now,
        )
        self.slaves[sender] = slave
        return slave

    def take_result(
        self, slave: SlaveRecord | None, sender: str, routing: bytes, task_id: int
    ) -> str | None:
        """Close the assignment a result answers: "open", "late" (a lost slave's, on the
        connection it had), or None when the sender does not hold that batch on that
        connection (forged, replayed, or already answered)."""
        if slave is not None and slave.routing == routing and task_id in slave.assigned:
            del slave.assigned[task_id]
            return "open"
        if self._lost.get((sender, task_id)) == routing:
            del self._lost[(sender, task_id)]
            return "late"
        return None

    def holds(self, slave: SlaveRecord | None, task_id: int) -> bool:
        return slave is not None and task_id in slave.assigned

    def worker_lost(self, slave: SlaveRecord, body: Body) -> WorkerLost:
        """One of the slave's own workers died: its batches of those it holds run again."""
        held = [t for t in body.integers("tasks") if t in slave.assigned]
        for task_id in held:
            del slave.assigned[task_id]
        queued = set(body.integers("queued"))
        return WorkerLost(
            body.integer("worker"),
            body.integer("pid"),
            tuple(held),
            f"{body.text('reason')} [a worker of slave {slave.number} on {slave.host}]",
            queued=tuple(t for t in held if t in queued),
        )

    def status(self, slave: SlaveRecord, ack: int, free: int, held: set[int]) -> WorkerLost | None:
        """Take a slave's credit; batches it acknowledged but does not hold are lost."""
        slave.ack = max(slave.ack, ack)
        slave.free = free
        missing = [t for t, seq in slave.assigned.items() if seq <= ack and t not in held]
        if not missing:
            return None
        for task_id in missing:
            del slave.assigned[task_id]
        return WorkerLost(
            slave.number,
            slave.pid,
            tuple(missing),
            f"on {slave.host} never got them (the connection dropped)",
            queued=tuple(missing),  # they never started: no attempt is charged
        )

    def lose(self, slave: SlaveRecord, why: str) -> WorkerLost:
        """Strike a slave off; its batches run again, its late results count once."""
        self.slaves.pop(slave.sender, None)
        for task_id in slave.assigned:
            self._lost[(slave.sender, task_id)] = slave.routing
        while len(self._lost) > REMEMBERED:
            self._lost.popitem(last=False)
        # The number and pid are those of the "slave N ... joined" line.
        return WorkerLost(slave.number, slave.pid, tuple(slave.assigned), f"on {slave.host} {why}")

    def silent(self, now: float, limit: float) -> list[SlaveRecord]:
        return [s for s in self.slaves.values() if now - s.last_seen > limit]
