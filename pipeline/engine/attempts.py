"""What ran each attempt of a task: the code (``code_version``) and the model versions its
subtasks were given, recorded once per attempt where it first runs; a record whose code
differs from the attempt before says so in the task's history."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.domain.definitions import Node
from pipeline.domain.models import PipelineInstance, Task, TaskAttempt
from pipeline.engine import code_version, model_registry
from pipeline.engine.task_state import note


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


def record(
    session: Session, instance: PipelineInstance, task: Task, node: Node, code: dict[str, Any]
) -> None:
    """Record the locked ``task``'s current attempt as run by ``code`` with its node's
    pinned models, once (a second record of the attempt is a no-op); a change of code
    since the attempt before is written in its history."""
    exists = select(TaskAttempt.id).where(
        TaskAttempt.task_id == task.id, TaskAttempt.attempt == task.attempt
    )
    if session.scalar(exists) is not None:
        return
    changed = changed_since(session, task.id, task.attempt - 1, code)
    try:
        with session.begin_nested():
            session.add(
                TaskAttempt(
                    task_id=task.id,
                    attempt=task.attempt,
                    code=code,
                    models=model_registry.node_pins(instance, node),
                )
            )
    except IntegrityError:  # recorded meanwhile by another worker
        return
    if changed:
        note(session, task, changed)


def changed_since(session: Session, task_id: int, up_to: int, code: dict[str, Any]) -> str:
    """How ``code`` differs from the code of the task's newest attempt up to ``up_to``
    ("" when it is the same, or none was recorded)."""
    before = latest(session, task_id, up_to)
    if before is None:
        return ""
    changed = code_version.differences(before.code, code)
    return f"{changed} (since attempt {before.attempt})" if changed else ""
