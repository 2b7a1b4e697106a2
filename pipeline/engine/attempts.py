"""What ran each attempt of a task: the code (``code_version``) and the model versions its
subtasks were given, recorded once per attempt where it first runs; a record whose code
differs from the attempt before says so in the task's history."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.database import one_of
from pipeline.domain.definitions import Node
from pipeline.domain.models import PipelineInstance, Task, TaskAttempt
from pipeline.engine import code_version, model_registry
from pipeline.engine.task_state import note

#: Tasks whose recorded attempts one query asks for.
IDS_PER_QUERY = 500


def code_of(node: Node, python_path: list[str] | None, fresh: bool = False) -> dict[str, Any]:
    """The code version of the node's algorithm, as this process finds it (``fresh``: now)."""
    algorithm = node.model_dump(mode="json")["algorithm"]
    return code_version.of(algorithm, python_path or [], fresh)


def latest(session: Session, task_id: int, up_to: int | None = None) -> TaskAttempt | None:
    """The newest attempt recorded for the task, up to attempt ``up_to``: for a file, the
    attempt that produced it or, when that attempt ran no subtask (resume-current-step's
    store), the one before."""
    query = select(TaskAttempt).where(TaskAttempt.task_id == task_id)
    if up_to is not None:
        query = query.where(TaskAttempt.attempt <= up_to)
    return session.scalars(query.order_by(TaskAttempt.attempt.desc()).limit(1)).first()


#: What ``record_all`` records of one task: the locked task, its instance and node, the
#: code that runs its current attempt, and how that code differs from the attempt before
#: (None: not known yet).
Running = tuple[PipelineInstance, Task, Node, dict[str, Any], str | None]


def record(
    session: Session, instance: PipelineInstance, task: Task, node: Node, code: dict[str, Any]
) -> None:
    """Record the locked ``task``'s current attempt as run by ``code`` (``record_all``),
    where another worker may record it at the same time: the first record stands."""
    try:
        with session.begin_nested():
            record_all(session, [(instance, task, node, code, None)])
    except IntegrityError:  # recorded meanwhile by another worker
        return


def record_all(session: Session, running: list[Running]) -> None:
    """Record each locked task's current attempt as run by its code with its node's
    pinned models, once (an attempt recorded already is left as it is); a change of code
    since the attempt before is written in the task's history. In bulk: a restart of
    1,000 tasks records their attempts with one query and one insert."""
    tasks = [task for _, task, *_ in running]
    recorded: set[tuple[int, int]] = set()
    for start in range(0, len(tasks), IDS_PER_QUERY):
        ids = [task.id for task in tasks[start : start + IDS_PER_QUERY]]
        query = select(TaskAttempt.task_id, TaskAttempt.attempt)
        found = session.execute(query.where(one_of(session, TaskAttempt.task_id, ids)))
        recorded.update((task_id, attempt) for task_id, attempt in found)
    rows = []
    for instance, task, node, code, changed in running:
        if (task.id, task.attempt) in recorded:
            continue
        recorded.add((task.id, task.attempt))
        if changed is None:
            changed = changed_since(session, task.id, task.attempt - 1, code)
        models = model_registry.node_pins(instance, node)
        rows.append({"task_id": task.id, "attempt": task.attempt, "code": code, "models": models})
        if changed:
            note(session, task, changed)
    if rows:
        session.execute(insert(TaskAttempt), rows)


def newest_of_each(session: Session, up_to: Mapping[int, int]) -> dict[int, TaskAttempt]:
    """The newest attempt recorded for each task, up to its attempt in ``up_to`` (task id:
    attempt), with one query for many tasks (``latest`` of each)."""
    newest: dict[int, TaskAttempt] = {}
    ids = list(up_to)
    for start in range(0, len(ids), IDS_PER_QUERY):
        query = select(TaskAttempt).where(
            one_of(session, TaskAttempt.task_id, ids[start : start + IDS_PER_QUERY])
        )
        for row in session.scalars(query):
            if row.attempt > up_to[row.task_id]:
                continue
            if row.task_id not in newest or row.attempt > newest[row.task_id].attempt:
                newest[row.task_id] = row
    return newest


def changed_since(session: Session, task_id: int, up_to: int, code: dict[str, Any]) -> str:
    """How ``code`` differs from the code of the task's newest attempt up to ``up_to``
    ("" when it is the same, or none was recorded)."""
    return difference(latest(session, task_id, up_to), code)


def difference(before: TaskAttempt | None, code: dict[str, Any]) -> str:
    """How ``code`` differs from the code of the attempt ``before`` ("" when it is the
    same, or there is none)."""
    if before is None:
        return ""
    changed = code_version.differences(before.code, code)
    return f"{changed} (since attempt {before.attempt})" if changed else ""
