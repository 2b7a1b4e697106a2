"""Reconciliation run by Celery beat: find work whose worker died or whose message was lost.

A running subtask renews a lease (its heartbeat) while its algorithm runs; one whose
lease expired lost its worker or host, and is dispatched again (``reclaim``). A marshal
holds a lease on its task's step the same way; one whose lease lapsed is marshaled again
under a new attempt.

A stage's next message is sent after its transaction commits; a process that dies in
between, or a broker that loses its queue, leaves a task waiting in a step that nothing
will move. A task that has sat in such a step longer than ``stale_after`` seconds gets
its message again. Every stage is fenced, so a message that was only slow, not lost,
makes the re-sent one a no-op.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Any

from redis.exceptions import LockError
from sqlalchemy import Text, cast, or_, select, update

from pipeline.database import transaction
from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import EXECUTION_STEPS, MAY_STORE, WAITING, PState
from pipeline.domain.models import DatastoreFile, PipelineInstance, Subtask, Task, utcnow
from pipeline.domain.states import STOPPED_STATES, SubtaskState
from pipeline.engine import batch, executors
from pipeline.engine.alerts import WARNING, raise_once_about
from pipeline.engine.datastore_ledger import withdraw_pending
from pipeline.engine.locks import lock_task_only
from pipeline.engine.task_state import HOST, note_unloaded
from pipeline.engine.transitions import advance
from pipeline.errors import Refused, Unreadable
from pipeline.messaging import outbox
from pipeline.messaging.broker import broker_client
from pipeline.messaging.messages import InFlight, stage_message
from pipeline.recovery import consumers, disks, heartbeat, worker_liveness
from pipeline.recovery.isolation import Isolation, decode_execution
from pipeline.recovery.reattach import reattach
from pipeline.recovery.reclaim import marshal_again, reclaim_lost
from pipeline.settings import Settings, get_settings

log = logging.getLogger(__name__)
#: Redis key of the lock that keeps two reconciler runs from reconciling at once.
LOCK_KEY = "pipeline:reconciler-lock"
#: The lock lapses after this many intervals unless its holder extends it.
LOCK_INTERVALS = 3
#: Redis key set for half an interval after a run ends: a second beat's run then skips.
RAN_KEY = "pipeline:reconciler-ran"


def reconcile() -> dict[str, int]:
    """Reclaim subtasks whose worker is gone, re-send lost stage messages, retry lost node
    transitions; returns what it did. Only one runs at a time, however many beats run and
    however long a run takes (``ReconcilerLock``); each run records the reconciler's
    heartbeat.

    Each task is isolated (``pipeline.recovery.isolation``): one whose row cannot be read
    fails alone (``failed`` counts them) and the others are recovered all the same.
    """
    settings = get_settings()
    with _exclusive(settings.reconcile_interval) as keep:
        if keep is None:
            return {"skipped": 1}
        try:
            return reconcile_once(Isolation(before_each=keep))
        except LockError:
            log.warning("reconciler: its lock lapsed mid-run; the next run takes over")
            return {"lapsed": 1}


def reconcile_once(isolation: Isolation | None = None) -> dict[str, int]:
    """One run of the reconciler, by whoever holds its lock (``reconcile`` takes it; a
    test driving the reconciler in its own process has no other to exclude)."""
    return _reconcile(get_settings(), isolation or Isolation())


def _reconcile(settings: Settings, isolation: Isolation) -> dict[str, int]:
    reclaimed = _reclaim_expired_leases(
        utcnow() - timedelta(seconds=settings.lease_seconds), isolation
    )
    cutoff = utcnow() - timedelta(seconds=settings.stale_after)
    # Before the quiet tasks are looked at: their jobs' outcomes recorded, and lost ones
    # sent again, in one query of the batch system.
    batch_jobs = batch.watch(isolation)
    remarshaled = _marshal_lost_marshals(cutoff, isolation)
    withdrawn = _withdraw_abandoned_placements(cutoff, settings, isolation)
    disks_low = disks.watch(settings)
    silent_workers = worker_liveness.watch(settings)
    unconsumed = consumers.watch(cutoff, settings.stale_after)  # outside the transaction
    isolation.before_each()  # the workers were asked (a second): beat is alive
    unreadable: dict[int, str] = {}
    with outbox.transaction() as (session, messages):
        # The settings as text, decoded row by row: one that cannot be read fails its task,
        # not this query.
        execution = cast(Task.execution, Text)
        waiting = _readable(
            session.execute(
                select(Task.id, Task.attempt, Task.p_state, Task.instance_id, execution).where(
                    Task.p_state.in_(list(WAITING)),
                    ~Task.error,
                    Task.updated_at < cutoff,
                )
            ).all(),
            unreadable,
        )
        quiet = _readable(
            session.execute(
                select(Task.id, Task.attempt, execution).where(
                    Task.p_state.in_(list(EXECUTION_STEPS)), ~Task.error, Task.updated_at < cutoff
                )
            ).all(),
            unreadable,
        )
        # Touched, so a task that was only slow is not sent the message again every beat.
        touched = [row[0] for row in waiting] + [row[0] for row in quiet]
        session.execute(update(Task).where(Task.id.in_(touched)).values(updated_at=utcnow()))
        active_instances = list(
            session.scalars(
                select(PipelineInstance.id).where(
                    PipelineInstance.state.not_in(list(STOPPED_STATES)),
                    PipelineInstance.updated_at < cutoff,
                )
            )
        )
        news = f"no news for {settings.stale_after:g} s"
        for task_id, attempt, p_state, instance_id, execution_settings in waiting:
            queue = execution_settings.queue
            messages.add(stage_message(WAITING[p_state], task_id, attempt, queue))
            # Recovered work leaves a trace: a line in the task's history and an alert,
            # once for the step (a task whose message keeps going unanswered is one story);
            # no alert when its queue has no consumer: that queue's alert says why.
            what = f"{WAITING[p_state]} sent again (worker or message lost)"
            note_unloaded(session, task_id, p_state, attempt, f"{news}: {what}")
            if queue in unconsumed:
                continue
            raise_once_about(
                session,
                f"resent:{task_id}:{attempt}:{p_state}",
                instance_id,
                task_id,
                WARNING,
                f"{p_state} had {news}: {what}",
            )
    for task_id, reason in unreadable.items():
        isolation.unreadable(task_id, reason)
    recovered = _reattach_quiet(quiet, isolation)
    for instance_id in active_instances:
        isolation.instance(instance_id, lambda i=instance_id: advance(i, recovered=True))
    return {
        "reclaimed": reclaimed,
        "remarshaled": remarshaled,
        "resent": len(waiting),
        "redispatched": recovered,
        "withdrawn": withdrawn,
        "disks_low": disks_low,
        "silent_workers": len(silent_workers),
        "queues_unconsumed": len(unconsumed),
        "instances_checked": len(active_instances),
        "failed": isolation.failed,
        **batch_jobs,
    }


def _readable(rows: list[Any], unreadable: dict[int, str]) -> list[tuple[Any, ...]]:
    """The rows (id first, stored execution settings last) with their settings decoded;
    the id and reason of each whose settings cannot be read go to ``unreadable``."""
    readable = []
    for *fields, stored in rows:
        try:
            readable.append((*fields, ExecutionSettings.stored(decode_execution(stored))))
        except Unreadable as exc:
            unreadable[fields[0]] = exc.reason
    return readable


def _marshal_lost_marshals(expired_before: datetime, isolation: Isolation) -> int:
    """Tasks in MARSHALING whose step lease lapsed: the worker marshaling them is gone."""
    with transaction() as session:
        lost = session.execute(
            select(Task.id, Task.attempt).where(
                Task.p_state == PState.MARSHALING, ~Task.error, Task.updated_at < expired_before
            )
        ).all()
    return sum(
        bool(
            isolation.task(
                task_id, lambda t=task_id, a=attempt: marshal_again(t, a, expired_before)
            )
        )
        for task_id, attempt in lost
    )


def _withdraw_abandoned_placements(
    cutoff: datetime, settings: Settings, isolation: Isolation
) -> int:
    """Versions recorded as being placed (by subtasks as they ended, or by a store) and
    never made current, whose attempt can no longer store (the task moved on: restarted,
    failed, halted): their paths show their current versions again
    (``datastore_ledger.withdraw_pending``). An attempt still running, or a store still
    waiting to be sent again, finishes them itself."""
    with transaction() as session:
        abandoned = session.execute(
            select(DatastoreFile.task_id, DatastoreFile.attempt)
            .join(Task, Task.id == DatastoreFile.task_id)
            .where(
                DatastoreFile.placing,
                DatastoreFile.stored_at < cutoff,
                or_(
                    Task.attempt != DatastoreFile.attempt,
                    Task.p_state.not_in(list(MAY_STORE)),
                    Task.error,
                ),
            )
            .distinct()
        ).all()

    def withdraw(task_id: int, attempt: int) -> int:
        with transaction() as session:
            lock_task_only(session, task_id)
            return withdraw_pending(session, settings.datastore, task_id, attempt)

    return sum(
        isolation.task(task_id, lambda t=task_id, a=attempt: withdraw(t, a)) or 0
        for task_id, attempt in abandoned
    )


def _reattach_quiet(quiet: list[Any], isolation: Isolation) -> int:
    """Executing tasks with no news for a while: dispatch again what their executor lost
    (each executor asked once, for all its queues)."""
    live = executors.alive(settings for _, _, settings in quiet)
    redispatched = 0
    for task_id, attempt, settings in quiet:

        def again(
            task_id: int = task_id,
            attempt: int = attempt,
            found: InFlight = live[settings.executor],
        ) -> int:
            with suppress(Refused):  # it moved on meanwhile
                return len(reattach(task_id, attempt, found, "reconciler", quiet=True).lost)
            return 0

        redispatched += isolation.task(task_id, again) or 0
    return redispatched


class ReconcilerLock:
    """The reconciler's mutex: a redis-py ``Lock`` whose token only its holder can extend or
    release, so two beats (or one run outlasting its interval) never reconcile at once.

    A holder that dies leaves the lock to lapse after ``LOCK_INTERVALS`` intervals; a
    live one extends it (``keep``) while it works, and records the reconciler's heartbeat
    as it does.

    Parameters:
      interval: the reconciler's interval, in seconds.
    """

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self.client = broker_client()
        self.lock = self.client.lock(
            LOCK_KEY, timeout=LOCK_INTERVALS * interval, blocking=False, thread_local=False
        )
        self.kept_at = 0.0

    def acquire(self) -> bool:
        if not self.lock.acquire():
            return False
        self.kept_at = time.monotonic()
        return True

    def keep(self) -> None:
        """Extend the lock (at most twice an interval: each costs a broker round trip);
        ``LockError`` if it lapsed meanwhile, and another run may hold it."""
        if time.monotonic() - self.kept_at < self.interval / 2:
            return
        self.lock.reacquire()
        self.kept_at = time.monotonic()
        with transaction() as session:
            heartbeat.record(session, HOST)

    def release(self) -> None:
        with suppress(LockError):  # lapsed: nothing of ours to release
            self.lock.release()


@contextmanager
def _exclusive(interval: float) -> Iterator[Callable[[], None] | None]:
    """Yield the run's ``keep`` (extend the lock) when this run may go ahead; None when
    another run holds the lock, or one ended less than half an interval ago (a second beat
    started by mistake sends a second reconcile each interval: one of them is enough)."""
    lock = ReconcilerLock(interval)
    if not lock.acquire():
        # Beat is alive and another run works on (its lock lapses within LOCK_INTERVALS if
        # it hangs): a sign of life all the same, so a long run raises no false alarm.
        with transaction() as session:
            heartbeat.record(session, HOST)
        yield None
        return
    try:
        if lock.client.exists(RAN_KEY):
            yield None
            return
        with transaction() as session:
            heartbeat.record(session, HOST)
        yield lock.keep
        lock.client.set(RAN_KEY, HOST, px=max(1, int(interval * 1000 / 2)))
    finally:
        lock.release()


def _reclaim_expired_leases(expired_before: datetime, isolation: Isolation) -> int:
    """Running subtasks whose heartbeat stopped: their worker (or host) is gone."""
    with transaction() as session:
        expired = session.execute(
            select(Subtask.task_id, Subtask.index, Subtask.dispatch)
            .join(Task, Task.id == Subtask.task_id)
            .where(
                Subtask.state == SubtaskState.RUNNING,
                Subtask.heartbeat_at < expired_before,
                ~Task.error,
                Task.p_state.in_(list(EXECUTION_STEPS)),
            )
        ).all()
    reclaimed = 0
    for task_id, index, number in expired:
        log.warning("subtask %s/%s: no heartbeat since before %s", task_id, index, expired_before)
        done = isolation.task(
            task_id, lambda t=task_id, i=index, n=number: reclaim_lost(t, i, n, expired_before)
        )
        reclaimed += done is not None
    return reclaimed
