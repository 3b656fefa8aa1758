"""The checkpoint a run writes: the ledger's view of the run, as a State to store."""

from __future__ import annotations

import time
from typing import Any

from taskmaster.core.ledger import Ledger
from taskmaster.options import Options
from taskmaster.store import codec
from taskmaster.store.checkpoint import Anchor, State


def checkpoint_state(
    ledger: Ledger,
    base: State,
    opt: Options,
    *,
    finished: bool,
    rate: float,
    window: int,
) -> State | None:
    """The State to write now; None when it cannot name the job a resume starts from.

    The anchor is the job at the watermark (the lowest open unit's first job), or, when
    nothing is open, the last job pulled; a resumed run that pulled nothing keeps its own.
    """
    anchor = base.anchor
    lowest = ledger.lowest_open()
    if lowest is not None:
        job = lowest.jobs[0]
        anchor = Anchor(ledger.watermark, job, codec.job_digest(job))
    elif ledger.tail is not None:
        anchor = Anchor(ledger.tail[0], ledger.tail[1], codec.job_digest(ledger.tail[1]))
    if anchor is not None and not _storable(anchor.job):
        if not finished:
            return None  # a job that cannot be serialized cannot be handed back as last
        anchor = None  # a finished run is never resumed from its anchor
    done, failed = ledger.settled()  # an open unit runs again whole on resume
    return State(
        target=base.target,
        kwargs=base.kwargs,
        watermark=ledger.watermark,
        anchor=anchor,
        resolved=tuple(ledger.resolved_above()),
        done=done,
        failed=failed,
        finished=finished,
        limit=opt.limit,
        started=base.started,
        updated=time.time(),
        runs=base.runs,
        rate=rate,
        window=window,
    )


def _storable(job: Any) -> bool:
    try:
        codec.dumps(job)
    except codec.EncodeError:
        return False
    return True
