"""The reconciler isolates each task: what goes wrong with one never stops its run for the
others.

A row that cannot be read (a JSON column holding ``Infinity``, written by hand or by an
older version) fails its own task, with one line and an alert, and its execution settings
are put back to its node's so that an operator can show and restart it; an instance whose
frozen definition or parameters cannot be read stops as TRANSITION_FAILED with an alert.
Anything else that goes wrong with one task or instance is logged, and the run goes on.
Only a database or broker that cannot be reached ends the run (every other task would
meet it too).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from sqlalchemy import Text, cast, select, update
from sqlalchemy.orm import load_only

from pipeline.database import transaction
from pipeline.domain.definitions import parse
from pipeline.domain.execution import with_execution_defaults
from pipeline.domain.lifecycle import Event
from pipeline.domain.models import Alert, PipelineInstance, Task, utcnow
from pipeline.domain.states import InstanceState
from pipeline.engine.alerts import ERROR, raise_alert
from pipeline.engine.task_state import move
from pipeline.errors import Unreachable, Unreadable
from pipeline.jsoncodec import loads

log = logging.getLogger(__name__)
R = TypeVar("R")

#: The columns of a task and of an instance that failing them needs: no JSON column, so a
#: row whose JSON cannot be read can still be failed.
_TASK_COLUMNS = (
    Task.instance_id,
    Task.node,
    Task.p_state,
    Task.error,
    Task.error_message,
    Task.attempt,
    Task.worker_host,
    Task.updated_at,
)
_INSTANCE_COLUMNS = (PipelineInstance.state, PipelineInstance.updated_at)


class Isolation:
    """The guard around each task (or instance) of one reconciler run, counting the tasks it
    failed as unreadable."""

    def __init__(self, before_each: Callable[[], None] = lambda: None) -> None:
        #: Called before each task's and instance's work (the reconciler extends its lock).
        self.before_each = before_each
        self.failed = 0

    def task(self, task_id: int, call: Callable[[], R]) -> R | None:
        """``call()``, the task's work; a row it cannot read fails the task, any other
        error is logged; None then."""
        self.before_each()
        try:
            return call()
        except Unreachable:
            raise
        except Unreadable as exc:
            self.unreadable(task_id, exc.reason)
        except Exception:
            log.exception("reconciler: task %s skipped this run", task_id)
        return None

    def unreadable(self, task_id: int, reason: str) -> None:
        """Fail the task, a stored value of which cannot be read for ``reason``."""
        self.failed += _guarded(task_id, lambda: fail_unreadable(task_id, reason))

    def instance(self, instance_id: int, call: Callable[[], Any]) -> None:
        """``call()``, the instance's work; a row it cannot read stops the instance."""
        self.before_each()
        try:
            call()
        except Unreachable:
            raise
        except Unreadable as exc:
            reason = exc.reason
            _guarded(instance_id, lambda: stop_unreadable(instance_id, reason))
        except Exception:
            log.exception("reconciler: instance %s skipped this run", instance_id)


def _guarded(row_id: int, call: Callable[[], Any]) -> int:
    try:
        call()
    except Unreachable:
        raise
    except Exception:
        log.exception("reconciler: could not fail %s, whose row cannot be read", row_id)
        return 0
    return 1


def decode_execution(stored: str) -> dict[str, Any]:
    """A task's execution settings from their stored text (``Unreadable`` if they cannot
    be read): what the reconciler selects as text so one bad row cannot fail its query."""
    value = loads(stored)
    if not isinstance(value, dict):
        raise Unreadable(f"execution settings are not a mapping: {type(value).__name__}")
    return value


def fail_unreadable(task_id: int, reason: str) -> None:
    """Fail a task one of whose stored values cannot be read: the error flag, one line in
    its history, an alert; unreadable execution settings are put back to its node's."""
    with transaction() as session:
        instance_id, node, stored = session.execute(
            select(Task.instance_id, Task.node, cast(Task.execution, Text)).where(
                Task.id == task_id
            )
        ).one()
        instance = session.scalars(
            select(PipelineInstance)
            .where(PipelineInstance.id == instance_id)
            .options(load_only(*_INSTANCE_COLUMNS))
            .with_for_update()
        ).one()
        task = session.scalars(
            select(Task)
            .where(Task.id == task_id)
            .options(load_only(*_TASK_COLUMNS))
            .with_for_update()
        ).one()
        if task.error:
            return
        message = f"stored values cannot be read ({reason}): see the task's instance"
        try:
            decode_execution(stored)
        except Unreadable as exc:
            task.execution, whose = _node_settings(session, instance_id, node)
            message = (
                f"stored execution settings cannot be read ({exc.reason}): reset to {whose};"
                " restart the task"
            )
        move(session, task, Event.FAILED, message, instance=instance)
        raise_alert(session, task, ERROR, message)
    log.error("task %s: %s", task_id, message)


def _node_settings(session: Any, instance_id: int, node: str) -> tuple[dict[str, Any], str]:
    """The node's execution settings from the instance's frozen definition, and whose they
    are; the defaults if that cannot be read either."""
    stored = session.scalar(
        select(cast(PipelineInstance.definition, Text)).where(PipelineInstance.id == instance_id)
    )
    try:
        execution = parse(loads(stored)).node(node).execution
    except Exception:  # the definition is unreadable too: nothing better than the defaults
        return with_execution_defaults({}), "the default settings"
    return execution.model_dump(), f"node {node}'s settings"


def stop_unreadable(instance_id: int, reason: str) -> None:
    """Stop an instance whose frozen definition or parameters cannot be read (TRANSITION_
    FAILED, so the reconciler leaves it alone), with an alert."""
    message = f"stored definition or parameters cannot be read ({reason})"
    with transaction() as session:
        session.execute(
            update(PipelineInstance)
            .where(PipelineInstance.id == instance_id)
            .values(state=InstanceState.TRANSITION_FAILED, message=message, updated_at=utcnow())
        )
        session.add(Alert(severity=ERROR, instance_id=instance_id, message=message))
    log.error("instance %s: %s", instance_id, message)
