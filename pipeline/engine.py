"""What each stage of a task's chain does to the pipeline's state.

A task's chain is ``marshal -> execute (fan out subtasks) -> monitor -> store``. Each
function here is one stage, called by its Celery task with the task's attempt number:
it checks that the message still applies (the fence), does its work, records the
transition in one transaction, and only then sends the next stage's messages. A
duplicate, late or stale message changes nothing.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import bindparam, delete, insert, select, tuple_, update
from sqlalchemy.orm import Session

from config.settings import get_settings
from pipeline import datastore, dispatch
from pipeline import marshal as marshaling
from pipeline.alerts import ERROR, WARNING, raise_alert
from pipeline.algorithms import Outcome, SubtaskContext
from pipeline.database import transaction
from pipeline.definitions import Definition, parse
from pipeline.errors import PipelineError
from pipeline.leases import StepLease
from pipeline.models import PipelineInstance, Subtask, Task, utcnow
from pipeline.states import EXECUTION_STEPS, PState, SubtaskState
from pipeline.tasks import (
    fail,
    is_current,
    lock_task,
    lock_task_only,
    record,
    refresh_instance_state,
)
from pipeline.transition import advance_within, send_marshals

log = logging.getLogger(__name__)
#: Parsed definitions a worker process keeps, by database and instance (an instance's
#: definition is frozen, and a worker runs many subtasks of the same few instances).
DEFINITION_CACHE_SIZE = 16
_definitions: dict[tuple[str, int], Definition] = {}


def task_directory(instance_id: int, task: Task) -> Path:
    """A directory per attempt that marshals: a late marshal of an old attempt (halted, or
    superseded by a restart) can never clear the directory a newer attempt is using."""
    return get_settings().tasks_dir / f"{instance_id}-{task.id}-{task.node}-attempt{task.attempt}"


def node_parameters(
    instance: PipelineInstance, definition: Definition, node: str
) -> dict[str, Any]:
    """The frozen values of every parameter set ``node`` uses, as one flat mapping."""
    values: dict[str, Any] = {}
    for set_name in definition.node(node).parameter_sets:
        values.update(instance.parameters[set_name]["values"])
    return values


# -- marshal ---------------------------------------------------------------------------------


def marshal(task_id: int, attempt: int, host: str = "") -> None:
    """Gather the task's inputs into subtask directories and create its subtasks."""
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if not is_current(
            task, attempt, PState.INITIALIZING
        ):  # claims the step: one marshal per attempt
            return
        record(session, task, PState.MARSHALING, host=host)
        refresh_instance_state(session, instance)
        definition = parse(instance.definition)
        node, unit, task_dir = task.node, task.unit_of_work, task_directory(instance.id, task)
    try:
        root = datastore.require(get_settings().datastore)
        with StepLease(task_id, attempt, PState.MARSHALING):
            groups = marshaling.marshal(root, definition, definition.node(node), unit, task_dir)
    except (OSError, PipelineError) as exc:
        _fail_step(task_id, attempt, PState.MARSHALING, f"marshaling failed: {exc}", host)
        return
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, PState.MARSHALING):
            return
        create_subtasks(session, task.id, groups)
        task.task_dir = str(task_dir)
        task.total_subtasks, task.completed_subtasks, task.failed_subtasks = len(groups), 0, 0
        record(session, task, PState.ALGORITHM_SUBMITTING, f"{len(groups)} subtasks", host)
        execution = dict(task.execution)
    dispatch.send(dispatch.EXECUTE, [task_id, attempt], execution)


def create_subtasks(session: Session, task_id: int, groups: list[list[str]]) -> None:
    """Replace the task's subtask rows with one per group of input names, in bulk.

    One DELETE, then PostgreSQL's COPY (or Core multi-row INSERTs elsewhere) rather than
    an ORM object per row: a task of 100,000 subtasks gets its rows in about a second.
    """
    session.execute(delete(Subtask).where(Subtask.task_id == task_id))
    if not groups:
        return
    connection = session.connection()
    if connection.dialect.name == "postgresql":
        _copy_subtasks(connection.connection.driver_connection, task_id, groups)
        return
    session.execute(
        insert(Subtask.__table__),
        [{"task_id": task_id, "index": i, "inputs": names} for i, names in enumerate(groups)],
    )


#: The columns COPY fills: every column without a NULL default.
_COPY_SUBTASKS = (
    'COPY subtasks (task_id, "index", state, attempts, dispatch, error, inputs, worker_host,'
    " message_id) FROM STDIN"
)


def _copy_subtasks(driver_connection: Any, task_id: int, groups: list[list[str]]) -> None:
    """New subtask rows through psycopg's COPY, in the session's own transaction."""
    with driver_connection.cursor() as cursor, cursor.copy(_COPY_SUBTASKS) as copy:
        for index, names in enumerate(groups):
            row = (task_id, index, SubtaskState.NEW.value, 0, 0, "", json.dumps(names), "", "")
            copy.write_row(row)


def assign_messages(
    session: Session,
    task_id: int,
    attempt: int,
    queued: list[tuple[int, int]],
    execution: dict[str, Any],
    total: int,
) -> list[dispatch.Message]:
    """Group queued (index, dispatch number) pairs into messages and record on each subtask
    the id of the message that carries it, which halt revokes and the in-flight scan seeks.

    ``total`` (the task's subtask count) sets the batch size when the settings give none,
    so a task's lost subtasks are sent again in batches like those that first carried them.
    """
    size = dispatch.batch_size(execution, total)
    messages = dispatch.plan_messages(task_id, attempt, queued, size)
    if not messages:  # an executemany of no rows would run once, with no values
        return messages
    table = Subtask.__table__
    session.execute(
        update(table)
        .where(table.c.task_id == task_id, table.c.index == bindparam("row_index"))
        .values(message_id=bindparam("row_message")),
        [
            {"row_index": index, "row_message": message_id}
            for message_id, pairs in messages
            for index, _ in pairs
        ],
    )
    return messages


def marshal_again(task_id: int, attempt: int, lease_expired_before: datetime) -> bool:
    """A marshal whose lease expired lost its worker mid-step: marshal under a new attempt.

    The new attempt gets a task directory of its own, so a marshal that was only slow,
    not dead, can neither clear the new one's files nor record its subtasks (its attempt
    no longer matches). Returns whether the task was marshaled again.
    """
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if not (
            is_current(task, attempt, PState.MARSHALING) and task.updated_at < lease_expired_before
        ):
            return False
        task.attempt += 1
        message = f"marshaling lost on {task.worker_host or '?'}, marshaling again"
        record(session, task, PState.INITIALIZING, f"{message} (monitor)")
        raise_alert(session, task, WARNING, message)
        refresh_instance_state(session, instance)
        attempt, execution = task.attempt, dict(task.execution)
    dispatch.send(dispatch.MARSHAL, [task_id, attempt], execution)
    return True


def _fail_step(task_id: int, attempt: int, step: PState, message: str, host: str) -> None:
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if is_current(task, attempt, step):
            fail(session, instance, task, message, host)


# -- execute ---------------------------------------------------------------------------------


def execute(task_id: int, attempt: int, host: str = "") -> None:
    """Fan out the subtasks that have not run (NEW) on the node's queue: one message each,
    or batches of them for a big task (see ``dispatch.batch_size``)."""
    with transaction() as session:
        task = lock_task_only(session, task_id)
        if not is_current(task, attempt, PState.ALGORITHM_SUBMITTING):
            return
        session.execute(
            update(Subtask)
            .where(Subtask.task_id == task_id, Subtask.state == SubtaskState.NEW)
            .values(state=SubtaskState.QUEUED, dispatch=Subtask.dispatch + 1)
        )
        queued = session.execute(
            select(Subtask.index, Subtask.dispatch)
            .where(Subtask.task_id == task_id, Subtask.state == SubtaskState.QUEUED)
            .order_by(Subtask.index)
        ).all()
        execution = dict(task.execution)
        if queued:
            messages = assign_messages(
                session, task_id, attempt, list(queued), execution, task.total_subtasks
            )
            note = f"{len(queued)} subtasks queued in {len(messages)} messages"
            record(session, task, PState.ALGORITHM_QUEUED, note, host)
        else:
            record(session, task, PState.ALGORITHM_COMPLETE, "no subtasks left to run", host)
    if queued:
        dispatch.send_subtasks(task_id, attempt, messages, execution)
    else:
        dispatch.send(dispatch.MONITOR, [task_id, attempt], execution)


# -- one subtask -----------------------------------------------------------------------------


@dataclass(frozen=True)
class SubtaskRun:
    """Everything a worker needs to run one subtask, read in the transaction that claimed it."""

    algorithm: str | dict[str, Any]
    context: SubtaskContext
    timeout: float
    #: The dispatch number it was claimed under, which its outcome must carry.
    number: int


def begin_subtask(
    task_id: int, attempt: int, index: int, number: int, host: str = ""
) -> SubtaskRun | None:
    """Claim one queued subtask; None when the message is stale or a duplicate."""
    runs = begin_subtasks(task_id, attempt, [(index, number)], host)
    return runs[0] if runs else None


def begin_subtasks(
    task_id: int, attempt: int, pairs: list[tuple[int, int]], host: str = ""
) -> list[SubtaskRun]:
    """Claim the queued subtasks of one message, given as (index, dispatch number) pairs,
    in one transaction; those whose pair is stale or a duplicate are left out.

    A batch's subtasks are all claimed (RUNNING, with a lease) at once and run one after
    another; the worker renews the lease of every claimed subtask that has not finished,
    so a batch that outlives the lease is not reclaimed while its worker lives, and the
    unfinished rest of a dead worker's batch lapses and is reclaimed subtask by subtask.
    """
    with transaction() as session:
        task = lock_task_only(session, task_id)
        if not is_current(task, attempt, *EXECUTION_STEPS):
            return []
        wanted = dict(pairs)
        rows = session.scalars(
            select(Subtask)
            .where(Subtask.task_id == task_id, Subtask.index.in_(wanted))
            .order_by(Subtask.index)
        ).all()
        claimed = [
            s for s in rows if (s.dispatch, s.state) == (wanted[s.index], SubtaskState.QUEUED)
        ]
        if len(claimed) < len(pairs):
            log.info(
                "task %s: %d subtask messages stale or duplicate",
                task_id,
                len(pairs) - len(claimed),
            )
        if not claimed:
            return []
        now, pid = utcnow(), os.getpid()
        for subtask in claimed:
            subtask.state = SubtaskState.RUNNING
            subtask.attempts += 1
            subtask.worker_host, subtask.worker_pid = host, pid
            subtask.started_at, subtask.heartbeat_at, subtask.finished_at = now, now, None
            subtask.error = ""
        if task.p_state == PState.ALGORITHM_QUEUED:
            record(session, task, PState.ALGORITHM_EXECUTING, host=host)
        instance = session.get(PipelineInstance, task.instance_id)
        definition = _definition(instance)
        algorithm = definition.node(task.node).model_dump(mode="json")["algorithm"]
        parameters = node_parameters(instance, definition, task.node)
        timeout = float(task.execution.get("subtask_timeout", 3600))
        runs = []
        for subtask in claimed:
            directory = marshaling.subtask_dir(Path(task.task_dir), subtask.index)
            context = SubtaskContext(
                directory=directory,
                inputs=[directory / name for name in subtask.inputs],
                parameters=parameters,
                index=subtask.index,
                unit_of_work=task.unit_of_work,
                node=task.node,
            )
            runs.append(SubtaskRun(algorithm, context, timeout, subtask.dispatch))
        return runs


def _definition(instance: PipelineInstance) -> Definition:
    """The instance's parsed definition, parsed once per worker process (see the cache)."""
    key = (get_settings().db_url, instance.id)
    if key not in _definitions:
        if len(_definitions) >= DEFINITION_CACHE_SIZE:
            del _definitions[next(iter(_definitions))]
        _definitions[key] = parse(instance.definition)
    return _definitions[key]


def finish_subtask(
    task_id: int, attempt: int, index: int, number: int, outcome: Outcome, host: str = ""
) -> bool:
    """Record one subtask's outcome (see ``finish_subtasks``)."""
    return finish_subtasks(task_id, attempt, [(index, number, outcome)], host)


def finish_subtasks(
    task_id: int, attempt: int, outcomes: list[tuple[int, int, Outcome]], host: str = ""
) -> bool:
    """Record outcomes, given as (index, dispatch number, outcome), with the task's counts
    in one transaction; the last outcome of the task hands on to monitor.

    Each subtask's outcome is still its own (a failed subtask of a batch is failed alone,
    and a resubmit reruns only it); only the transaction is shared. Returns whether the
    task is still at ``attempt``: when it is not, the rest of a batch need not run.
    """
    with transaction() as session:
        task = lock_task_only(session, task_id)
        if task.attempt != attempt:
            log.info(
                "task %s: ignoring %d outcomes from attempt %s", task_id, len(outcomes), attempt
            )
            return False
        by_index = {index: (number, outcome) for index, number, outcome in outcomes}
        rows = session.scalars(
            select(Subtask).where(Subtask.task_id == task_id, Subtask.index.in_(by_index))
        ).all()
        now, recorded = utcnow(), 0
        for subtask in rows:
            number, outcome = by_index[subtask.index]
            if subtask.dispatch != number or subtask.state != SubtaskState.RUNNING:
                log.info(
                    "subtask %s/%s: outcome of run %s is stale", task_id, subtask.index, number
                )
                continue
            recorded += 1
            subtask.finished_at = now
            if outcome.ok:
                subtask.state = SubtaskState.COMPLETE
                task.completed_subtasks += 1
            else:
                subtask.state, subtask.error = SubtaskState.FAILED, outcome.error
                task.failed_subtasks += 1
        if not recorded:
            return True
        task.updated_at = now
        done = task.completed_subtasks + task.failed_subtasks >= task.total_subtasks
        if not (done and not task.error and task.p_state in EXECUTION_STEPS):
            return True
        record(
            session,
            task,
            PState.ALGORITHM_COMPLETE,
            f"{task.completed_subtasks} completed, {task.failed_subtasks} failed",
            host,
        )
        execution = dict(task.execution)
    dispatch.send(dispatch.MONITOR, [task_id, attempt], execution)
    return True


def heartbeat(task_id: int, pairs: list[tuple[int, int]]) -> None:
    """Renew the leases of the subtasks this worker claimed with one message, given as
    (index, dispatch number) pairs, that are still running (one statement, no task lock)."""
    with transaction() as session:
        session.execute(
            update(Subtask)
            .where(
                Subtask.task_id == task_id,
                tuple_(Subtask.index, Subtask.dispatch).in_(pairs),
                Subtask.state == SubtaskState.RUNNING,
            )
            .values(heartbeat_at=utcnow())
        )


def reclaim_lost(task_id: int, index: int, number: int, lease_expired_before: Any) -> str:
    """A running subtask whose lease expired lost its worker: run it again, or fail it.

    It is dispatched again while its automatic retries last (``lost_subtask_retries``),
    under a new dispatch number so a late outcome from the lost run is ignored; then it
    fails with reason 'worker lost'. Returns what was done.
    """
    with transaction() as session:
        task = lock_task_only(session, task_id)
        subtask = _subtask(session, task_id, index)
        lost = (
            not task.error
            and task.p_state in EXECUTION_STEPS
            and subtask.state == SubtaskState.RUNNING
            and subtask.dispatch == number
            and subtask.heartbeat_at is not None
            and subtask.heartbeat_at < lease_expired_before
        )
        if not lost:
            return "alive"
        attempt, execution = task.attempt, dict(task.execution)
        if subtask.attempts <= get_settings().lost_subtask_retries:
            subtask.state, subtask.dispatch = SubtaskState.QUEUED, subtask.dispatch + 1
            session.flush()
            resend = assign_messages(
                session, task_id, attempt, [(index, subtask.dispatch)], execution, 1
            )
            record(
                session,
                task,
                PState(task.p_state),
                f"subtask {index}: worker lost, dispatched again",
            )
            raise_alert(
                session,
                task,
                WARNING,
                f"subtask {index}: worker {subtask.worker_host or '?'} lost, dispatched again",
            )
        else:
            resend = None
            raise_alert(
                session,
                task,
                ERROR,
                f"subtask {index}: worker lost {subtask.attempts} times, failed",
            )
    if resend:
        dispatch.send_subtasks(task_id, attempt, resend, execution)
        return "redispatched"
    finish_subtask(task_id, attempt, index, number, Outcome(False, "worker lost"))
    return "failed"


def _subtask(session: Any, task_id: int, index: int) -> Subtask:
    return session.scalars(
        select(Subtask).where(Subtask.task_id == task_id, Subtask.index == index)
    ).one()


# -- monitor ---------------------------------------------------------------------------------


def monitor(task_id: int, attempt: int, host: str = "") -> None:
    """All subtasks have ended: store, resubmit automatically, or set the error flag."""
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, PState.ALGORITHM_COMPLETE):
            return
        execution = dict(task.execution)
        allowed = int(execution.get("max_failed_subtasks", 0))
        if task.failed_subtasks <= allowed:
            record(session, task, PState.STORING, host=host)
            next_stage = dispatch.STORE
        elif task.auto_resubmits < int(execution.get("max_auto_resubmits", 0)):
            resubmit_failed(session, task, f"automatic resubmit {task.auto_resubmits + 1}", host)
            task.auto_resubmits += 1
            attempt, next_stage = task.attempt, dispatch.EXECUTE
        else:
            message = (
                f"{task.failed_subtasks} of {task.total_subtasks} subtasks failed"
                f" (max_failed_subtasks = {allowed})"
            )
            fail(session, instance, task, message, host)
            return
    dispatch.send(next_stage, [task_id, attempt], execution)


def resubmit_failed(session: Any, task: Task, message: str, host: str = "") -> None:
    """Ready failed and never-run subtasks to run again under a new attempt; leave the rest."""
    session.execute(
        update(Subtask)
        .where(Subtask.task_id == task.id, Subtask.state != SubtaskState.COMPLETE)
        .values(state=SubtaskState.NEW)
        # No subtask objects are loaded alongside: matching them costs more than the update.
        .execution_options(synchronize_session=False)
    )
    task.failed_subtasks = 0
    task.error, task.error_message = False, ""
    task.attempt += 1
    record(session, task, PState.ALGORITHM_SUBMITTING, message, host)


# -- store -----------------------------------------------------------------------------------


def store(task_id: int, attempt: int, host: str = "") -> None:
    """Copy the outputs of the successful subtasks into the datastore; the task is COMPLETE."""
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, PState.STORING):
            return
        definition = parse(instance.definition)
        node = definition.node(task.node)
        unit, task_dir = task.unit_of_work, Path(task.task_dir)
        succeeded = session.execute(
            select(Subtask.index, Subtask.inputs).where(
                Subtask.task_id == task_id, Subtask.state == SubtaskState.COMPLETE
            )
        ).all()
    try:
        root = datastore.require(get_settings().datastore)
        stored = 0
        with StepLease(task_id, attempt, PState.STORING):
            for index, inputs in succeeded:
                directory = marshaling.subtask_dir(task_dir, index)
                for name in node.outputs:
                    kind = definition.data_file_types[name]
                    for output in sorted(directory.glob(kind.pattern)):
                        if output.name in inputs:
                            continue
                        datastore.store_file(output, root / kind.directory(unit) / output.name)
                        stored += 1
    except (OSError, PipelineError) as exc:
        _fail_step(task_id, attempt, PState.STORING, f"storing failed: {exc}", host)
        return
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, PState.STORING):
            return
        record(session, task, PState.COMPLETE, f"stored {stored} files", host)
        refresh_instance_state(session, instance)
        plan = advance_within(session, instance)
    send_marshals(plan)
