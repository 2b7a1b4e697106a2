"""The datastore ledger as an operator reads it: which files there are and who produced
each (``files``), and the chain of producers behind one file back to the data received
(``lineage``), with each task's parameter values and definition version."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.listing import FILES_SHOWN as DEFAULT_LIMIT
from pipeline.domain.models import DatastoreFile, FileConsumption, PipelineInstance, Task
from pipeline.engine import attempts
from pipeline.engine.datastore_ledger import consumed_by, current_rows
from pipeline.errors import InvalidInput, NotFound
from pipeline.operations.queries import Listing
from pipeline.operations.views import (
    FileView,
    LineageModel,
    LineageStep,
    LineageView,
    event_line,
    file_view,
)


def files(
    instance: int | None = None,
    task: int | None = None,
    unit: str | None = None,
    path: str | None = None,
    history: bool = False,
    limit: int | None = DEFAULT_LIMIT,
) -> list[FileView]:
    """The rows of ``files_listing``: the first ``limit`` (None: every one)."""
    return files_listing(instance, task, unit, path, history, limit).rows  # type: ignore[no-any-return]


def files_listing(
    instance: int | None = None,
    task: int | None = None,
    unit: str | None = None,
    path: str | None = None,
    history: bool = False,
    limit: int | None = None,
    offset: int = 0,
) -> Listing:
    """Ledger rows, oldest first: the current version of each file, or with ``history``
    the superseded ones too, from the ``offset``-th; every one, or ``limit``; and how many
    there are in all. The files of an instance or a task are listed whether a later store
    has superseded them or not: what it produced is its history."""
    query = (
        select(DatastoreFile, Task.stale)
        .outerjoin(Task, Task.id == DatastoreFile.task_id)
        .where(~DatastoreFile.placing)  # not versions until their store commits
    )
    if instance is not None:
        query = query.where(DatastoreFile.instance_id == instance)
    if task is not None:
        query = query.where(DatastoreFile.task_id == task)
    if unit is not None:
        query = query.where(DatastoreFile.unit_of_work == unit)
    if path is not None:
        query = query.where(DatastoreFile.path == path.strip("/"))
    if not (history or instance is not None or task is not None):
        query = query.where(DatastoreFile.superseded_at.is_(None))
    page = query.order_by(DatastoreFile.id).offset(offset)
    if limit is not None:
        page = page.limit(limit)
    with transaction() as session:
        rows = [file_view(row, stale) for row, stale in session.execute(page)]
        if offset == 0 and (limit is None or len(rows) < limit):
            total = len(rows)
        else:
            counted = query.with_only_columns(DatastoreFile.id).order_by(None).subquery()
            total = session.scalar(select(func.count()).select_from(counted)) or 0
        return Listing(rows, total)


def lineage(path: str, version: str | int | None = None) -> LineageView:
    """The producers behind a version of ``path`` (its current one unless ``version``
    names another: its ledger id, or a prefix of its SHA-256): a step per file, breadth
    first from ``path``, each with its producing task's parameter values and definition
    version and the ids of the files that subtask consumed; received and found files end
    the chain. A step's file says whether it is still its path's current version."""
    path = path.strip("/")
    with transaction() as session:
        start = _version(session, path, version)
        steps: list[LineageStep] = []
        seen, todo = {start.id}, [start]
        while todo:
            row = todo.pop(0)
            inputs = _consumed_by_producer(session, row)
            steps.append(_step(session, row, [r.id for r in inputs]))
            for consumed in inputs:
                if consumed.id not in seen:
                    seen.add(consumed.id)
                    todo.append(consumed)
        return LineageView(path=start.path, steps=steps)


#: The shortest SHA-256 prefix that names a version.
SHA_PREFIX_MIN = 6


def _version(session: Session, path: str, version: str | int | None) -> DatastoreFile:
    """The ledger row of ``path``'s current version, or of the one ``version`` names."""
    if version is None or str(version) == "":
        start = current_rows(session, [path]).get(path)
        if start is None:
            raise NotFound(f"no file {path!r} in the datastore ledger (see 'pipeline files')")
        return start  # type: ignore[no-any-return]
    named = str(version).strip().lower()
    query = select(DatastoreFile).where(DatastoreFile.path == path, ~DatastoreFile.placing)
    if session.scalars(query.limit(1)).first() is None:
        raise NotFound(f"no file {path!r} in the datastore ledger (see 'pipeline files')")
    if named.isdigit():
        rows = list(session.scalars(query.where(DatastoreFile.id == int(named))))
    elif len(named) >= SHA_PREFIX_MIN and all(c in "0123456789abcdef" for c in named):
        rows = list(session.scalars(query.where(DatastoreFile.sha256.startswith(named))))
    else:
        raise InvalidInput(
            f"version {str(version)[:80]!r}: give a ledger id or at least {SHA_PREFIX_MIN}"
            " hex digits of a SHA-256"
        )
    if not rows:
        raise NotFound(
            f"no version {named!r} of {path!r} in the datastore ledger"
            " (see 'pipeline files --history --path')"
        )
    if len({row.sha256 for row in rows}) > 1:
        raise InvalidInput(f"version {named!r} of {path!r} is ambiguous: give more digits")
    return rows[-1]


def _consumed_by_producer(session: Session, row: DatastoreFile) -> list[DatastoreFile]:
    """The files the subtask that produced ``row`` was given (by the marshal of its attempt
    or, after resubmits, the last marshal before it)."""
    if row.task_id is None:
        return []
    return list(
        session.scalars(
            select(DatastoreFile)
            .join(FileConsumption, FileConsumption.file_id == DatastoreFile.id)
            .where(*consumed_by(row.task_id, row.attempt, row.subtask_index))
            .order_by(DatastoreFile.path)
        )
    )


def _step(session: Session, row: DatastoreFile, inputs: list[int]) -> LineageStep:
    parameters: dict[str, Any] = {}
    event = None
    if row.instance_id is not None:
        instance = session.get(PipelineInstance, row.instance_id)
        frozen = instance.parameters
        parameters = {name: frozen[name] for name in row.parameter_versions if name in frozen}
        event = event_line(instance.event)
    ran = attempts.latest(session, row.task_id, row.attempt) if row.task_id is not None else None
    return LineageStep(
        file=file_view(row, row.task_id is not None and session.get(Task, row.task_id).stale),
        definition_version=row.definition_version,
        parameters=parameters,
        models=[
            LineageModel(model_type=kind, version=p["version"], sha256=p["sha256"], name=p["name"])
            for kind, p in (ran.models if ran else {}).items()
        ],
        code_version=ran.code if ran else None,
        event=event,
        inputs=inputs,
    )
