"""The operators' read commands' queries (``instances``, ``tasks``, ``subtasks``, ``task``),
written once against a reader of the named statements of ``read_statements``: a
SQLAlchemy session's (``queries``, the HTTP API, the console) or the database driver's
alone with the statements compiled beforehand (``compiled_reads``, a CLI read in a new
process). Either gives the same views.

Nothing here imports SQLAlchemy nor pydantic (``read_views``): a read command must answer
within 0.35 s, process start included, and SQLAlchemy alone takes longer to import.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol

from pipeline.domain.limits import MAX_ID, check_id
from pipeline.domain.states import SubtaskState
from pipeline.errors import InvalidInput, NotFound, shown
from pipeline.operations.read_views import (
    TASK_COLUMNS,
    attempt_view,
    batch_job_view,
    event_view,
    instance_view,
    subtask_view,
)


class Reader(Protocol):
    """Runs a named read statement (``read_statements.statements``)."""

    def rows(self, name: str, **params: Any) -> list[Sequence[Any]]:
        """Its rows, each a tuple in the statement's column order."""
        ...

    def names(self, name: str) -> list[str]:
        """Its columns' names, in order."""
        ...

    def task_view(self, columns: Sequence[Any]) -> Any:
        """A task's view from its stored fields (``read_views.TASK_COLUMNS``, in order),
        its execution settings with the defaults of those it lacks
        (``read_views.task_builder``)."""
        ...


@dataclass(frozen=True)
class Listing:
    """Some rows of a listing (all of them without a limit), and how many it has in all."""

    rows: list[Any]
    total: int


def checked_limit(limit: int) -> int:
    """``limit`` rows, refused unless 1 to ``MAX_ID``."""
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_ID:
        raise InvalidInput(f"limit {shown(limit)} is out of range (1 to {MAX_ID})")
    return limit


def _objects(names: Sequence[str], rows: list[Sequence[Any]]) -> list[SimpleNamespace]:
    """Rows as objects with an attribute per column, as the views read an ORM object."""
    return [SimpleNamespace(**dict(zip(names, row, strict=True))) for row in rows]


def _named(reader: Reader, name: str, **params: Any) -> list[SimpleNamespace]:
    """The rows of a statement as objects (``_objects``)."""
    return _objects(reader.names(name), reader.rows(name, **params))


def _some(reader: Reader, name: str, limit: int | None, **params: Any) -> list[Sequence[Any]]:
    """A listing's rows: every one, or the first ``limit``."""
    if limit is None:
        return reader.rows(name, **params)
    return reader.rows(f"{name}.limited", limit=checked_limit(limit), **params)


def _total(reader: Reader, name: str, shown: int, limit: int | None, **params: Any) -> int:
    """How many rows a listing has, counted only when ``limit`` may have kept some back."""
    if limit is None or shown < limit:
        return shown
    return int(reader.rows(f"{name}.count", **params)[0][0])


def instances_listing(reader: Reader, limit: int | None = None) -> Listing:
    """The instances in id order: every one, or the newest ``limit`` (what an operator
    looks for first) still in id order."""
    if limit is None:
        rows = _named(reader, "instances")
    else:
        rows = _named(reader, "instances.newest", limit=checked_limit(limit))[::-1]
    total = _total(reader, "instances", len(rows), limit)
    return Listing([instance_view(row) for row in rows], total)


def tasks_listing(reader: Reader, instance_id: int, limit: int | None = None) -> Listing:
    """An instance's tasks in id order: every one, or the first ``limit``."""
    check_id(instance_id, "instance")
    if not reader.rows("instance.exists", instance_id=instance_id):
        raise NotFound(f"unknown instance {instance_id}")
    # Plain tuples, not objects nor rows read by name: 10,000 tasks list in a third of
    # the time.
    task_view = reader.task_view
    rows = [task_view(row) for row in _some(reader, "tasks", limit, instance_id=instance_id)]
    return Listing(rows, _total(reader, "tasks", len(rows), limit, instance_id=instance_id))


def _task(reader: Reader, task_id: int) -> SimpleNamespace:
    found = _named(reader, "task", task_id=check_id(task_id, "task"))
    if not found:
        raise NotFound(f"unknown task {task_id}")
    return found[0]


def get_task(reader: Reader, task_id: int) -> dict[str, Any]:
    """A task's details with its history of transitions and its running subtasks."""
    task = _task(reader, task_id)
    detail: dict[str, Any] = dict(reader.task_view([getattr(task, n) for n in TASK_COLUMNS]))
    detail["task_dir"] = task.task_dir
    detail["attempts"] = [
        attempt_view(row) for row in _named(reader, "task.attempts", task_id=task_id)
    ]
    detail["history"] = [event_view(row) for row in _named(reader, "task.history", task_id=task_id)]
    running = _named(reader, "task.running", task_id=task_id, state=str(SubtaskState.RUNNING))
    detail["running"] = [subtask_view(row) for row in running]
    detail["batch_jobs"] = [
        batch_job_view(row) for row in _named(reader, "task.jobs", task_id=task_id)
    ]
    return detail


def subtasks_listing(reader: Reader, task_id: int, limit: int | None = None) -> Listing:
    """The task's subtasks in index order (every one, or the first ``limit``), each with
    the datastore paths its last marshal gave it."""
    _task(reader, task_id)
    rows = _some(reader, "subtasks", limit, task_id=task_id)
    subtasks: list[Any] = [subtask_view(row) for row in _objects(reader.names("subtasks"), rows)]
    last = subtasks[-1]["index"] if subtasks else -1
    consumed: dict[int, list[str]] = {}
    for index, path in reader.rows("subtasks.consumed", task_id=task_id, last=last):
        consumed.setdefault(index, []).append(path)
    for subtask in subtasks:
        subtask["consumed"] = consumed.get(subtask["index"], [])
    return Listing(subtasks, _total(reader, "subtasks", len(rows), limit, task_id=task_id))
