"""The views of the operators' read commands (``instances``, ``tasks``, ``subtasks``,
``task``) and how every view is built from a row, without pydantic.

A read command in a new process must answer within 0.35 s, process start included, and
pydantic alone, with the execution settings' model, takes a quarter of that to import. So
the views a read command shows are built here from their fields' names, in the order each
view shows them; ``views`` declares each as the HTTP API's response model
(``views.TaskView`` ...), with its types and descriptions, and checks as it loads that it
declares the same fields in the same order as here (``views.same_fields``).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from pipeline.domain.lifecycle import counts_label, state_label

#: The fields of each read command's view, in the order it shows them.
INSTANCE_FIELDS = (
    "id",
    "pipeline",
    "definition_version",
    "state",
    "start_node",
    "end_node",
    "priority",
    "message",
    "created_at",
    "updated_at",
    "models",
    "units",
    "units_regexp",
    "units_exclude",
    "event",
)
TASK_FIELDS = (
    "id",
    "instance_id",
    "node",
    "unit_of_work",
    "p_state",
    "error",
    "stale",
    "state",
    "error_message",
    "stale_reason",
    "rerun",
    "halted",
    "attempt",
    "total_subtasks",
    "completed_subtasks",
    "failed_subtasks",
    "counts",
    "worker_host",
    "execution",
    "updated_at",
)
TASK_EVENT_FIELDS = ("at", "p_state", "error", "state", "attempt", "host", "message")
SUBTASK_FIELDS = (
    "index",
    "state",
    "attempts",
    "error",
    "inputs",
    "outputs",
    "worker_host",
    "worker_pid",
    "started_at",
    "finished_at",
    "heartbeat_at",
)
ATTEMPT_FIELDS = ("attempt", "code", "code_version", "models", "recorded_at")
BATCH_JOB_FIELDS = (
    "job_id",
    "attempt",
    "state",
    "reason",
    "subtasks",
    "elements",
    "partition",
    "elements_by_state",
    "queue_wait",
    "estimated_node_hours",
    "estimated_cost",
    "node_hours",
    "cost",
    "submitted_at",
    "ended_at",
)


def iso_time(value: datetime | None) -> str | None:
    """A stored time as ISO 8601 to the second; None unset."""
    return value.isoformat(timespec="seconds") if value else None


def build(names: Sequence[str], row: Any, **computed: Any) -> Any:
    """The view of ``row`` (an ORM object, or a result row with labelled columns) whose
    fields are ``names``: each from the row's attribute of that name (a time as ISO 8601,
    see ``iso_time``), unless given in ``computed``."""
    shown = {}
    for name in names:
        value = computed[name] if name in computed else getattr(row, name)
        shown[name] = iso_time(value) if isinstance(value, datetime) else value
    return shown


class Builder:
    """Builds views of the fields ``names`` from column tuples: ``columns`` names what each
    position of a tuple holds, ``computed`` makes each other field from the columns its
    parameters name (``state=lambda p_state, error: ...``).

    The builder is compiled once into a plain function, as ``dataclasses`` makes its
    ``__init__``: a listing of 10,000 tasks builds each row in half the time a loop over
    the fields takes."""

    def __init__(
        self, names: Sequence[str], columns: Sequence[str], **computed: Callable[..., Any]
    ) -> None:
        self.columns = list(columns)
        missing = set(names) - set(columns) - set(computed)
        if missing:
            raise TypeError(f"nothing gives {sorted(missing)}")
        namespace: dict[str, Any] = {}
        parts = []
        for name in names:
            if name in computed:
                namespace[f"_{name}"] = computed[name]
                given = ", ".join(inspect.signature(computed[name]).parameters)
                parts.append(f"{name!r}: _{name}({given})")
            else:
                parts.append(f"{name!r}: {name}")
        source = (
            f"def build(values):\n    ({', '.join(self.columns)},) = values\n"
            f"    return {{{', '.join(parts)}}}\n"
        )
        exec(source, namespace)  # noqa: S102 - made from the view's own field names
        self._build: Callable[[Sequence[Any]], Any] = namespace["build"]

    def __call__(self, values: Sequence[Any]) -> Any:
        return self._build(values)


# -- instances -------------------------------------------------------------------------------


def instance_view(row: Any) -> Any:
    return build(
        INSTANCE_FIELDS,
        row,
        models={kind: pin["version"] for kind, pin in (row.models or {}).items()},
        event=event_line(row.event),
    )


def event_line(event: dict[str, Any] | None) -> str | None:
    """An instance's event as an operator reads it: ``event 4 of ingest (labels a, b)``."""
    if not event:
        return None
    return f"event {event['id']} of {event['handler']} ({labels_said(event['labels'])})"


def labels_said(labels: list[str]) -> str:
    """An event's labels: ``labels a, b``; none (Ziggy's ``READY.NAME.1``, the delivery at
    the top of the handler's directory): ``no label``."""
    return f"labels {', '.join(labels)}" if labels else "no label"


# -- tasks -----------------------------------------------------------------------------------

#: The stored fields of a task view: the columns a listing selects.
TASK_COLUMNS = [name for name in TASK_FIELDS if name not in ("state", "counts")]


def task_builder(execution_defaults: Mapping[str, Any]) -> Builder:
    """What makes a task's view from its stored fields (``TASK_COLUMNS``, in order): with
    the state as operators read it, its counts, and every execution setting, those stored
    before a setting existed at its default (``execution_defaults``: the execution
    settings' ``with_execution_defaults({})``, which ``views`` and the compiled reads
    give)."""
    return Builder(
        TASK_FIELDS,
        TASK_COLUMNS,
        state=lambda p_state, error, stale: state_label(p_state, error, stale),
        counts=lambda total_subtasks, completed_subtasks, failed_subtasks: counts_label(
            total_subtasks, completed_subtasks, failed_subtasks
        ),
        execution=lambda execution: {**execution_defaults, **execution},
        updated_at=lambda updated_at: iso_time(updated_at),
    )


def event_view(row: Any) -> Any:
    return build(TASK_EVENT_FIELDS, row, state=state_label(row.p_state, row.error))


def subtask_view(row: Any) -> Any:
    return build(SUBTASK_FIELDS, row)


def attempt_view(row: Any) -> Any:
    from pipeline.engine.code_version import describe

    return build(
        ATTEMPT_FIELDS,
        row,
        code_version=describe(row.code),
        models={kind: pin["version"] for kind, pin in row.models.items()},
    )


def batch_job_view(row: Any) -> Any:
    seen = list((row.seen or {}).values())
    by_state: dict[str, int] = {}
    for state, *_ in seen:
        by_state[state] = by_state.get(state, 0) + 1
    wait = max((queued for _, _, queued, _ in seen), default=None)
    return build(BATCH_JOB_FIELDS, row, elements_by_state=by_state, queue_wait=wait)
