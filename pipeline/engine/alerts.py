"""Alerts: what an operator should know that no command reported (lost work dispatched
again or failed by the reconciler, a subtask that stored no output), raised in the
transaction that found it (operators list and acknowledge them: ``pipeline.operations``)."""

from __future__ import annotations

from sqlalchemy.orm import Session

from pipeline.domain.models import Alert, Task

WARNING = "warning"
ERROR = "error"


def raise_alert(session: Session, task: Task, severity: str, message: str) -> None:
    """Record an alert about ``task`` in the caller's transaction."""
    raise_alert_about(session, task.instance_id, task.id, severity, message)


def raise_alert_about(
    session: Session, instance_id: int, task_id: int, severity: str, message: str
) -> None:
    """Record an alert about a task known by its ids, in the caller's transaction."""
    session.add(Alert(severity=severity, instance_id=instance_id, task_id=task_id, message=message))
