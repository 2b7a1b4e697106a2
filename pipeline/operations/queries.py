"""What an operator reads: instances, tasks, subtasks, logs, definitions, parameter sets
and alerts, each as its view (``pipeline.operations.views``): the JSON contract of the
CLI's ``--json`` and the HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sqlalchemy import func, select, union_all

from pipeline.database import transaction
from pipeline.domain import definitions, parameters
from pipeline.domain.limits import check_id, check_index
from pipeline.domain.models import (
    Alert,
    Heartbeat,
    PipelineInstance,
    Subtask,
    Task,
    utcnow,
)
from pipeline.domain.states import InstanceState, SubtaskState
from pipeline.engine.taskdir import log_path
from pipeline.errors import NotFound, Unreachable
from pipeline.operations import reading
from pipeline.operations.read_statements import SessionReader
from pipeline.operations.reading import Listing
from pipeline.operations.views import (
    AlertView,
    PipelineView,
    QueueView,
    TaskNeedingAttention,
    WorkerView,
    alert_view,
    instance_view,
    iso_time,
    parameter_set_view,
    task_view,
)
from pipeline.settings import get_settings

#: Instances the restart page lists at most, newest first.
ATTENTION_INSTANCES = 50
#: Tasks the restart page lists per instance, at most (the instance's page has them all).
ATTENTION_TASKS = 50
#: Failed subtasks whose errors the restart page shows per task, at most.
FAILED_ERRORS_SHOWN = 3


def list_instances() -> list[dict[str, Any]]:
    return instances_listing().rows


def instances_listing(limit: int | None = None) -> Listing:
    """The instances in id order: every one, or the newest ``limit``."""
    with transaction() as session:
        return reading.instances_listing(SessionReader(session), limit)


def get_instance(instance_id: int) -> dict[str, Any]:
    check_id(instance_id, "instance")
    with transaction() as session:
        instance = session.get(PipelineInstance, instance_id)
        if instance is None:
            raise NotFound(f"unknown instance {instance_id}")
        summary: dict[str, Any] = dict(instance_view(instance))
        summary["parameters"] = instance.parameters
        totals = session.execute(
            select(
                func.count(Task.id),
                func.coalesce(func.sum(Task.total_subtasks), 0),
                func.coalesce(func.sum(Task.completed_subtasks), 0),
                func.coalesce(func.sum(Task.failed_subtasks), 0),
            ).where(Task.instance_id == instance_id)
        ).one()
        summary["tasks"], summary["total_subtasks"] = totals[0], totals[1]
        summary["completed_subtasks"], summary["failed_subtasks"] = totals[2], totals[3]
        summary["nodes"] = {row.node: row.state for row in instance.nodes}
        return summary


def list_tasks(instance_id: int) -> list[dict[str, Any]]:
    return tasks_listing(instance_id).rows


def tasks_listing(instance_id: int, limit: int | None = None) -> Listing:
    """An instance's tasks in id order: every one, or the first ``limit``."""
    with transaction() as session:
        return reading.tasks_listing(SessionReader(session), instance_id, limit)


def _task(session: Any, task_id: int) -> Task:
    task = session.get(Task, check_id(task_id, "task"))
    if task is None:
        raise NotFound(f"unknown task {task_id}")
    return task


def get_task(task_id: int) -> dict[str, Any]:
    """A task's details with its history of transitions and its running subtasks."""
    with transaction() as session:
        return reading.get_task(SessionReader(session), task_id)


def tasks_needing_attention(limit: int = ATTENTION_INSTANCES) -> list[dict[str, Any]]:
    """Failed tasks (those a restart takes), grouped by instance, newest first; running
    tasks are halted from their instance's or their own page.

    Each task carries ``restartable`` and the errors of its first failed subtasks; an
    instance in TRANSITION_FAILED is listed even without failed tasks, since restarting it
    retries the transition. An instance lists its first ``ATTENTION_TASKS`` such tasks,
    and ``more`` says how many others it has (its own page shows them all, a page at a
    time). What Flower's restart page shows.
    """
    with transaction() as session:
        wanted = Task.restartable
        instances = list(
            session.scalars(
                select(PipelineInstance)
                .where(
                    PipelineInstance.id.in_(select(Task.instance_id).where(wanted))
                    | (PipelineInstance.state == InstanceState.TRANSITION_FAILED)
                )
                .order_by(PipelineInstance.id.desc())
                .limit(limit)
            )
        )
        ids = [i.id for i in instances]
        place = func.row_number().over(partition_by=Task.instance_id, order_by=Task.id)
        numbered = (
            select(Task.id, place.label("place"))
            .where(Task.instance_id.in_(ids), wanted)
            .subquery()
        )
        rows = session.execute(
            select(Task, Task.restartable.label("restartable"))
            .join(numbered, numbered.c.id == Task.id)
            .where(numbered.c.place <= ATTENTION_TASKS)
            .order_by(Task.id)
        )
        counts = dict(
            session.execute(
                select(Task.instance_id, func.count(Task.id))
                .where(Task.instance_id.in_(ids), wanted)
                .group_by(Task.instance_id)
            ).all()
        )
        groups = {i.id: {"instance": instance_view(i), "tasks": [], "more": 0} for i in instances}
        listed = list(rows)
        errors = _first_failed(session, [task.id for task, _ in listed])
        for task, restartable in listed:
            groups[task.instance_id]["tasks"].append(
                TaskNeedingAttention(
                    **task_view(task),
                    restartable=bool(restartable),
                    failed_subtask_errors=errors.get(task.id, []),
                )
            )
        for instance_id, group in groups.items():
            group["more"] = counts.get(instance_id, 0) - len(group["tasks"])
        return list(groups.values())


def _first_failed(session: Any, task_ids: list[int]) -> dict[int, list[dict[str, Any]]]:
    """The first ``FAILED_ERRORS_SHOWN`` failed subtasks of each task, with their errors,
    in one query (each task's part reads its failed subtasks by index, then stops)."""
    if not task_ids:
        return {}
    parts = [
        select(Subtask.task_id, Subtask.index, Subtask.error)
        .where(Subtask.task_id == task_id, Subtask.state == SubtaskState.FAILED)
        .order_by(Subtask.index)
        .limit(FAILED_ERRORS_SHOWN)
        .subquery()
        .select()
        for task_id in task_ids
    ]
    found: dict[int, list[dict[str, Any]]] = {}
    for task_id, index, error in session.execute(union_all(*parts)):
        found.setdefault(task_id, []).append({"index": index, "error": error})
    for errors in found.values():
        errors.sort(key=lambda failed: failed["index"])
    return found


def list_subtasks(task_id: int) -> list[dict[str, Any]]:
    return subtasks_listing(task_id).rows


def subtasks_listing(task_id: int, limit: int | None = None) -> Listing:
    """The task's subtasks in index order (every one, or the first ``limit``), each with
    the datastore paths its last marshal gave it."""
    with transaction() as session:
        return reading.subtasks_listing(SessionReader(session), task_id, limit)


def logs(task_id: int, index: int | None = None) -> list[dict[str, Any]]:
    """Each subtask's log (or just subtask ``index``'s): ``[{index, path, text}]``."""
    if index is not None:
        check_index(index, "subtask")
    with transaction() as session:
        task = _task(session, task_id)
        indexes = list(
            session.scalars(
                select(Subtask.index).where(Subtask.task_id == task_id).order_by(Subtask.index)
            )
        )
        task_dir = Path(task.task_dir) if task.task_dir else None
    if index is not None:
        if index not in indexes:
            raise NotFound(f"task {task_id} has no subtask {index}")
        indexes = [index]
    found = []
    for number in indexes:
        path = log_path(task_dir, number) if task_dir else None
        text = path.read_text(errors="replace") if path and path.exists() else ""
        found.append({"index": number, "path": str(path) if path else "", "text": text})
    return found


def list_definitions() -> list[PipelineView]:
    with transaction() as session:
        return [
            PipelineView(
                name=stored.name,
                version=stored.version,
                nodes=[node["name"] for node in stored.spec["nodes"]],
                description=stored.spec.get("description", ""),
                imported_at=iso_time(stored.imported_at),
            )
            for stored in definitions.list_latest(session)
        ]


def show_definition(name: str) -> dict[str, Any]:
    with transaction() as session:
        stored = definitions.get(session, name)
        return {
            "name": stored.name,
            "version": stored.version,
            "source": stored.source,
            **stored.spec,
        }


def list_parameter_sets() -> list[dict[str, Any]]:
    with transaction() as session:
        return [parameter_set_view(found) for found in parameters.list_latest(session)]


def show_parameter_set(name: str, version: int | None = None) -> dict[str, Any]:
    with transaction() as session:
        return parameter_set_view(parameters.get(session, name, version))


def list_alerts(include_acknowledged: bool = False) -> list[AlertView]:
    """Alerts oldest first: the unacknowledged ones, or every one."""
    with transaction() as session:
        query = select(Alert).order_by(Alert.id)
        if not include_acknowledged:
            query = query.where(Alert.acknowledged_at.is_(None))
        return [alert_view(alert) for alert in session.scalars(query)]


def list_workers() -> list[WorkerView]:
    """The workers known to the cluster: every one whose heartbeat the database holds (a
    worker that shut down cleanly is gone from it), with its host, last heartbeat and
    whether it is silent, and the queues and pool size of those that answer the broker."""
    from pipeline.messaging.publisher import publisher
    from pipeline.recovery.worker_liveness import PREFIX, silent_after

    settings = get_settings()
    cutoff = utcnow() - silent_after(settings)
    with transaction() as session:
        beats = session.scalars(
            select(Heartbeat).where(Heartbeat.name.startswith(PREFIX)).order_by(Heartbeat.name)
        ).all()
        known = {row.name.removeprefix(PREFIX): (row.host, row.at) for row in beats}
    try:
        answering: dict[str, dict[str, Any]] | None = publisher().workers()
    except Unreachable:
        answering = None
    listed = []
    for node in sorted(set(known) | set(answering or {})):
        host, at = known.get(node, ("", None))
        asked = (answering or {}).get(node)
        listed.append(
            WorkerView(
                name=node,
                host=host or node.partition("@")[2],
                state="silent" if at is not None and at < cutoff and not asked else "up",
                queues=asked["queues"] if asked else None,
                concurrency=asked["concurrency"] if asked else None,
                last_heartbeat=iso_time(at),
            )
        )
    return listed


def list_queues() -> list[QueueView]:
    """Every queue the definitions name or a task waits on: the messages waiting in it on
    the broker (None when the broker cannot be asked), the tasks waiting on it and how long
    the oldest has had no news. Restarted tasks behind 10,000 marshal messages look stuck
    otherwise."""
    from pipeline.domain.execution import DEFAULT_QUEUE
    from pipeline.messaging.publisher import publisher
    from pipeline.recovery.consumers import waiting_tasks

    waiting = waiting_tasks()
    with transaction() as session:
        named = {
            node["execution"]["queue"]
            for stored in definitions.list_latest(session)
            for node in stored.spec["nodes"]
        }
    queues = sorted(named | set(waiting) | {DEFAULT_QUEUE})
    try:
        depths: dict[str, int] | None = publisher().queue_depths(queues)
    except Unreachable:
        depths = None
    now = utcnow()
    listed = []
    for queue in queues:
        found = waiting.get(queue)
        oldest = found.oldest if found else None
        listed.append(
            QueueView(
                queue=queue,
                messages=depths[queue] if depths is not None else None,
                tasks_waiting=found.tasks if found else 0,
                oldest_wait_seconds=round((now - oldest).total_seconds(), 1) if oldest else None,
            )
        )
    return listed
