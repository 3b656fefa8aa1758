"""What tm-slave does with each message from its master, once its frame passed every check.

::

    tm-master ==DEALER==> Slave --frames.Message--> SlaveInbox --TaskSent--> LocalTransport
                          (the socket, signature,   welcome, task,
                           recipient, replay)       stop, leave_ok,
                                                    rejoin, refused

The :class:`~taskmaster.remote.slave.Slave` opens every frame with
:mod:`taskmaster.remote.frames` (sizes, signature, version, recipient, replay) and hands
over only what passed; the inbox moves the slave's session along (joined, back in touch,
stale run, stopped) and forwards batches to the local workers, which alone decode them,
after their codec was checked. Nothing is unpickled here: bodies are JSON, read through
:class:`~taskmaster.remote.protocol.Body`, and a malformed one raises
:class:`~taskmaster.remote.protocol.MalformedBody` before it changes anything.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from taskmaster.core.events import TaskSent
from taskmaster.errors import EXIT_OK, EXIT_USAGE
from taskmaster.remote import frames
from taskmaster.remote.protocol import Body, MalformedBody
from taskmaster.store import codec

if TYPE_CHECKING:
    from taskmaster.remote.slave import Slave


class SlaveExit(Exception):
    """Ends the slave with an exit code and a last word."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


class SlaveInbox:
    """A master's checked messages, for one :class:`~taskmaster.remote.slave.Slave`."""

    def __init__(self, slave: Slave) -> None:
        self.slave = slave
        self._next_local = 0  # the last local task id given to a batch

    def handle(self, msg: frames.Message) -> None:
        """Act on one checked message from the master.

        Raises MalformedBody for a body that lacks a field or has a wrong type, and
        SlaveExit when the message ends the slave.
        """
        slave = self.slave
        body = Body(msg.body)
        if msg.kind == "refused":
            raise SlaveExit(EXIT_USAGE, f"the master refused this slave: {body.text('reason')}")
        if msg.kind == "welcome":
            if slave.seeking and body.text("nonce") == slave.nonce:
                self._on_welcome(msg, body)
            return
        if msg.kind == "rejoin":
            if not slave.seeking:
                slave.seek("the master does not know this slave (it restarted?); joining again")
            return
        if msg.kind == "stop" and slave.seeking and body.text("nonce", "") == slave.nonce:
            self._on_stop(body)  # the answer to our hello: the run ended before we joined
            return
        if msg.run != slave.run_id or slave.run_id is None:
            return  # from another run of the master: stale
        slave.heard = slave.clock()
        slave.ack = msg.seq
        if msg.kind == "task":
            self._on_task(msg, body)
        elif msg.kind == "leave_ok":
            slave.leave_acked = True
        elif msg.kind == "stop":
            self._on_stop(body)

    def _on_welcome(self, msg: frames.Message, body: Body) -> None:
        slave = self.slave
        address = slave.cfg.address
        if msg.run != slave.run_id:
            if slave.run_id is not None:
                slave.outbox.clear()  # results for the earlier master: nobody wants them
            verb = "joined" if not slave.welcomed else "joined a new"
            slave.log(f"{verb} master at {address} (run {msg.run})")
        else:
            slave.log(f"back in touch with the master at {address}")
        slave.run_id, slave.ack = msg.run, msg.seq
        slave.welcomed, slave.seeking = True, False
        slave.beat = max(0.05, body.number("heartbeat"))
        slave.silence = max(slave.beat, body.number("timeout"))
        slave.heard = slave.clock()
        slave.queue("leave" if slave.leaving else "status")

    def _on_task(self, msg: frames.Message, body: Body) -> None:
        slave = self.slave
        name = body.text("codec")
        if name not in codec.NAMES:
            raise MalformedBody(f"unknown codec {name!r}")
        assert slave.run_id is not None
        self._next_local += 1
        slave.tasks[self._next_local] = (slave.run_id, body.integer("task"))
        task = TaskSent(
            self._next_local, body.integer("first"), body.integer("count"), name, msg.payload
        )
        slave.local.send(task)

    def _on_stop(self, body: Body) -> None:
        slave = self.slave
        slave.queue("bye")  # the master waits for it before it closes
        if body.flag("finished"):
            slave.flush()
            raise SlaveExit(EXIT_OK, "the master finished the run; leaving")
        if body.flag("kill"):
            for local_id, (run, _) in list(slave.tasks.items()):
                if run == slave.run_id:
                    slave.local.kill_worker_holding(local_id)
        slave.seek("the master stopped before the run finished; waiting for it to come back")
