"""Alerts: what an operator should know that no command reported (lost work dispatched
again or failed by the monitor, a subtask that stored no output), raised in the transaction
that found it, listed and acknowledged by operators."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.limits import check_id
from pipeline.domain.models import Alert, Task, utcnow
from pipeline.errors import NotFound, Refused

WARNING = "warning"
ERROR = "error"


def raise_alert(session: Session, task: Task, severity: str, message: str) -> None:
    """Record an alert about ``task`` in the caller's transaction."""
    session.add(
        Alert(severity=severity, instance_id=task.instance_id, task_id=task.id, message=message)
    )


def list_alerts(include_acknowledged: bool = False) -> list[dict[str, Any]]:
    with transaction() as session:
        query = select(Alert).order_by(Alert.id)
        if not include_acknowledged:
            query = query.where(Alert.acknowledged_at.is_(None))
        return [alert_dict(alert) for alert in session.scalars(query)]


def alert_dict(alert: Alert) -> dict[str, Any]:
    return {
        "id": alert.id,
        "at": alert.at.isoformat(timespec="seconds"),
        "severity": alert.severity,
        "instance_id": alert.instance_id,
        "task_id": alert.task_id,
        "message": alert.message,
        "acknowledged": alert.acknowledged_at is not None,
    }


def acknowledge(alert_id: int) -> dict[str, Any]:
    """Mark the alert seen (it leaves the default list); the acknowledged alert."""
    with transaction() as session:
        alert = session.get(Alert, check_id(alert_id, "alert"))
        if alert is None:
            raise NotFound(f"unknown alert {alert_id}")
        if alert.acknowledged_at is not None:
            raise Refused(f"alert {alert_id} is already acknowledged")
        alert.acknowledged_at = utcnow()
        return alert_dict(alert)
