"""The operations facade: the commands every interface runs (the CLI, the HTTP API, Flower's
pages and the Celery operations Flower's API runs), each with the rules it adds (checked
ids and counts, parsed assignments, one transaction), so every rule and every message
lives once. What an operator reads is in ``queries``, ``pages`` and ``lineage``, each
answering its views (``views``); ``problems`` turns an error into its one line.

Restarts and halts return a ``Report`` of each task's outcome, which each interface shows
in its own form.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.database import transaction
from pipeline.domain import definitions, parameters, ziggy
from pipeline.domain.limits import check_count, check_id
from pipeline.domain.models import Alert, PipelineInstance, utcnow
from pipeline.errors import InvalidInput, NotFound, Refused, named_file
from pipeline.operations import environments, parameter_library, retention
from pipeline.operations import halt as halting
from pipeline.operations import restart as restarting
from pipeline.operations.modes import MODES, RestartMode, parse_request
from pipeline.operations.outcomes import Report
from pipeline.operations.problems import PROBLEMS, problem
from pipeline.operations.views import (
    AlertView,
    DatastorePruneView,
    EnvironmentView,
    ParameterSetChange,
    ParameterSetView,
    PlannedTaskView,
    SubmitPreview,
    SubmittedInstance,
    TaskDirsPruneView,
    alert_view,
    batch_estimate_view,
    instance_view,
    iso_time,
    parameter_set_view,
)
from pipeline.recovery import heartbeat

if TYPE_CHECKING:
    from pipeline.operations.submit import Submitted
from pipeline.settings import get_settings


def batch_system_status() -> dict[str, Any] | None:
    """Whether the batch system the pipelines' nodes run on answers (``cluster status``'s
    row for it); None when no node runs on one."""
    from pipeline.engine import batch

    return batch.status()


def reconciler_health() -> dict[str, Any]:
    """Whether beat's reconciler runs (``pipeline.recovery.heartbeat``): what ``cluster
    status``, the health route and the console say of it; never an error, since they
    answer when the database does not."""
    try:
        health = heartbeat.reconciler_health()
    except PROBLEMS as exc:
        reported = problem(exc)
        unknown = reported.message if reported else type(exc).__name__
        return {
            "running": False,
            "last_run": None,
            "host": None,
            "message": f"reconciler: {unknown}",
        }
    return {
        "running": health.running,
        "last_run": iso_time(health.last_run),
        "host": health.host or None,
        "message": health.message,
    }


def list_environments() -> list[EnvironmentView]:
    """Every remote environment the newest definitions declare (``environments``)."""
    return environments.list_environments()


def restart_modes() -> list[RestartMode]:
    """Every restart mode, in the order operators see them."""
    return list(MODES.values())


# -- definitions and parameters --------------------------------------------------------------


def import_definitions(
    paths: Sequence[Path],
    algorithm_path: Sequence[Path] = (),
    warnings: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Import definition files (YAML, or Ziggy's XML, a ``ziggy.d`` directory standing for
    its files, steps found under ``algorithm_path``), all or nothing; each stored version
    and whether it is new. What Ziggy's files hold that is not acted on goes to
    ``warnings``."""
    settings = get_settings()
    with transaction() as session:
        imported = definitions.import_files(
            session, list(paths), algorithm_path, settings.receipt, warnings, settings.bin_dirs
        )
        return [
            {"name": stored.name, "version": stored.version, "new": new} for stored, new in imported
        ]


def export_definition(name: str) -> str:
    """The newest definition of pipeline ``name`` as a Ziggy ``pipelineDefinition`` file,
    with the current values of the parameter sets it uses; refused in one line for what
    Ziggy cannot say (see ``ziggy.export``)."""
    with transaction() as session:
        spec = definitions.get(session, name).spec
        used = {s for node in spec["nodes"] for s in node["parameter_sets"]}
        sets = {s: parameters.get(session, s).values for s in sorted(used)}
    return ziggy.export(spec, sets)


def import_parameter_library(file: Path, apply: bool = False) -> list[ParameterSetChange]:
    """Import the Ziggy parameter library ``file`` names on this host, all or nothing:
    what it does to each set (``parameter_library``), done only with ``apply``."""
    return parameter_library.import_library(named_file(file), apply)


def export_parameter_library(names: Sequence[str] = ()) -> str:
    """The newest version of each named parameter set (every set, none named) as a Ziggy
    parameter library file; an unknown name is refused."""
    return parameter_library.export_library(list(names))


def set_parameters(
    name: str, assignments: Sequence[str] | Mapping[str, Any], dry_run: bool = False
) -> ParameterSetView:
    """Change values of a parameter set, given as ``key=value`` texts or a mapping; a locked
    version (used by an instance) gets a new version instead. ``dry_run``: the set as it
    would be, with the same checks and errors; nothing changes."""
    changes = (
        dict(assignments)
        if isinstance(assignments, Mapping)
        else parameters.parse_assignments(list(assignments))
    )
    with transaction() as session:
        view = parameter_set_view(parameters.set_values(session, name, changes))
        if dry_run:
            session.rollback()
        return view


# -- instances -------------------------------------------------------------------------------


def submit(
    pipeline: str,
    start_node: str | None = None,
    end_node: str | None = None,
    priority: int | None = None,
    models: Sequence[str] | Mapping[str, str] = (),
    units: str | None = None,
    exclude: str | None = None,
    settings: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
) -> SubmittedInstance:
    """Launch an instance; described as ``instances`` does, with the ids of its first tasks.
    ``models`` chooses model versions (``TYPE=VERSION`` texts, or a mapping); the newest
    of every other type its nodes use is pinned. ``units`` and ``exclude``: regular
    expressions every node's units of work must match, and must not. ``settings``
    changes nodes' execution settings for this instance (``NODE:KEY=VALUE`` texts, or
    ``{node: {key: value}}``), a remote environment they name settled into them."""
    submitted = _submit(pipeline, start_node, end_node, priority, models, units, exclude, settings)
    with transaction() as session:
        instance = session.get(PipelineInstance, submitted.id)
        view = SubmittedInstance(
            **instance_view(instance), tasks=submitted.tasks, left_out=submitted.left_out
        )
    if submitted.queued:
        view["message"] = f"queued: {submitted.queued}"
    return view


def preview_submit(
    pipeline: str,
    start_node: str | None = None,
    end_node: str | None = None,
    priority: int | None = None,
    models: Sequence[str] | Mapping[str, str] = (),
    units: str | None = None,
    exclude: str | None = None,
    settings: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
) -> SubmitPreview:
    """What ``submit`` would do, with the same checks and errors: every node's tasks and
    their subtask counts as the datastore stands now; nothing changes."""
    planned = _submit(
        pipeline, start_node, end_node, priority, models, units, exclude, settings, True
    )
    return SubmitPreview(
        pipeline=planned.pipeline,
        nodes=planned.nodes,
        left_out=planned.left_out,
        units=planned.units,
        parameter_sets=planned.parameter_sets,
        models=planned.models,
        batch_estimates=[batch_estimate_view(estimate) for estimate in planned.batch_estimates],
        tasks={
            node: [PlannedTaskView(unit_of_work=t.unit_of_work, subtasks=t.subtasks) for t in tasks]
            for node, tasks in planned.planned.items()
        },
    )


def _submit(
    pipeline: str,
    start_node: str | None,
    end_node: str | None,
    priority: int | None,
    models: Sequence[str] | Mapping[str, str],
    units: str | None,
    exclude: str | None,
    settings: Sequence[str] | Mapping[str, Mapping[str, Any]],
    dry_run: bool = False,
) -> Submitted:
    # Submitting loads the Celery app: only the operations that send messages pay for it.
    from pipeline.operations.submit import submit as submitting

    return submitting(
        pipeline,
        start_node,
        end_node,
        priority,
        dry_run=dry_run,
        models=parse_model_choices(models),
        units_regexp=units,
        units_exclude=exclude,
        settings=settings,
    )


def parse_model_choices(models: Sequence[str] | Mapping[str, str]) -> dict[str, str]:
    """``TYPE=VERSION`` texts (``--model``) or a mapping as ``{type: version}``."""
    if isinstance(models, Mapping):
        pairs = [(str(kind), str(version)) for kind, version in models.items()]
    else:
        pairs = []
        for text in models:
            kind, equals, version = str(text).partition("=")
            if not equals or not kind.strip() or not version.strip():
                raise InvalidInput(f"--model {text[:80]!r}: expected TYPE=VERSION")
            pairs.append((kind.strip(), version.strip()))
    chosen: dict[str, str] = {}
    for kind, version in pairs:
        if kind in chosen and chosen[kind] != version:
            raise InvalidInput(f"--model {kind}: given twice ({chosen[kind]}, {version})")
        chosen[kind] = version
    return chosen


# -- restart and halt ------------------------------------------------------------------------


def restart(
    tasks: Sequence[int | str | tuple[int, str]],
    mode: str | None = None,
    settings: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    downstream: bool = False,
) -> Report:
    """Restart tasks, each named as ``TASK`` (in ``mode``), ``TASK:MODE`` or (task, mode);
    ``settings`` changes execution settings with the restart; with ``downstream``, the
    tasks downstream of each run again, in order, as they become stale."""
    if not tasks:
        raise InvalidInput("name the tasks to restart, or restart the failed tasks of an instance")
    check_count(tasks, "tasks")
    requests = [parse_request(item, mode) for item in tasks]
    return restarting.restart(requests, settings, dry_run, downstream)


def restart_failed(
    instance: int,
    mode: str,
    settings: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    downstream: bool = False,
) -> Report:
    """Restart every failed or stale task of ``instance`` in one mode (or retry a failed
    transition)."""
    return restarting.restart_failed(instance, mode, settings, dry_run, downstream)


def prune_datastore(
    keep_last: int | None = None,
    keep_since: str | datetime | None = None,
    dry_run: bool = False,
    progress: retention.Progress | None = None,
) -> DatastorePruneView:
    """Remove the bytes of the versions retention does not keep (``retention``)."""
    return retention.prune_datastore(keep_last, keep_since, dry_run, progress or _quiet)


def prune_task_dirs(
    older_than: str | datetime, dry_run: bool = False, progress: retention.Progress | None = None
) -> TaskDirsPruneView:
    """Remove the task directories no restart can want, older than ``older_than``."""
    return retention.prune_task_dirs(older_than, dry_run, progress or _quiet)


def _quiet(done: int, total: int) -> None:
    """No progress shown."""


def halt(tasks: Sequence[int]) -> Report:
    """Halt tasks: queued work dropped, running subtasks terminated, the error flag set."""
    if not tasks:
        raise InvalidInput("name the tasks to halt, or halt the running tasks of an instance")
    check_count(tasks, "tasks")
    return halting.halt([check_id(task, "task") for task in tasks])


def halt_instance(instance: int) -> Report:
    """Halt every task of ``instance`` that is still running."""
    return halting.halt_instance(check_id(instance, "instance"))


# -- alerts ----------------------------------------------------------------------------------


def acknowledge_alert(alert_id: int) -> AlertView:
    """Mark the alert seen (it leaves the default list); the acknowledged alert."""
    with transaction() as session:
        alert = session.get(Alert, check_id(alert_id, "alert"))
        if alert is None:
            raise NotFound(f"unknown alert {alert_id}")
        if alert.acknowledged_at is not None:
            raise Refused(f"alert {alert_id} is already acknowledged")
        alert.acknowledged_at = utcnow()
        return alert_view(alert)
