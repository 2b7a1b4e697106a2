"""An operator's operations as Celery tasks, so Flower's API can run them.

``POST /api/task/async-apply/pipeline.restart`` with ``{"args": [...], "kwargs": {...}}``
runs the same service function as ``pipeline restart``; so do ``pipeline.restart_failed``,
``pipeline.halt``, ``pipeline.halt_instance`` and ``pipeline.submit`` for their commands.
Arguments are JSON values, checked against each function's annotations. The result is a
JSON dict saying what happened: ``ok``, a one-line ``summary`` and the details (each task's
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
from sqlalchemy.exc import SQLAlchemyError

from pipeline import halt as halting
from pipeline import restart as restarting
from pipeline import services
from pipeline.database import describe_database_error
from pipeline.errors import InvalidInput, PipelineError
from pipeline.restart import Outcome, describe
from workers.app import OPERATIONS_QUEUE, app

#: Results are kept for the operator to read; argument checking is done here, by pydantic,
#: so a wrong call becomes a result saying so instead of an error inside Flower.
OPERATION_OPTIONS: dict[str, Any] = {
    "queue": OPERATIONS_QUEUE,
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
    """Register ``function`` as the Celery task ``name``, its errors as one-line results."""

    def register(function: Operation) -> Any:
        checked = validate_call(function)
        names = list(inspect.signature(function).parameters)

        @app.task(name=name, **OPERATION_OPTIONS)
        @functools.wraps(function)
        def run(*args: Any, **kwargs: Any) -> dict[str, Any]:
            try:
                return checked(*args, **kwargs)
            except ValidationError as exc:
                return {"ok": False, "error": _validation_message(exc, names)}
            except PipelineError as exc:
                return {"ok": False, "error": str(exc)}
            except SQLAlchemyError as exc:
                return {"ok": False, "error": describe_database_error(exc)}

        return run

    return register


def _outcomes(outcomes: list[Outcome], **extra: Any) -> dict[str, Any]:
    return {
        "ok": all(outcome.ok for outcome in outcomes),
        "summary": describe(outcomes),
        **extra,
        "outcomes": [outcome.as_dict() for outcome in outcomes],
    }


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
    if not tasks:
        raise InvalidInput("name the tasks to restart (pipeline.restart_failed takes an instance)")
    requests = [restarting.parse_request(item, mode) for item in tasks]
    return _outcomes(restarting.restart(requests, settings, dry_run), dry_run=dry_run)


@operation("pipeline.restart_failed")
def restart_failed(
    instance: int, mode: str, settings: dict[str, Any] | None = None, dry_run: bool = False
) -> dict[str, Any]:
    """Restart every failed task of ``instance`` in one mode (or retry a failed transition)."""
    outcomes = restarting.restart_failed(instance, mode, settings, dry_run)
    return _outcomes(outcomes, instance=instance, dry_run=dry_run)


@operation("pipeline.halt")
def halt(tasks: list[int]) -> dict[str, Any]:
    """Halt tasks: queued work dropped, running subtasks terminated, the error flag set."""
    if not tasks:
        raise InvalidInput("name the tasks to halt (pipeline.halt_instance takes an instance)")
    return _outcomes(halting.halt(tasks))


@operation("pipeline.halt_instance")
def halt_instance(instance: int) -> dict[str, Any]:
    """Halt every task of ``instance`` that is still running."""
    return _outcomes(halting.halt_instance(instance), instance=instance)


@operation("pipeline.submit")
def submit(
    pipeline: str,
    start_node: str | None = None,
    end_node: str | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """Submit an instance of the newest version of ``pipeline``; the result names its id."""
    submitted = services.submit_instance(pipeline, start_node, end_node, priority)
    return {"ok": True, "summary": services.submitted_line(submitted), **submitted}
