"""The operations facade: what every interface calls (the CLI, the HTTP API, Flower's pages
and the Celery operations Flower's API runs), so every rule and every message lives once.

Reads return plain dicts, the JSON contract of the CLI's ``--json`` and the HTTP API.
Restarts and halts return a ``Report`` of each task's outcome, which each interface shows
in its own form. ``problem`` turns an error an operator can cause or meet (a refusal, an
unknown id, an unreachable database, a bad setting) into one line and a status; anything
else is a bug, for the interface to log as one.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from tomllib import TOMLDecodeError
from typing import Any

from pydantic import ValidationError
from sqlalchemy.exc import SQLAlchemyError, StatementError

from pipeline.database import describe_database_error, transaction
from pipeline.domain import definitions, parameters
from pipeline.domain.limits import check_count, check_id
from pipeline.domain.models import PipelineInstance
from pipeline.engine.alerts import acknowledge as acknowledge_alert
from pipeline.engine.alerts import list_alerts
from pipeline.errors import InvalidInput, PipelineError
from pipeline.operations import halt as halting
from pipeline.operations import restart as restarting
from pipeline.operations.console import (
    alerts_page,
    instance_overview,
    instances_page,
    log_tail,
    metrics,
    parameter_diff,
    parameter_versions,
    subtask_log_path,
    subtask_state_counts,
    subtasks_page,
    tasks_page,
)
from pipeline.operations.lineage import files, lineage
from pipeline.operations.modes import MODES, RestartMode, parse_request
from pipeline.operations.outcomes import Report
from pipeline.operations.queries import (
    Listing,
    get_instance,
    get_task,
    instance_dict,
    instances_listing,
    iso_time,
    list_definitions,
    list_instances,
    list_parameter_sets,
    list_subtasks,
    list_tasks,
    logs,
    parameter_set_dict,
    show_definition,
    show_parameter_set,
    subtasks_listing,
    tasks_listing,
    tasks_needing_attention,
)
from pipeline.operations.receipt import receive
from pipeline.recovery import heartbeat

__all__ = [
    "PROBLEMS",
    "Listing",
    "Problem",
    "Report",
    "acknowledge_alert",
    "alerts_page",
    "instance_overview",
    "instances_listing",
    "instances_page",
    "log_tail",
    "metrics",
    "parameter_diff",
    "parameter_versions",
    "subtask_log_path",
    "subtask_state_counts",
    "subtasks_listing",
    "subtasks_page",
    "tasks_listing",
    "tasks_page",
    "files",
    "get_instance",
    "get_task",
    "halt",
    "halt_instance",
    "import_definitions",
    "list_alerts",
    "list_definitions",
    "list_instances",
    "list_parameter_sets",
    "list_subtasks",
    "lineage",
    "list_tasks",
    "logs",
    "monitor_health",
    "problem",
    "receive",
    "restart",
    "restart_failed",
    "restart_modes",
    "set_parameters",
    "show_definition",
    "show_parameter_set",
    "submit",
    "submitted_line",
    "tasks_needing_attention",
]

#: The kinds of error ``problem`` reports as an operator's problem.
PROBLEMS = (PipelineError, SQLAlchemyError, ValidationError, TOMLDecodeError)
#: The status of a problem with the settings: the server's, not the request's.
SETTINGS_STATUS = 500
#: The status of a database error that is not the request's (a missing schema, say).
DATABASE_STATUS = 503


def monitor_health() -> dict[str, Any]:
    """Whether beat's monitor runs (``pipeline.recovery.heartbeat``): what ``cluster
    status``, the health route and the console say of it; never an error, since they
    answer when the database does not."""
    try:
        health = heartbeat.monitor_health()
    except PROBLEMS as exc:
        reported = problem(exc)
        unknown = reported.message if reported else type(exc).__name__
        return {"running": False, "last_run": None, "host": None, "message": f"monitor: {unknown}"}
    return {
        "running": health.running,
        "last_run": iso_time(health.last_run),
        "host": health.host or None,
        "message": health.message,
    }


def restart_modes() -> list[RestartMode]:
    """Every restart mode, in the order operators see them."""
    return list(MODES.values())


# -- definitions and parameters --------------------------------------------------------------


def import_definitions(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Import definition files, all or nothing; each stored version and whether it is new."""
    with transaction() as session:
        imported = definitions.import_files(session, list(paths))
        return [
            {"name": stored.name, "version": stored.version, "new": new} for stored, new in imported
        ]


def set_parameters(name: str, assignments: Sequence[str] | Mapping[str, Any]) -> dict[str, Any]:
    """Change values of a parameter set, given as ``key=value`` texts or a mapping; a locked
    version (used by an instance) gets a new version instead."""
    changes = (
        dict(assignments)
        if isinstance(assignments, Mapping)
        else parameters.parse_assignments(list(assignments))
    )
    with transaction() as session:
        return parameter_set_dict(parameters.set_values(session, name, changes))


# -- instances -------------------------------------------------------------------------------


def submit(
    pipeline: str,
    start_node: str | None = None,
    end_node: str | None = None,
    priority: int | None = None,
) -> dict[str, Any]:
    """Launch an instance; described as ``instances`` does, with the ids of its first tasks."""
    # Submitting loads the Celery app: only the operations that send messages pay for it.
    from pipeline.operations.submit import submit as submitting

    submitted = submitting(pipeline, start_node, end_node, priority)
    with transaction() as session:
        instance = session.get(PipelineInstance, submitted.id)
        return {**instance_dict(instance), "tasks": submitted.tasks}


def submitted_line(submitted: Mapping[str, Any]) -> str:
    """One line about a submitted instance."""
    return (
        f"instance {submitted['id']} of {submitted['pipeline']} submitted with"
        f" {len(submitted['tasks'])} tasks ({submitted['state']})"
    )


# -- restart and halt ------------------------------------------------------------------------


def restart(
    tasks: Sequence[int | str | tuple[int, str]],
    mode: str | None = None,
    settings: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> Report:
    """Restart tasks, each named as ``TASK`` (in ``mode``), ``TASK:MODE`` or (task, mode);
    ``settings`` changes execution settings with the restart."""
    if not tasks:
        raise InvalidInput("name the tasks to restart, or restart the failed tasks of an instance")
    check_count(tasks, "tasks")
    requests = [parse_request(item, mode) for item in tasks]
    return restarting.restart(requests, settings, dry_run)


def restart_failed(
    instance: int,
    mode: str,
    settings: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> Report:
    """Restart every failed task of ``instance`` in one mode (or retry a failed transition)."""
    return restarting.restart_failed(instance, mode, settings, dry_run)


def halt(tasks: Sequence[int]) -> Report:
    """Halt tasks: queued work dropped, running subtasks terminated, the error flag set."""
    if not tasks:
        raise InvalidInput("name the tasks to halt, or halt the running tasks of an instance")
    check_count(tasks, "tasks")
    return halting.halt([check_id(task, "task") for task in tasks])


def halt_instance(instance: int) -> Report:
    """Halt every task of ``instance`` that is still running."""
    return halting.halt_instance(check_id(instance, "instance"))


# -- errors ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Problem:
    """An error as every interface reports it: one line, and the HTTP status it stands for."""

    status: int
    message: str


def problem(exc: BaseException) -> Problem | None:
    """The one-line report of an error an operator can cause or meet; None for anything
    else (a bug: the interface logs it whole)."""
    if isinstance(exc, StatementError) and isinstance(exc.orig, PipelineError):
        exc = exc.orig  # raised writing a value (a JSON column refusing a non-finite number)
    if isinstance(exc, PipelineError):
        return Problem(exc.status, _one_line(str(exc)))
    if isinstance(exc, SQLAlchemyError):
        return Problem(DATABASE_STATUS, describe_database_error(exc))
    if isinstance(exc, ValidationError) and exc.title == "Settings":
        error = exc.errors()[0]
        name = ".".join(map(str, error["loc"]))
        message = f"setting {name}: {error['msg']} (from PIPELINE_* or settings.toml)"
        return Problem(SETTINGS_STATUS, message)
    if isinstance(exc, TOMLDecodeError):
        return Problem(SETTINGS_STATUS, f"settings file is not valid TOML: {exc}")
    return None


#: Characters of a one-line report, at most: whatever an error quotes, an answer stays short.
MAX_MESSAGE_CHARACTERS = 1000


def _one_line(text: str) -> str:
    line = " ".join(text.split())
    if len(line) <= MAX_MESSAGE_CHARACTERS:
        return line
    return f"{line[:MAX_MESSAGE_CHARACTERS]}... (cut short)"
