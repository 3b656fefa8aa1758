"""When an actor's batches may start: the rule that lets the parent know, when an actor
dies, which of the batches it held were running.

- in the order the parent numbered them, so the held batches past the oldest ``threads``
  had certainly not started;
- at most ``threads`` at once;
- never while a finished one-job batch's result may still be inside the actor. A method's
  result leaves the actor after the method returns, so a batch started right after could
  kill the actor with that result inside, and the parent would take the finished batch for
  the running one and charge its job for the death. The parent acks each one-job result it
  reads; batches of several jobs need no ack, since a lost one is split, never charged.

No Ray here: the actor (``taskmaster.ray.actor``) calls it from its runner threads.
"""

from __future__ import annotations

import queue
import threading


class StartGate:
    def __init__(self, threads: int) -> None:
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        for slot in range(threads):
            self._slots.put(slot)
        self._turn = 0  # the number of the next batch allowed to start
        self._order = threading.Condition()
        self._unread: set[int] = set()  # finished one-job batches the parent has not acked
        self._acks = threading.Condition()

    def enter(self, number: int) -> int:
        """Wait until batch ``number`` may start; the runner slot it takes."""
        with self._order:
            self._order.wait_for(lambda: self._turn == number)
            slot = self._slots.get()  # waits while `threads` batches run
            with self._acks:
                self._acks.wait_for(lambda: not self._unread)
            self._turn += 1
            self._order.notify_all()
        return slot

    def leave(self, number: int, slot: int, one_job: bool) -> None:
        """Batch ``number`` has finished (its result is about to leave the actor)."""
        if one_job:
            with self._acks:
                self._unread.add(number)
        self._slots.put(slot)

    def ack(self, numbers: list[int]) -> None:
        """The parent has read the results of these one-job batches."""
        with self._acks:
            self._unread.difference_update(numbers)
            self._acks.notify_all()
