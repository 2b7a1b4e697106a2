"""Row locks: instance rows before task rows, each kind in id order, in every transaction
that takes them, so two workers never deadlock on them."""

from __future__ import annotations

from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.models import PipelineInstance, Task
from pipeline.errors import NotFound


def lock_rows(session: Session, model: Any, row_ids: Collection[int]) -> dict[int, Any]:
    """Lock these rows of ``model`` (instances or tasks) in one statement, in id order: the
    order every transaction takes rows of one kind in, so two never deadlock."""
    rows = session.scalars(
        select(model)
        .where(model.id.in_(sorted(row_ids)))
        .order_by(model.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {row.id: row for row in rows}


def _locked(session: Session, model: Any, row_id: int) -> Any:
    return lock_rows(session, model, [row_id]).get(row_id)


def lock_instance(session: Session, instance_id: int) -> PipelineInstance:
    instance = _locked(session, PipelineInstance, instance_id)
    if instance is None:
        raise NotFound(f"unknown instance {instance_id}")
    return instance


@contextmanager
def locked_instance(instance_id: int) -> Iterator[tuple[Session, PipelineInstance]]:
    """A transaction holding the lock of one instance row."""
    with transaction() as session:
        yield session, lock_instance(session, instance_id)


def lock_task(session: Session, task_id: int) -> tuple[PipelineInstance, Task]:
    """Lock a task and its instance (in that order of rows: instance, then task)."""
    instance_id = session.scalar(select(Task.instance_id).where(Task.id == task_id))
    if instance_id is None:
        raise NotFound(f"unknown task {task_id}")
    instance = lock_instance(session, instance_id)
    return instance, _locked(session, Task, task_id)


def lock_task_only(session: Session, task_id: int) -> Task:
    """Lock just the task row, for moves that cannot change the instance state."""
    task = _locked(session, Task, task_id)
    if task is None:
        raise NotFound(f"unknown task {task_id}")
    return task
