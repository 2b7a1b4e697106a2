"""Alerts: what an operator should know that no command reported (lost work dispatched
again or failed by the reconciler, a subtask that stored no output), raised in the
transaction that found it (operators list and acknowledge them: ``pipeline.operations``)."""

from __future__ import annotations

import logging

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.models import Alert, Task, utcnow

log = logging.getLogger(__name__)

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


def raise_once(session: Session, cause: str, severity: str, message: str) -> bool:
    """Raise an alert about a condition that lasts (``cause``), unless one raised for it is
    not cleared yet: one alert per episode. Whether it was raised."""
    return raise_once_about(session, cause, None, None, severity, message)


def raise_once_about(
    session: Session,
    cause: str,
    instance_id: int | None,
    task_id: int | None,
    severity: str,
    message: str,
) -> bool:
    """``raise_once`` about a task known by its ids (or none)."""
    open_one = session.scalar(
        select(Alert.id).where(Alert.cause == cause, Alert.cleared_at.is_(None)).limit(1)
    )
    if open_one is not None:
        return False
    session.add(
        Alert(
            severity=severity,
            instance_id=instance_id,
            task_id=task_id,
            message=message,
            cause=cause,
        )
    )
    return True


def raise_or_update(session: Session, cause: str, severity: str, message: str) -> None:
    """Raise an alert about ``cause``, or, while one is open and not acknowledged, say
    ``message`` in it instead, dated now: one alert that tells the latest (a service
    restarted a third time), at the top of the list; what happens after an operator
    acknowledged it is a new alert."""
    updated = session.execute(
        update(Alert)
        .where(Alert.cause == cause, Alert.cleared_at.is_(None), Alert.acknowledged_at.is_(None))
        .values(severity=severity, message=message, at=utcnow())
        .execution_options(synchronize_session=False)
    )
    if not updated.rowcount:
        session.add(Alert(severity=severity, message=message, cause=cause))


def tell(cause: str, severity: str, message: str) -> bool:
    """``raise_or_update`` in a transaction of its own, for a process that goes on when the
    database is away (a worker's pool, the supervisor): whether it was recorded; if not,
    the process's log says it."""
    try:
        with transaction() as session:
            raise_or_update(session, cause, severity, message)
    except Exception:
        log.exception("alert not recorded: %s", message)
        return False
    return True


def clear(session: Session, cause: str) -> bool:
    """The condition ``cause`` ended: its alert is cleared. Whether one was open."""
    cleared = session.execute(
        update(Alert)
        .where(Alert.cause == cause, Alert.cleared_at.is_(None))
        .values(cleared_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return bool(cleared.rowcount)
