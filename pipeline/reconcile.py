"""Reconciliation run by Celery beat: find tasks waiting on a message that never came.

A stage's next message is sent after its transaction commits; a process that dies in
between, or a broker that loses its queue, leaves a task waiting in a step that nothing
will move. A task that has sat in such a step longer than ``stale_after`` seconds gets
its message again. Every stage is fenced, so a message that was only slow, not lost,
makes the re-sent one a no-op.
"""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from config.settings import get_settings
from pipeline import dispatch
from pipeline.database import transaction
from pipeline.models import PipelineInstance, Task, utcnow
from pipeline.states import STOPPED_STATES, PState
from pipeline.transition import advance

#: The stage message a task waiting in each step needs.
WAITING_STEPS = {
    PState.INITIALIZING: dispatch.MARSHAL,
    PState.ALGORITHM_SUBMITTING: dispatch.EXECUTE,
    PState.ALGORITHM_COMPLETE: dispatch.MONITOR,
    PState.STORING: dispatch.STORE,  # storing is idempotent: a second store is harmless
}


def reconcile() -> dict[str, int]:
    """Re-send lost stage messages and retry lost node transitions; returns what it did."""
    cutoff = utcnow() - timedelta(seconds=get_settings().stale_after)
    with transaction() as session:
        waiting = session.execute(
            select(Task.id, Task.attempt, Task.p_state, Task.execution).where(
                Task.p_state.in_(list(WAITING_STEPS)), ~Task.error, Task.updated_at < cutoff
            )
        ).all()
        # Touched, so a task that was only slow is not sent the message again every beat.
        session.execute(
            update(Task).where(Task.id.in_([row.id for row in waiting])).values(updated_at=utcnow())
        )
        active_instances = list(
            session.scalars(
                select(PipelineInstance.id).where(
                    PipelineInstance.state.not_in(list(STOPPED_STATES)),
                    PipelineInstance.updated_at < cutoff,
                )
            )
        )
    for task_id, attempt, p_state, execution in waiting:
        dispatch.send(WAITING_STEPS[PState(p_state)], [task_id, attempt], execution)
    for instance_id in active_instances:
        advance(instance_id)
    return {"resent": len(waiting), "instances_checked": len(active_instances)}
