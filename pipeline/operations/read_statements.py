"""The SQL of the operators' read commands (``instances``, ``tasks``, ``subtasks``,
``task``), each statement once, by name, and two ways to run them: in a SQLAlchemy session
(``SessionReader``), and compiled for this database into the plain SQL and result types that
``compiled_reads`` runs later with the database's own driver alone.

What reads them (``reading``) is written once against either; the statements take their
values as named parameters (``:instance_id``), never as constants, so the compiled SQL is
complete.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Engine,
    Select,
    Text,
    TypeDecorator,
    bindparam,
    cast,
    func,
    select,
)
from sqlalchemy import Enum as EnumType
from sqlalchemy.orm import Session

from pipeline.database import connect_args, engine_for
from pipeline.domain.execution import with_execution_defaults
from pipeline.domain.models import (
    BatchJob,
    DatastoreFile,
    FileConsumption,
    PipelineInstance,
    Subtask,
    Task,
    TaskAttempt,
    TaskEvent,
    UTCDateTime,
)
from pipeline.operations import compiled_reads
from pipeline.operations.views import (
    TASK_COLUMNS,
    AttemptView,
    InstanceView,
    SubtaskView,
    TaskEventView,
    fields,
    task_from_columns,
)
from pipeline.settings import get_settings


class StoredJSON(TypeDecorator[str]):
    """A JSON column selected as its stored text (``CAST ... AS TEXT``) and decoded by the
    reader, each text once (``compiled_reads._json``): psycopg decoding the execution
    settings of each of 10,000 tasks took a third of their listing."""

    impl = Text
    cache_ok = True


def _columns(table: Any, names: Sequence[str]) -> list[Any]:
    """The named columns of ``table`` (a model), those a view takes from it, in order; a
    JSON one as its text (``StoredJSON``)."""
    found = []
    for name in names:
        if name in table.__table__.c:
            column = table.__table__.c[name]
            if isinstance(column.type, JSON):
                column = cast(column, StoredJSON()).label(name)
            found.append(column)
    return found


def _listing(query: Select[Any], order: Any) -> dict[str, Select[Any]]:
    """A listing's three statements: every row, the first ``:limit``, and how many."""
    return {
        "": query.order_by(order),
        ".limited": query.order_by(order).limit(bindparam("limit")),
        ".count": select(func.count()).select_from(query.subquery()),
    }


#: The values of a driver's connection arguments that the reads file can keep.
PLAIN = (str, int, float, bool)


@cache
def statements() -> dict[str, Select[Any]]:
    """Every read statement, by name."""
    instance = select(*_columns(PipelineInstance, fields(InstanceView)))
    tasks = select(*_columns(Task, TASK_COLUMNS)).where(
        Task.instance_id == bindparam("instance_id")
    )
    subtask_columns = _columns(Subtask, fields(SubtaskView))
    subtasks = select(*subtask_columns).where(Subtask.task_id == bindparam("task_id"))
    marshaled = select(func.max(FileConsumption.attempt)).where(
        FileConsumption.task_id == bindparam("task_id")
    )
    found = {
        "instances": instance.order_by(PipelineInstance.id),
        "instances.newest": instance.order_by(PipelineInstance.id.desc()).limit(bindparam("limit")),
        "instances.count": select(func.count()).select_from(PipelineInstance),
        "instance.exists": select(PipelineInstance.id).where(
            PipelineInstance.id == bindparam("instance_id")
        ),
        **{f"tasks{k}": v for k, v in _listing(tasks, Task.id).items()},
        "task": select(*_columns(Task, [*TASK_COLUMNS, "task_dir"])).where(
            Task.id == bindparam("task_id")
        ),
        "task.attempts": select(*_columns(TaskAttempt, fields(AttemptView)))
        .where(TaskAttempt.task_id == bindparam("task_id"))
        .order_by(TaskAttempt.attempt),
        "task.history": select(*_columns(TaskEvent, fields(TaskEventView)))
        .where(TaskEvent.task_id == bindparam("task_id"))
        .order_by(TaskEvent.id),
        "task.running": select(*subtask_columns)
        .where(Subtask.task_id == bindparam("task_id"), Subtask.state == bindparam("state"))
        .order_by(Subtask.index),
        "task.jobs": select(*_columns(BatchJob, list(BatchJob.__table__.c.keys())))
        .where(BatchJob.task_id == bindparam("task_id"))
        .order_by(BatchJob.id),
        **{f"subtasks{k}": v for k, v in _listing(subtasks, Subtask.index).items()},
        "subtasks.consumed": select(FileConsumption.subtask_index, DatastoreFile.path)
        .join(DatastoreFile, DatastoreFile.id == FileConsumption.file_id)
        .where(
            FileConsumption.task_id == bindparam("task_id"),
            FileConsumption.attempt == marshaled.scalar_subquery(),
            FileConsumption.subtask_index <= bindparam("last"),
        )
        .order_by(FileConsumption.id),
    }
    return found


class SessionReader:
    """The read statements run in a SQLAlchemy session: rows as tuples, in the statement's
    column order, their JSON decoded as the compiled reads decode it."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._converters: dict[str, compiled_reads.Converters] = {}

    def rows(self, name: str, **params: Any) -> list[Sequence[Any]]:
        statement = statements()[name]
        converting = self._converters.get(name)
        if converting is None:
            kinds = [_kind(column.type) for column in statement.selected_columns]
            converting = self._converters[name] = compiled_reads.converters(
                kinds, compiled_reads.SESSION
            )
        # On the session's connection: its rows as they come, without the ORM's loading
        # (a tenth of a listing of 10,000 tasks); the statements select columns, no objects.
        found = self.session.connection().execute(statement, params)
        return compiled_reads.converted(found, converting)

    def names(self, name: str) -> list[str]:
        return list(statements()[name].selected_columns.keys())

    def task_view(self, columns: Sequence[Any]) -> Any:
        return task_from_columns(columns)


def compiled(engine: Engine) -> dict[str, dict[str, Any]]:
    """Every read statement compiled for ``engine``'s database: its SQL, the order of its
    parameters when the driver takes them by position (None: by name) and the values it
    binds itself, its columns' names and the kind of each (``_kind``: how its value is
    read back, ``compiled_reads._converter``; None: as the driver gives it)."""
    found = {}
    for name, statement in statements().items():
        sql = statement.compile(dialect=engine.dialect)
        found[name] = {
            "sql": str(sql),
            "positions": list(sql.positiontup) if sql.positiontup is not None else None,
            # Values the dialect bound itself (SQLite's ``OFFSET 0`` after a ``LIMIT``).
            "defaults": {key: value for key, value in sql.params.items() if value is not None},
            "names": list(statement.selected_columns.keys()),
            "kinds": [_kind(column.type) for column in statement.selected_columns],
        }
    return found


def _kind(column_type: Any) -> str | None:
    """How a column's value is read back from the driver, as SQLAlchemy's type does."""
    if isinstance(column_type, UTCDateTime):
        return "utc"
    if isinstance(column_type, (JSON, StoredJSON)):
        return "json"
    if isinstance(column_type, Boolean):
        return "bool"
    if isinstance(column_type, EnumType) and column_type.enum_class is not None:
        enum = column_type.enum_class
        return f"enum:{enum.__module__}:{enum.__qualname__}"
    return None


def keep(home: Path) -> None:
    """Keep in ``home`` what a read command in a new process needs to read this database
    without SQLAlchemy (``compiled_reads``): the statements compiled for it, how its
    driver connects as the engine does, and every execution setting's default (a task's
    view shows those its stored settings lack: ``read_views.task_builder``)."""
    url = get_settings().db_url
    engine = engine_for(url)
    args, kwargs = engine.dialect.create_connect_args(engine.url)
    # The dialect's own adapters (psycopg's ``context``) stay behind: the driver's defaults
    # read what the statements select as SQLAlchemy does (``compiled_reads`` converts).
    plain = {key: value for key, value in kwargs.items() if isinstance(value, PLAIN)}
    connect = {"args": list(args), "kwargs": {**plain, **connect_args(url)}}
    compiled_reads.keep(
        home, engine.dialect.name, connect, compiled(engine), with_execution_defaults({})
    )
