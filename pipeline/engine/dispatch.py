"""Dispatching subtasks: which are out on the broker or a worker."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.domain.models import Subtask
from pipeline.domain.states import IN_FLIGHT


def in_flight_subtasks(session: Session, task_id: int) -> list[Subtask]:
    """Subtasks the database believes are on the broker or on a worker."""
    return list(
        session.scalars(
            select(Subtask).where(Subtask.task_id == task_id, Subtask.state.in_(list(IN_FLIGHT)))
        )
    )
