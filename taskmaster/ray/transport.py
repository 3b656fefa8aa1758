"""The Ray transport: ``workers`` actors on a Ray cluster, with the local transport's events.

Each actor holds up to ``threads + prefetch`` batches (Ray method calls in flight). The
parent waits on every call's result at once (``ray.wait``, in short slices so a Ctrl-C on a
wake fd is seen at once). A call that fails with RayActorError (the actor's process died, its
node was lost, it was killed) is a dead worker: WorkerLost with every batch it held, naming
the actor, its node and what Ray knows of why, and a replacement actor is started. Batches
go only to actors that have started (placed, setup_worker done): a replacement that Ray cannot
place (its node lost, no CPU left on the others) waits without holding any, and the run goes
on with the actors that are left. Under
--job-timeout the parent asks each busy actor for its late jobs; the actor holding one is
killed (``ray.kill``) and replaced: JobTimedOut, then WorkerLost.

The actors belong to this driver: closing kills them, and if the parent dies Ray ends them
(an actor dies with its owner). The cluster itself is the user's and is left running.
"""

from __future__ import annotations

import contextlib
import itertools
import select
import time
from typing import Any

import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayError

from taskmaster.core.events import Event, JobTimedOut, Notice, TaskSent, WorkerLost
from taskmaster.local.worker import WorkerSpec
from taskmaster.ray.actor import actor_class
from taskmaster.ray.cluster import describe_death, disconnect
from taskmaster.record import field, record

SLICE = 0.05  # seconds per ray.wait between looks at the wake fds
STOP_TIMEOUT = 30.0  # seconds for teardown_worker at a polite close
DEATH_TIMEOUT = 10.0  # seconds to wait at close for killed actors to be gone
UNPLACED_NOTICE = 30.0  # seconds with no actor taking batches before the user is told why
HARVEST_WAIT = 2.0  # seconds for a dead actor's calls to resolve (see _harvest)
GIL_GRACE = 5.0  # seconds past --job-timeout an actor may take to answer "which jobs are late?"

_READY = -1  # task ids of the calls that are not batches
_LATE = -2


@record(frozen=False, eq=False)
class _Actor:
    worker_id: int
    handle: Any
    held: dict[int, Any] = field(default_factory=dict)  # task_id -> ObjectRef, in send order
    calls: int = 0  # run calls numbered in send order: the actor starts them in that order
    singles: dict[int, int] = field(default_factory=dict)  # one-job task_id -> call number
    started: bool = False  # ready() answered: __init__ (setup_worker) is done
    pid: int = 0
    node: str = ""
    probe_at: float | None = None  # when the outstanding late() call was sent
    stopping: bool = False


class RayTransport:
    """N actors with ``threads + prefetch`` batch slots each.

    ``prefetch`` defaults to ``threads``: a method call's round trip is longer than a pipe
    write, so each runner thread has its next batch waiting in the actor already.
    """

    # A method call costs the parent about a millisecond of Ray's bookkeeping, and each batch
    # is one call: longer batches keep the parent from becoming the bottleneck of 8 threads x
    # N actors on 10 ms jobs.
    batch_seconds = 0.25

    def __init__(
        self,
        spec: WorkerSpec,
        workers: int,
        *,
        cpus: int = 0,
        prefetch: int | None = None,
        disconnect_at_close: bool = True,
    ) -> None:
        self.spec = spec
        self.n_workers = workers
        self.slots_each = spec.threads + (spec.threads if prefetch is None else prefetch)
        # One CPU of the cluster per actor, less when asked for more actors than it has CPUs,
        # so every actor is scheduled; SPREAD puts them on as many nodes as it can.
        share = 1.0 if not cpus or workers <= cpus else cpus / workers
        self._options: dict[str, Any] = dict(
            num_cpus=share,
            max_restarts=0,
            max_task_retries=0,
            scheduling_strategy="SPREAD",
        )
        if not spec.is_async:
            self._options["max_concurrency"] = self.slots_each
        self._disconnect = disconnect_at_close
        self._actors: dict[int, _Actor] = {}
        self._refs: dict[Any, tuple[int, int]] = {}  # ObjectRef -> (worker_id, task_id)
        self._ids = itertools.count()
        self._next_probe = 0.0
        self._opened = False  # an actor started during this wait: it has free slots
        self._acks: dict[int, list[int]] = {}  # worker_id -> one-job call numbers read
        self._unplaced_since: float | None = None  # since when no actor is open (first wait)
        self._told_unplaced = False

    def start(self) -> None:
        for _ in range(self.n_workers):
            self._spawn()

    def _spawn(self) -> None:
        worker_id = next(self._ids)
        handle = actor_class(self.spec).options(**self._options).remote(self.spec)
        self._actors[worker_id] = _Actor(worker_id, handle)
        self._refs[handle.ready.remote()] = (worker_id, _READY)

    def pids(self) -> list[int]:
        return [a.pid for a in self._actors.values() if a.pid]

    def _open(self) -> list[_Actor]:
        """The actors that take batches: placed and set up (an actor Ray cannot place, say
        the replacement of one lost with its node on a cluster with no CPU left, would hold
        its batches for ever), and not stopping."""
        return [a for a in self._actors.values() if a.started and not a.stopping]

    def free_slots(self) -> int:
        return sum(self.slots_each - len(a.held) for a in self._open())

    def send(self, task: TaskSent) -> None:
        actor = max(self._open(), key=lambda a: self.slots_each - len(a.held))
        ref = actor.handle.run.remote(actor.calls, task)
        if task.count == 1 and not self.spec.is_async:
            actor.singles[task.task_id] = actor.calls  # acked when read (TaskmasterActor.ack)
        actor.calls += 1
        actor.held[task.task_id] = ref
        self._refs[ref] = (actor.worker_id, task.task_id)

    # -- waiting ---------------------------------------------------------------------------

    def wait(self, timeout: float | None, wake_fds: list[int]) -> list[Event]:
        deadline = None if timeout is None else time.monotonic() + timeout
        events: list[Event] = []
        while True:
            self._watch_timeouts(events)
            self._notice_unplaced(events)
            left = SLICE if deadline is None else max(0.0, min(SLICE, deadline - time.monotonic()))
            refs = list(self._refs)
            if refs:
                ready, _ = ray.wait(refs, num_returns=1, timeout=left)
                if ready and len(refs) > 1:
                    ready, _ = ray.wait(refs, num_returns=len(refs), timeout=0)
                self._take_all(ready, events)
                woken = bool(wake_fds) and bool(select.select(wake_fds, [], [], 0)[0])
            else:
                woken = bool(select.select(wake_fds, [], [], left)[0])
            if (
                events
                or woken
                or self._opened
                or (deadline is not None and time.monotonic() >= deadline)
            ):
                self._opened = False
                return events

    def _notice_unplaced(self, events: list[Event]) -> None:
        """Say once why nothing runs when no actor has been open for UNPLACED_NOTICE s: Ray
        placed none (no free CPU for any, every node lost), or their start is slow."""
        if self._open():
            self._unplaced_since, self._told_unplaced = None, False
            return
        now = time.monotonic()
        if self._unplaced_since is None:
            self._unplaced_since = now
        if self._told_unplaced or now - self._unplaced_since < UNPLACED_NOTICE:
            return
        self._told_unplaced = True
        waiting = sum(1 for a in self._actors.values() if not a.started)
        need = self._options["num_cpus"]
        events.append(
            Notice(
                f"none of the {waiting} Ray actors has started in {UNPLACED_NOTICE:.0f} s, so "
                f"nothing runs: Ray has not placed them (each needs {need:g} CPU; `ray status` "
                "shows the cluster's free CPUs), or they are still starting (shipping the job "
                "module, imports, setup_worker). The run goes on once one starts; Ctrl-C stops "
                "it (what did not run stays for --resume)."
            )
        )

    def _take_all(self, ready: list[Any], events: list[Event]) -> None:
        """Results of finished calls: one ray.get for all, each alone if one raised."""
        try:
            values = ray.get(ready)
        except RayError:
            for ref in ready:
                self._take(ref, events)
            self._send_acks()
            return
        for ref, value in zip(ready, values, strict=True):
            self._take(ref, events, (value,))
        self._send_acks()

    def _send_acks(self) -> None:
        for worker_id, numbers in self._acks.items():
            actor = self._actors.get(worker_id)
            if actor is not None:
                actor.handle.ack.remote(numbers)  # no answer awaited: a lost ack dies with it
        self._acks.clear()

    def _take(self, ref: Any, events: list[Event], got: tuple[Any] | None = None) -> None:
        owner = self._refs.pop(ref, None)
        actor = None if owner is None else self._actors.get(owner[0])
        if owner is None or actor is None:
            return  # its actor is buried already: its batches were reported with it
        task_id = owner[1]
        try:
            value = got[0] if got is not None else ray.get(ref)
        except RayActorError as exc:
            events += self._bury_dead(actor, exc, exc.actor_init_failed)
            return
        except RayError as exc:  # e.g. a result lost with its node: the actor is suspect
            events += self._bury_dead(actor, exc, False)
            return
        if task_id == _READY:
            actor.started = self._opened = True  # the caller may send it batches now
            actor.pid, actor.node, _ = value
        elif task_id == _LATE:
            actor.probe_at = None
            if value:
                late_task, index, seconds = value[0]
                events.append(JobTimedOut(late_task, index, seconds))
                events += self._bury(actor, "was stopped because a job ran past --job-timeout")
        else:
            actor.held.pop(task_id, None)
            number = actor.singles.pop(task_id, None)
            if number is not None:
                self._acks.setdefault(actor.worker_id, []).append(number)
            events.append(value)

    def _watch_timeouts(self, events: list[Event]) -> None:
        """Ask busy actors for jobs past --job-timeout; kill one that cannot answer."""
        limit = self.spec.job_timeout
        if limit is None or self.spec.is_async:  # async jobs time out inside the actor
            return
        now = time.monotonic()
        if now < self._next_probe:
            return
        interval = min(1.0, limit / 4)
        self._next_probe = now + interval
        for actor in list(self._actors.values()):
            if not actor.started or not actor.held:
                continue
            if actor.probe_at is None:
                actor.probe_at = now
                self._refs[actor.handle.late.remote(limit)] = (actor.worker_id, _LATE)
            elif now - actor.probe_at > limit + interval + GIL_GRACE:
                reason = (
                    "stopped answering while a job ran past --job-timeout (C code that never "
                    "releases the GIL?) and was killed"
                )
                events += self._bury(actor, reason)

    # -- endings ---------------------------------------------------------------------------

    def _bury_dead(self, actor: _Actor, exc: BaseException, setup_failed: bool) -> list[Event]:
        death = describe_death(exc)
        actor.node = actor.node or death.node
        actor.pid = actor.pid or death.pid
        if setup_failed:
            return self._bury(
                actor,
                "could not start: setup_worker raised (its traceback is above)",
                setup_failed=True,
            )
        return self._bury(actor, death.why)

    def _bury(self, actor: _Actor, reason: str, setup_failed: bool = False) -> list[Event]:
        """End an actor: the results it sent before it ended, then WorkerLost with the rest."""
        with contextlib.suppress(Exception):
            ray.kill(actor.handle, no_restart=True)
        events = self._harvest(actor)
        del self._actors[actor.worker_id]
        for ref in [r for r, (wid, _) in self._refs.items() if wid == actor.worker_id]:
            del self._refs[ref]
        held = tuple(actor.held)
        if not actor.stopping:
            self._spawn()
        # Batches start in send order, at most `threads` at once, and every result that came
        # back was read (by _harvest): so the held batches past the oldest `threads` had not
        # started. An async actor starts every batch it holds at once.
        queued = held if setup_failed else () if self.spec.is_async else held[self.spec.threads :]
        events.append(
            WorkerLost(
                actor.worker_id,
                actor.pid,
                held,
                f"(Ray actor {actor.handle._actor_id.hex()[:12]} on node {actor.node or '?'}) "
                + reason,
                queued=queued,
                setup_failed=setup_failed,
            )
        )
        return events

    def _harvest(self, actor: _Actor) -> list[Event]:
        """The results of batches a dead (or killed) actor finished before it ended.

        Its death shows through one call's error, while a batch it finished just before may
        have its result ready but unread, or still on its way: ray.wait orders nothing. Each
        of its calls resolves soon after the death (to a value or to the death's error), so
        waiting HARVEST_WAIT at most for them all keeps a finished batch from being counted
        as one the actor was running, and charged for its death.
        """
        refs = [r for r, (wid, tid) in self._refs.items() if wid == actor.worker_id and tid >= 0]
        if not refs:
            return []
        done, _ = ray.wait(refs, num_returns=len(refs), timeout=HARVEST_WAIT)
        events: list[Event] = []
        for ref in done:
            try:
                value = ray.get(ref)
            except RayError:
                continue  # lost with the actor
            _, task_id = self._refs.pop(ref)
            actor.held.pop(task_id, None)
            events.append(value)
        return events

    def kill_worker_holding(self, task_id: int) -> None:
        """Kill the actor holding a task; its death is reported by the next wait."""
        for actor in self._actors.values():
            if task_id in actor.held:
                ray.kill(actor.handle, no_restart=True)

    def close(self, kill: bool = False) -> None:
        """End every actor: after teardown_worker (politely), or at once; then disconnect."""
        actors = list(self._actors.values())
        for actor in actors:
            actor.stopping = True
        if not kill and actors:
            stops = [a.handle.stop.remote() for a in actors if a.started]
            with contextlib.suppress(GetTimeoutError, RayError):
                ray.wait(stops, num_returns=len(stops), timeout=STOP_TIMEOUT)
        for actor in actors:
            with contextlib.suppress(Exception):
                ray.kill(actor.handle, no_restart=True)
        # ray.kill only asks; a call made now fails once the actor is dead, so waiting for
        # these means no actor of ours outlives the run.
        deaths = [a.handle.ready.remote() for a in actors]
        with contextlib.suppress(RayError):
            ray.wait(deaths, num_returns=len(deaths), timeout=DEATH_TIMEOUT)
        self._actors.clear()
        self._refs.clear()
        if self._disconnect:
            disconnect()
