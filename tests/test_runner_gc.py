"""The collector during and after a run: frozen for the run (before the workers fork), whole
again after it, so a program that calls taskmaster.run() is left as it was."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from pathlib import Path

from taskmaster.core.stub import StubTransport
from taskmaster.runner import run


def test_a_run_freezes_the_collector_for_its_duration_only(tmp_path: Path) -> None:
    frozen_during: list[int] = []

    def get_jobs() -> Iterator[int]:
        frozen_during.append(gc.get_freeze_count())
        yield from range(5)

    transport = StubTransport(slots=2)
    transport.on_wait = lambda t, _timeout: t.complete_all()
    before = gc.get_freeze_count()
    stats = run(get_jobs, lambda job: None, transport=transport, state_file=str(tmp_path / "s"))
    assert stats.done == 5 and stats.finished
    assert frozen_during and frozen_during[0] > before  # what existed at the start was frozen
    assert gc.get_freeze_count() == before  # and is the collector's again


def test_the_collector_is_whole_again_after_a_run_that_raised(tmp_path: Path) -> None:
    def get_jobs() -> Iterator[int]:
        raise RuntimeError("no jobs today")
        yield 0

    transport = StubTransport(slots=2)
    transport.on_wait = lambda t, _timeout: t.complete_all()
    before = gc.get_freeze_count()
    stats = run(get_jobs, lambda job: None, transport=transport, state_file=str(tmp_path / "s"))
    assert stats.exit_code == 1
    assert gc.get_freeze_count() == before
