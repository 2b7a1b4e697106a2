"""What the pipeline console (Flower's Pipeline pages) and ``/metrics`` read: one page of
rows at a time, and figures computed by the database.

Every read here is bounded: a page is ``LIMIT``/``OFFSET`` over an indexed order, and
anything summed over all rows (progress, a DAG's node states) is an aggregate query, so
an instance of 10,000 tasks or a task of 5,000 subtasks renders as fast as a small one
(``make bench`` measures the pages over a million subtask rows). ``/metrics``, over every
instance at once, sums counts the task rows keep as their subtasks change: a scrape reads
no subtask row and no history line.
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import ColumnElement, Text, case, cast, func, select
from sqlalchemy.orm import Session

from pipeline import jsoncodec
from pipeline.database import transaction
from pipeline.domain import definitions, parameters, run_times
from pipeline.domain.lifecycle import PState, counts_label
from pipeline.domain.limits import check_id, check_index
from pipeline.domain.models import (
    Alert,
    BatchJob,
    ParameterSet,
    PipelineInstance,
    Subtask,
    Task,
    TaskEvent,
    utcnow,
)
from pipeline.domain.states import STOPPED_STATES, InstanceState, SubtaskState
from pipeline.engine.taskdir import log_path
from pipeline.errors import InvalidInput, NotFound, shown
from pipeline.operations.views import (
    TASK_COLUMNS,
    InstanceProgress,
    SubtaskRow,
    TaskRow,
    alert_view,
    instance_view,
    iso_time,
    subtask_view,
    task_from_columns,
)

#: Rows a console page shows unless asked for fewer (and never more than ``MAX_PER_PAGE``).
PER_PAGE = 50
MAX_PER_PAGE = 500
#: Lines of a subtask's log the viewer shows by default (its tail); the rest on request.
LOG_TAIL_LINES = 200
#: Bytes of a log read from its end for the tail (a log can be huge).
#: The most of a log the console's "Full" view shows; the download has all of it.
LOG_FULL_BYTES = 2 << 20
LOG_TAIL_BYTES = 64 * 1024
#: Tasks of each node whose subtasks give the instance page's run-time figures (the
#: latest: the figures of a huge node stay cheap).
FIGURES_TASKS = 200


@dataclass(frozen=True)
class Page:
    """One page of rows and where it sits among all of them."""

    rows: list[Any]
    total: int
    page: int
    per_page: int

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.per_page))


def page_bounds(page: int, per_page: int) -> tuple[int, int]:
    """(page, per_page), checked: page from 1, per_page from 1 to ``MAX_PER_PAGE``."""
    if page < 1:
        raise InvalidInput(f"page {page} is out of range: pages start at 1")
    if not 1 <= per_page <= MAX_PER_PAGE:
        raise InvalidInput(f"per_page {per_page} is out of range: 1 to {MAX_PER_PAGE}")
    return page, per_page


def _seconds(start: Any, end: Any, session: Session) -> ColumnElement[float]:
    """``end - start`` in seconds, in the database's own arithmetic."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0


# -- instances -------------------------------------------------------------------------------


def instances_page(
    state: str | None = None,
    pipeline: str | None = None,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> dict[str, Any]:
    """Instances newest first, filtered by state and pipeline, with their progress (tasks
    done, subtasks completed / failed / total); ``running`` says whether any listed
    instance is still under way (the page refreshes itself then)."""
    page, per_page = page_bounds(page, per_page)
    if state and state not in InstanceState.__members__:
        raise InvalidInput(f"unknown instance state {state!r}")
    with transaction() as session:
        query = select(PipelineInstance)
        if state:
            query = query.where(PipelineInstance.state == state)
        if pipeline:
            query = query.where(PipelineInstance.pipeline == pipeline)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = list(
            session.scalars(
                query.order_by(PipelineInstance.id.desc())
                .limit(per_page)
                .offset((page - 1) * per_page)
            )
        )
        progress = _progress(session, [row.id for row in rows])
        listed = [
            InstanceProgress(
                **instance_view(row),
                **progress.get(row.id, _NO_PROGRESS),  # type: ignore[typeddict-item]
                duration=_duration(row.created_at, row.updated_at, row.state),
            )
            for row in rows
        ]
        pipelines = list(
            session.scalars(select(PipelineInstance.pipeline).distinct().order_by("pipeline"))
        )
    found = Page(listed, total, page, per_page)
    return {
        "page": found,
        "pipelines": pipelines,
        "states": list(InstanceState.__members__),
        "running": any(row["state"] not in STOPPED_STATES for row in listed),
    }


_NO_PROGRESS = {
    "tasks": 0,
    "tasks_done": 0,
    "total_subtasks": 0,
    "completed_subtasks": 0,
    "failed_subtasks": 0,
}


def _progress(session: Session, instance_ids: list[int]) -> dict[int, dict[str, int]]:
    """Each instance's task and subtask counts, in one aggregate query."""
    done = case((Task.p_state == PState.COMPLETE, 1), else_=0)
    rows = session.execute(
        select(
            Task.instance_id,
            func.count(Task.id),
            func.sum(done),
            func.sum(Task.total_subtasks),
            func.sum(Task.completed_subtasks),
            func.sum(Task.failed_subtasks),
        )
        .where(Task.instance_id.in_(instance_ids))
        .group_by(Task.instance_id)
    )
    return {
        row[0]: dict(zip(_NO_PROGRESS, (int(value or 0) for value in row[1:]), strict=True))
        for row in rows
    }


def _duration(start: datetime | None, end: datetime | None, state: str) -> float | None:
    """Seconds from start to the last change (to now while still under way)."""
    if start is None:
        return None
    finish = end if state in STOPPED_STATES and end else utcnow()
    return max(0.0, (finish - start).total_seconds())


def instance_overview(instance_id: int) -> dict[str, Any]:
    """An instance with its progress, its DAG (each node's task states and counts) and the
    run-time figures of each node."""
    check_id(instance_id, "instance")
    with transaction() as session:
        instance = session.get(PipelineInstance, instance_id)
        if instance is None:
            raise NotFound(f"unknown instance {instance_id}")
        described: dict[str, Any] = {
            **instance_view(instance),
            **_progress(session, [instance_id]).get(instance_id, _NO_PROGRESS),
        }
        described["duration"] = _duration(instance.created_at, instance.updated_at, instance.state)
        described["parameters"] = instance.parameters
        described["restartable_tasks"] = session.scalar(
            select(func.count(Task.id)).where(Task.instance_id == instance_id, Task.restartable)
        )
        described["running_tasks"] = session.scalar(
            select(func.count(Task.id)).where(Task.instance_id == instance_id, Task.running)
        )
        definition = definitions.parse(instance.definition)
        described["nodes"] = _node_states(session, instance_id, definition)
        described["figures"] = _figures(session, instance_id)
        return described


def _node_states(
    session: Session, instance_id: int, definition: definitions.Definition
) -> list[dict[str, Any]]:
    """Each node of the definition (in order) with its parents, task counts by state and
    subtask counts, and the colour that sums them up."""
    error = case((Task.error, 1), else_=0)
    complete = case((Task.done, 1), else_=0)
    rows = {
        row[0]: row[1:]
        for row in session.execute(
            select(
                Task.node,
                func.count(Task.id),
                func.sum(error),
                func.sum(complete),
                func.sum(Task.total_subtasks),
                func.sum(Task.completed_subtasks),
                func.sum(Task.failed_subtasks),
            )
            .where(Task.instance_id == instance_id)
            .group_by(Task.node)
        )
    }
    nodes = []
    for name in definition.order():
        tasks, errors, complete_, total, completed, failed = (
            int(value or 0) for value in rows.get(name, (0,) * 6)
        )
        if errors:
            colour = "error"
        elif tasks and complete_ == tasks:
            colour = "complete"
        elif tasks:
            colour = "running"
        else:
            colour = "pending"
        nodes.append(
            {
                "name": name,
                "after": sorted(definition.node(name).after),
                "tasks": tasks,
                "error_tasks": errors,
                "complete_tasks": complete_,
                "counts": counts_label(total, completed, failed),
                "colour": colour,
            }
        )
    return nodes


def _figures(session: Session, instance_id: int) -> list[dict[str, Any]]:
    """Per node: subtask run time and time waiting in the queue (median, p95, max, in
    seconds), from the finished subtasks of its latest ``FIGURES_TASKS`` tasks (a sample:
    the figures of a node of 10,000 tasks cost what those of a small one do).

    The wait is from the task's latest ``ALGORITHM_QUEUED`` transition to the subtask's
    start (Ziggy's performance report's queue time).
    """
    run = _seconds(Subtask.started_at, Subtask.finished_at, session)
    figures = []
    nodes = session.scalars(
        select(Task.node).where(Task.instance_id == instance_id).distinct().order_by(Task.node)
    )
    for node in list(nodes):
        sampled = list(
            session.scalars(
                select(Task.id)
                .where(Task.instance_id == instance_id, Task.node == node)
                .order_by(Task.id.desc())
                .limit(FIGURES_TASKS)
            )
        )
        queued = (
            select(TaskEvent.task_id, func.max(TaskEvent.at).label("at"))
            .where(TaskEvent.task_id.in_(sampled), TaskEvent.p_state == PState.ALGORITHM_QUEUED)
            .group_by(TaskEvent.task_id)
            .subquery()
        )
        wait = _seconds(queued.c.at, Subtask.started_at, session)
        rows = session.execute(
            select(run, wait)
            .outerjoin(queued, queued.c.task_id == Subtask.task_id)
            .where(
                Subtask.task_id.in_(sampled),
                Subtask.finished_at.is_not(None),
                Subtask.started_at.is_not(None),
            )
        ).all()
        runs = [float(r) for r, _ in rows if r is not None]
        waits = [max(0.0, float(w)) for _, w in rows if w is not None]
        figures.append(
            {
                "node": node,
                "tasks": len(sampled),
                "subtasks": len(runs),
                "run": _spread(runs),
                "wait": _spread(waits),
            }
        )
    return figures


def _spread(values: list[float]) -> dict[str, float] | None:
    """Median, 95th percentile and maximum; None without values."""
    if not values:
        return None
    ordered = sorted(values)
    p95 = ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]
    return {"median": statistics.median(ordered), "p95": p95, "max": ordered[-1]}


#: The filters of an instance's tasks by what they are doing, and what each keeps.
TASK_FILTERS = {
    "failed": Task.error,
    "running": Task.running,
    "complete": (Task.p_state == PState.COMPLETE) & ~Task.error,
}


def tasks_page(
    instance_id: int,
    page: int = 1,
    per_page: int = PER_PAGE,
    state: str | None = None,
    node: str | None = None,
) -> Page:
    """An instance's tasks in id order, one page, each with whether it can be restarted;
    only those ``failed``, ``running`` or ``complete`` (``state``) and of ``node``, when
    asked."""
    check_id(instance_id, "instance")
    page, per_page = page_bounds(page, per_page)
    if state is not None and state not in TASK_FILTERS:
        raise InvalidInput(f"unknown task state {shown(state)} (of {', '.join(TASK_FILTERS)})")
    wanted = [Task.instance_id == instance_id]
    if state is not None:
        wanted.append(TASK_FILTERS[state])
    if node is not None:
        wanted.append(Task.node == node)
    with transaction() as session:
        if session.get(PipelineInstance, instance_id) is None:
            raise NotFound(f"unknown instance {instance_id}")
        total = session.scalar(select(func.count(Task.id)).where(*wanted)) or 0
        columns = [Task.__table__.c[name] for name in TASK_COLUMNS]
        rows = session.execute(
            select(*columns, Task.restartable.label("restartable"), Task.created_at)
            .where(*wanted)
            .order_by(Task.id)
            .limit(per_page)
            .offset((page - 1) * per_page)
        )
        listed = [
            TaskRow(
                **task_from_columns(row[: len(TASK_COLUMNS)]),
                restartable=bool(row.restartable),
                duration=_seconds_between(row.created_at, row.updated_at),
            )
            for row in rows
        ]
        return Page(listed, total, page, per_page)


def _seconds_between(start: datetime | None, end: datetime | None) -> float | None:
    if start is None or end is None:
        return None
    return max(0.0, (end - start).total_seconds())


# -- a task ----------------------------------------------------------------------------------


def subtasks_page(
    task_id: int, state: str | None = None, page: int = 1, per_page: int = PER_PAGE
) -> Page:
    """A task's subtasks in index order, filtered by state, one page; each with its run
    time and the first line of its error."""
    check_id(task_id, "task")
    page, per_page = page_bounds(page, per_page)
    if state and state not in SubtaskState.__members__:
        raise InvalidInput(f"unknown subtask state {state!r}")
    with transaction() as session:
        if session.get(Task, task_id) is None:
            raise NotFound(f"unknown task {task_id}")
        query = select(Subtask).where(Subtask.task_id == task_id)
        if state:
            query = query.where(Subtask.state == state)
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(
            query.order_by(Subtask.index).limit(per_page).offset((page - 1) * per_page)
        )
        listed = [
            SubtaskRow(
                **subtask_view(row),
                duration=_seconds_between(row.started_at, row.finished_at),
                error_line=(row.error or "").splitlines()[0] if row.error else "",
                input_count=len(row.inputs or []),
            )
            for row in rows
        ]
        return Page(listed, total, page, per_page)


def subtask_state_counts(task_id: int) -> dict[str, int]:
    """How many of the task's subtasks are in each state."""
    with transaction() as session:
        rows = session.execute(
            select(Subtask.state, func.count(Subtask.id))
            .where(Subtask.task_id == check_id(task_id, "task"))
            .group_by(Subtask.state)
        )
        return {state: int(count) for state, count in rows}


def log_tail(path: str, lines: int = LOG_TAIL_LINES) -> tuple[str, bool]:
    """The last ``lines`` lines of the log at ``path`` (read from its end), and whether
    there was more before them."""
    found = Path(path)
    if not path or not found.is_file():
        return "", False
    size = found.stat().st_size
    with found.open("rb") as stream:
        stream.seek(max(0, size - LOG_TAIL_BYTES))
        text = stream.read().decode(errors="replace")
    kept = text.splitlines()
    cut = size > LOG_TAIL_BYTES or len(kept) > lines
    return "\n".join(kept[-lines:]), cut


def log_head(path: str, limit: int = LOG_FULL_BYTES) -> tuple[str, int]:
    """The first ``limit`` bytes of the log at ``path`` (a browser takes minutes to lay out
    50 MB), and the log's whole size."""
    found = Path(path)
    if not path or not found.is_file():
        return "", 0
    with found.open("rb") as stream:
        return stream.read(limit).decode(errors="replace"), found.stat().st_size


def subtask_log_path(task_id: int, index: int) -> str:
    """Where subtask ``index`` of the task writes its log (which may not exist yet)."""
    check_index(index, "subtask")
    with transaction() as session:
        task = session.get(Task, check_id(task_id, "task"))
        if task is None:
            raise NotFound(f"unknown task {task_id}")
        if (
            session.scalar(
                select(Subtask.id).where(Subtask.task_id == task_id, Subtask.index == index)
            )
            is None
        ):
            raise NotFound(f"task {task_id} has no subtask {index}")
        return str(log_path(Path(task.task_dir), index)) if task.task_dir else ""


# -- alerts ----------------------------------------------------------------------------------


def alerts_page(
    severity: str | None = None,
    include_acknowledged: bool = False,
    page: int = 1,
    per_page: int = PER_PAGE,
) -> Page:
    """Alerts newest first, filtered by severity and acknowledgement, one page."""
    page, per_page = page_bounds(page, per_page)
    with transaction() as session:
        query = select(Alert)
        if severity:
            query = query.where(Alert.severity == severity)
        if not include_acknowledged:
            query = query.where(Alert.acknowledged_at.is_(None))
        total = session.scalar(select(func.count()).select_from(query.subquery())) or 0
        rows = session.scalars(
            query.order_by(Alert.id.desc()).limit(per_page).offset((page - 1) * per_page)
        )
        return Page([alert_view(row) for row in rows], total, page, per_page)


# -- parameter sets --------------------------------------------------------------------------


def parameter_versions(name: str) -> list[dict[str, Any]]:
    """Every version of a parameter set, newest first (version, locked, created)."""
    with transaction() as session:
        rows = session.scalars(
            select(ParameterSet)
            .where(ParameterSet.name == name)
            .order_by(ParameterSet.version.desc())
        ).all()
        if not rows:
            raise NotFound(f"unknown parameter set {name!r}")
        return [
            {"version": row.version, "locked": row.locked, "created_at": iso_time(row.created_at)}
            for row in rows
        ]


def parameter_diff(name: str, older: int, newer: int) -> list[dict[str, Any]]:
    """What changed between two versions of a parameter set: each parameter whose value
    or type differs, with both (None where a version lacks it)."""
    with transaction() as session:
        before = parameters.get(session, name, older).values
        after = parameters.get(session, name, newer).values
    changed = []
    for key in sorted(set(before) | set(after)):
        old, new = before.get(key), after.get(key)
        if old != new:
            changed.append(
                {
                    "name": key,
                    "before": None if old is None else old["value"],
                    "after": None if new is None else new["value"],
                }
            )
    return changed


# -- metrics ---------------------------------------------------------------------------------


def metrics() -> dict[str, Any]:
    """The pipeline's figures for Prometheus, from counts kept on the task rows as their
    subtasks change (``engine.task_state``), summed by the database: a scrape reads no
    subtask row and no history line, so it costs what the tasks do, not their subtasks."""
    with transaction() as session:
        instances = dict(
            session.execute(
                select(PipelineInstance.state, func.count()).group_by(PipelineInstance.state)
            ).all()
        )
        tasks = _task_figures(session)
        restarts = _restarts(session)
        batch = _batch_figures(session)
    return {
        "instances": {state: int(instances.get(state, 0)) for state in InstanceState.__members__},
        **tasks,
        "restarts": restarts,
        **batch,
    }


#: The task columns counting its subtasks in each state but NEW (the rest of its total).
_SUBTASK_COUNTS = {
    SubtaskState.QUEUED: Task.queued_subtasks,
    SubtaskState.RUNNING: Task.running_subtasks,
    SubtaskState.COMPLETE: Task.completed_subtasks,
    SubtaskState.FAILED: Task.failed_subtasks,
}
#: The columns the task figures sum, in this order: the subtasks' total and the states
#: counted, redispatches, lost work, and the run-time histogram (runs, their time, buckets).
_SUMMED = (
    Task.total_subtasks,
    *_SUBTASK_COUNTS.values(),
    Task.redispatches,
    Task.lost_work_recoveries,
    Task.runs,
    Task.run_micros,
    *(Task.__table__.c[column] for column in run_times.BUCKET_COLUMNS),
)


def _task_figures(session: Session) -> dict[str, Any]:
    """Tasks by P-state and error flag, subtasks by state, redispatches, lost work, and
    each node's run-time histogram: one pass over the tasks, summed by node, P-state and
    error flag."""
    tasks: dict[tuple[PState, bool], int] = defaultdict(int)
    subtasks = dict.fromkeys(SubtaskState, 0)
    redispatched = lost = 0
    by_node: dict[str, list[int]] = {}
    states = len(_SUBTASK_COUNTS)
    for node, p_state, error, count, *sums in session.execute(
        select(Task.node, Task.p_state, Task.error, func.count(), *map(func.sum, _SUMMED)).group_by(
            Task.node, Task.p_state, Task.error
        )
    ):
        values = [int(value or 0) for value in sums]
        total, by_state = values[0], values[1 : 1 + states]
        again, recovered, runs = values[1 + states], values[2 + states], values[3 + states :]
        tasks[(p_state, bool(error))] += int(count)
        for state, found in zip(_SUBTASK_COUNTS, by_state, strict=True):
            subtasks[state] += found
        subtasks[SubtaskState.NEW] += total - sum(by_state)
        redispatched += again
        lost += recovered
        if runs[0]:
            summed = by_node.get(node, [0] * len(runs))
            by_node[node] = [a + b for a, b in zip(summed, runs, strict=True)]
    return {
        "tasks": dict(tasks),
        "subtasks": {str(state): count for state, count in subtasks.items() if count},
        "redispatched": redispatched,
        "lost_work_recoveries": lost,
        "durations": {
            node: run_times.histogram(runs, micros, within)
            for node, (runs, micros, *within) in by_node.items()
        },
    }


def _restarts(session: Session) -> dict[str, int]:
    """Task restarts by mode. Few tasks are restarted, and those restarted together alike:
    the database groups them, and each distinct count is read once."""
    restarts: dict[str, int] = defaultdict(int)
    for restarted, count in session.execute(
        select(cast(Task.restarts, Text), func.count())
        .where(Task.restarts.is_not(None))
        .group_by(cast(Task.restarts, Text))
    ):
        for mode, times in jsoncodec.loads(restarted).items():
            restarts[mode] += times * int(count)
    return dict(restarts)


def _batch_figures(session: Session) -> dict[str, Any]:
    """Job arrays by state, and by partition the node-hours and cost they took (measured
    from their elements' elapsed times) and were estimated to take."""
    jobs = dict(
        session.execute(select(BatchJob.state, func.count()).group_by(BatchJob.state)).all()
    )
    by_partition = {
        partition: {
            "node_hours": float(hours or 0.0),
            "cost": None if cost is None else float(cost),
            "estimated_node_hours": float(estimated or 0.0),
            "estimated_cost": None if estimated_cost is None else float(estimated_cost),
        }
        for partition, hours, cost, estimated, estimated_cost in session.execute(
            select(
                BatchJob.partition,
                func.sum(BatchJob.node_hours),
                func.sum(BatchJob.cost),
                func.sum(BatchJob.estimated_node_hours),
                func.sum(BatchJob.estimated_cost),
            ).group_by(BatchJob.partition)
        )
    }
    return {
        "batch_jobs": {state: int(count) for state, count in jobs.items()},
        "batch_partitions": by_partition,
    }
