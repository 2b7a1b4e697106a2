"""An operator's operations as Celery tasks, so Flower's API can run them.

``POST /api/task/async-apply/pipeline.restart`` with ``{"args": [...], "kwargs": {...}}``
runs the same facade operation as ``pipeline restart``; so do ``pipeline.restart_failed``,
``pipeline.halt``, ``pipeline.halt_instance`` and ``pipeline.submit`` for their commands.
Arguments are JSON values, checked against each task's annotations. The result is a JSON
dict saying what happened: ``ok``, a one-line ``summary`` and the details (each task's
outcome, the submitted instance). An operator's mistake (an unknown mode, task, instance or
pipeline, a value of the wrong type) comes back as ``{"ok": false, "error": "<one line>"}``
and changes nothing, rather than as a traceback.

They go to a queue of their own, served by the cluster's ``operations`` worker (one
process, the solo pool), so a halt runs while every other worker slot is busy with the
very subtasks it is meant to stop. Unlike the chain's stages they run at most once (no
``acks_late``): a worker lost in the middle of a submit must not submit the instance a
second time when the message comes back.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError, validate_call

from pipeline.domain.limits import Priority
from pipeline.messaging.celery_app import OPERATIONS, celery_app
from pipeline.operations import facade
from pipeline.operations.outcomes import Report
from pipeline.operations.problems import problem
from pipeline.operations.views import submitted_line

app = celery_app()

#: Results are kept for the operator to read; argument checking is done here, by pydantic,
#: so a wrong call becomes a result saying so instead of an error inside Flower. (The app
#: routes them to the operations queue.)
OPERATION_OPTIONS: dict[str, Any] = {
    "ignore_result": False,
    "acks_late": False,
    "typing": False,
}

Operation = Callable[..., dict[str, Any]]


def _validation_message(exc: ValidationError, names: list[str]) -> str:
    """``argument tasks.0: Input should be a valid integer``, a positional one named too."""
    error = exc.errors()[0]
    first, *rest = error["loc"] or ("",)
    if isinstance(first, int):
        first = names[first] if first < len(names) else f"#{first + 1}"
    return f"argument {'.'.join(map(str, [first, *rest]))}: {error['msg']}"


def operation(name: str) -> Callable[[Operation], Any]:
    """Register ``function`` as the Celery task ``name``, its problems as one-line results."""

    if name not in OPERATIONS:
        raise ValueError(f"{name} is not routed to the operations queue (OPERATIONS)")

    def register(function: Operation) -> Any:
        checked = validate_call(function)
        names = list(inspect.signature(function).parameters)

        @app.task(name=name, **OPERATION_OPTIONS)
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                return checked(*args, **kwargs)
            except Exception as exc:
                if isinstance(exc, ValidationError) and exc.title == function.__name__:
                    return {"ok": False, "error": _validation_message(exc, names)}
                found = problem(exc)
                if found is None:
                    raise
                return {"ok": False, "error": found.message}

        return run

    return register


def _report(report: Report, **extra: Any) -> dict[str, Any]:
    return {"ok": report.ok, "summary": report.summary, **extra, "outcomes": report.as_dicts()}


@operation("pipeline.restart")
def restart(
    tasks: list[int | str],
    mode: str | None = None,
    settings: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    """Restart tasks, each ``TASK`` in ``mode`` or ``"TASK:MODE"`` in its own mode.

    ``settings`` changes execution settings (queue, subtask_timeout, ...) with the restart.
    """
    return _report(facade.restart(tasks, mode, settings, dry_run), dry_run=dry_run)


@operation("pipeline.restart_failed")
def restart_failed(
    instance: int, mode: str, settings: dict[str, Any] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Restart every failed task of ``instance`` in one mode (or retry a failed transition)."""
    report = facade.restart_failed(instance, mode, settings, dry_run)
    return _report(report, instance=instance, dry_run=dry_run)


@operation("pipeline.halt")
def halt(tasks: list[int]) -> dict[str, Any]:
    """Halt tasks: queued work dropped, running subtasks terminated, the error flag set."""
    return _report(facade.halt(tasks))


@operation("pipeline.halt_instance")
def halt_instance(instance: int) -> dict[str, Any]:
    """Halt every task of ``instance`` that is still running."""
    return _report(facade.halt_instance(instance), instance=instance)


@operation("pipeline.submit")
def submit(
    pipeline: str,
    start_node: str | None = None,
    end_node: str | None = None,
    priority: Priority | None = None,
) -> dict[str, Any]:
    """Submit an instance of the newest version of ``pipeline``; the result names its id."""
    submitted = facade.submit(pipeline, start_node, end_node, priority)
    return {"ok": True, "summary": submitted_line(submitted), **submitted}
