"""Stale results: a task whose inputs were stored again, with other bytes, after it
consumed them, and everything downstream of it.

The ledger says who consumed what: a task's consumers are the tasks whose last marshal
was given a version it stored. When a task stores (again, after a restart), each consumer
whose inputs from it are no longer what it now offers (a version changed, added or gone)
is marked stale, and so is every task downstream of a stale one; the instance is STALE,
not COMPLETED, while any remains, and an alert names them. A stale task runs again from
the beginning (``restart-from-beginning``), and with ``pipeline restart --downstream``
each waits for the tasks it consumes from to be current first (``rerun_ready``), so the
chain runs again in order.
"""

from __future__ import annotations

from collections.abc import Collection

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.domain import definitions
from pipeline.domain.lifecycle import Event, PState
from pipeline.domain.models import DatastoreFile, FileConsumption, PipelineInstance, Task
from pipeline.domain.states import SubtaskState
from pipeline.engine import alerts
from pipeline.engine.datastore_ledger import last_marshal
from pipeline.engine.locks import lock_rows
from pipeline.engine.task_state import (
    count_restart,
    mark_stale,
    move,
    refresh_instance_state,
    reset_subtasks,
    send_waiting,
)
from pipeline.messaging.outbox import Outbox

#: How many stale tasks an alert names before it says "and N more".
NAMED_IN_ALERT = 10
#: Task ids per ``IN (...)`` list.
CHUNK = 500


def consumed_from(session: Session, producers: Collection[int]) -> dict[int, set[int]]:
    """The tasks whose last marshal was given a version each of ``producers`` stored, in
    one query per 500 of them."""
    found: dict[int, set[int]] = {producer: set() for producer in producers}
    listed = sorted(producers)
    for start in range(0, len(listed), CHUNK):
        chunk = listed[start : start + CHUNK]
        for producer, consumer in session.execute(
            select(DatastoreFile.task_id, FileConsumption.task_id)
            .join(DatastoreFile, DatastoreFile.id == FileConsumption.file_id)
            .where(
                DatastoreFile.task_id.in_(chunk),
                FileConsumption.attempt == last_marshal(FileConsumption.task_id),
            )
            .distinct()
        ):
            if consumer != producer:
                found[producer].add(consumer)
    return found


def downstream_of_each(session: Session, task_ids: Collection[int]) -> dict[int, list[int]]:
    """Every task that consumed, directly or through others, what each of ``task_ids``
    stored, level by level for all of them at once: a restart of 1,000 failed tasks asks
    one query, not 1,000 (most have no consumer yet)."""
    below: dict[int, set[int]] = {task_id: set() for task_id in task_ids}
    frontier: dict[int, set[int]] = {task_id: {task_id} for task_id in task_ids}
    while any(frontier.values()):
        asked = set().union(*frontier.values())
        consumers_of = consumed_from(session, asked)
        for origin, tasks in frontier.items():
            reached = set().union(*(consumers_of[t] for t in tasks)) - below[origin] - {origin}
            below[origin] |= reached
            frontier[origin] = reached
    return {origin: sorted(found) for origin, found in below.items()}


def producers(session: Session, task_ids: Collection[int]) -> dict[int, set[int]]:
    """The tasks each of ``task_ids`` consumed versions of, at its last marshal."""
    found: dict[int, set[int]] = {task_id: set() for task_id in task_ids}
    if not task_ids:
        return found
    for consumer, producer in session.execute(
        select(FileConsumption.task_id, DatastoreFile.task_id)
        .join(DatastoreFile, DatastoreFile.id == FileConsumption.file_id)
        .where(
            FileConsumption.task_id.in_(list(task_ids)),
            FileConsumption.attempt == last_marshal(FileConsumption.task_id),
            DatastoreFile.task_id.is_not(None),
        )
        .distinct()
    ):
        found[consumer].add(producer)
    return found


def after_store(session: Session, instance: PipelineInstance, task: Task) -> list[int]:
    """Mark stale what ``task``'s store, just recorded, leaves stale (see the module
    docstring); the tasks marked, with an alert naming them. In the store's transaction."""
    direct = consumed_from(session, [task.id])[task.id]
    if not direct:
        return []
    offered = _stored_now(session, task)
    definition = definitions.parse(instance.definition)
    changed = []
    for consumer in lock_rows(session, Task, direct).values():
        node = definition.node(consumer.node)
        wanted = {
            (path, sha)
            for path, sha, kind, unit in offered
            if kind in node.inputs and unit == consumer.unit_of_work
        }
        if _consumed_from(session, consumer, task.id) != wanted:
            changed.append(consumer)
    if not changed:
        return []
    reason = f"task {task.id} ({task.node}) stored other versions of its inputs"
    marked = {t.id: t for t in changed}
    for consumer in changed:
        mark_stale(session, consumer, reason)
    below = sorted(set().union(*downstream_of_each(session, marked).values()) - set(marked))
    for later in lock_rows(session, Task, below).values():
        mark_stale(session, later, f"downstream of stale task {changed[0].id}")
        marked[later.id] = later
    refresh_instance_state(session, instance)
    named = ", ".join(str(i) for i in sorted(marked)[:NAMED_IN_ALERT])
    more = len(marked) - NAMED_IN_ALERT
    alerts.raise_alert(
        session,
        task,
        alerts.WARNING,
        f"instance {instance.id}: task{'s' if len(marked) > 1 else ''} {named}"
        + (f" and {more} more" if more > 0 else "")
        + f" stale: {reason}; 'pipeline restart {changed[0].id} --downstream' runs"
        " them again in order",
    )
    return sorted(marked)


def _stored_now(session: Session, task: Task) -> set[tuple[str, str, str, str]]:
    """(path, SHA-256, type, unit) of the versions ``task``'s latest store recorded."""
    latest = select(func.max(DatastoreFile.attempt)).where(
        DatastoreFile.task_id == task.id, ~DatastoreFile.placing
    )
    return {
        tuple(row)  # type: ignore[misc]
        for row in session.execute(
            select(
                DatastoreFile.path,
                DatastoreFile.sha256,
                DatastoreFile.data_file_type,
                DatastoreFile.unit_of_work,
            ).where(
                DatastoreFile.task_id == task.id,
                DatastoreFile.attempt == latest.scalar_subquery(),
                ~DatastoreFile.placing,
            )
        )
    }


def _consumed_from(session: Session, consumer: Task, producer: int) -> set[tuple[str, str]]:
    """(path, SHA-256) of the versions ``producer`` stored that ``consumer``'s last
    marshal was given."""
    return {
        (path, sha)
        for path, sha in session.execute(
            select(DatastoreFile.path, DatastoreFile.sha256)
            .join(FileConsumption, FileConsumption.file_id == DatastoreFile.id)
            .where(
                FileConsumption.task_id == consumer.id,
                FileConsumption.attempt == last_marshal(FileConsumption.task_id),
                DatastoreFile.task_id == producer,
            )
        )
    }


def waits_for(session: Session, task_ids: Collection[int]) -> dict[int, list[int]]:
    """The tasks each of ``task_ids`` consumes from that are not current yet (stale,
    running, failed, gone, or waiting to run again themselves): it runs after them."""
    return {
        task_id: sorted(
            i
            for i in above
            if (row := session.get(Task, i)) is None or row.rerun or not row.current
        )
        for task_id, above in producers(session, task_ids).items()
    }


def rerun_ready(
    session: Session, instance: PipelineInstance, messages: Outbox, host: str = ""
) -> list[int]:
    """Run again from the beginning each task of ``instance`` waiting to (``rerun``) whose
    producers are all current and none waiting; a waiting task that is not stale (what it
    consumes came back the same) stops waiting. In the caller's transaction."""
    waiting = list(
        session.scalars(
            select(Task.id).where(Task.instance_id == instance.id, Task.rerun).order_by(Task.id)
        )
    )
    if not waiting:
        return []
    blocking = waits_for(session, waiting)
    started = []
    for task in lock_rows(session, Task, waiting).values():
        if blocking[task.id]:
            continue
        if not task.stale:
            task.rerun = False
            continue
        if task.p_state != PState.COMPLETE or task.error:
            continue  # an operator moved it meanwhile: theirs to finish
        move(
            session,
            task,
            Event.RESTART_MARSHALING,
            "restart: restart-from-beginning, its inputs are current again (--downstream)",
            host,
            refresh=False,
        )
        reset_subtasks(session, task, frozenset(SubtaskState))
        count_restart(task, "restart-from-beginning")
        send_waiting(messages, task)
        started.append(task.id)
    if started:
        refresh_instance_state(session, instance)
    return started
