"""The rule of when an actor's batches start (taskmaster.ray.gate), in-process, no Ray."""

from __future__ import annotations

import threading

import pytest

from taskmaster.ray.gate import StartGate

SETTLE = 0.2  # seconds a thread is given to start, when the test checks that it has not


class Runner(threading.Thread):
    """Enters batch ``number`` through the gate; ``entered`` is set once it may start."""

    def __init__(self, gate: StartGate, number: int) -> None:
        super().__init__(daemon=True)
        self.gate, self.number = gate, number
        self.entered = threading.Event()
        self.slot = -1

    def run(self) -> None:
        self.slot = self.gate.enter(self.number)
        self.entered.set()


def started(gate: StartGate, number: int) -> Runner:
    runner = Runner(gate, number)
    runner.start()
    return runner


def running(gate: StartGate, number: int) -> Runner:
    """Batch ``number``, which the test expects to start at once."""
    runner = started(gate, number)
    assert runner.entered.wait(5), f"batch {number} did not start"
    return runner


@pytest.mark.timeout(10)
def test_batches_start_in_the_parents_order() -> None:
    gate = StartGate(threads=2)
    second = started(gate, 1)
    assert not second.entered.wait(SETTLE)  # number 0 has not started: 1 must wait
    first = started(gate, 0)
    assert first.entered.wait(5) and second.entered.wait(5)
    assert {first.slot, second.slot} == {0, 1}


@pytest.mark.timeout(10)
def test_at_most_threads_batches_run_at_once() -> None:
    gate = StartGate(threads=1)
    first = running(gate, 0)
    second = started(gate, 1)
    assert not second.entered.wait(SETTLE)
    gate.leave(0, first.slot, one_job=False)  # several jobs: no ack needed
    assert second.entered.wait(5)


@pytest.mark.timeout(10)
def test_no_batch_starts_until_a_finished_one_job_result_is_acked() -> None:
    gate = StartGate(threads=2)
    first = running(gate, 0)
    gate.leave(0, first.slot, one_job=True)  # its result may still be inside the actor
    second = started(gate, 1)
    assert not second.entered.wait(SETTLE), "a batch started before the one-job result was read"
    gate.ack([0])
    assert second.entered.wait(5)


@pytest.mark.timeout(10)
def test_a_running_batch_does_not_hold_the_next_back() -> None:
    gate = StartGate(threads=2)
    first = running(gate, 0)
    second = running(gate, 1)  # batch 0 still runs (one job, not finished): no ack pending
    gate.leave(1, second.slot, one_job=True)
    gate.leave(0, first.slot, one_job=True)
    third = started(gate, 2)
    assert not third.entered.wait(SETTLE)
    gate.ack([1])
    assert not third.entered.wait(SETTLE)  # 0's result is still unread
    gate.ack([0])
    assert third.entered.wait(5)
