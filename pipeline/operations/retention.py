"""Retention: removing what the datastore and the task directories no longer need.

``prune_datastore`` removes the bytes of old versions under a policy (settings
``retention_keep_last`` and ``retention_keep_days``, or given): it keeps every current
version, the newest ``keep_last`` versions of every path, every version stored since the
cut-off, and every version an instance submitted since then (or still running) produced
or consumed. A pruned version's ledger row stays, marked ``pruned_at``, so lineage still
answers for it; its object goes once no unpruned version shares its bytes. It also
removes what crashed stores left behind: objects no version names and staged files,
each an hour old at least (a store in progress has them for moments).

``prune_task_dirs`` removes the task directories of tasks COMPLETE without failures (no
restart but one from the beginning, which builds a new directory, can want them) and of
every attempt but a task's current one, last changed before a cut-off.

Both say first what they would remove with ``dry_run``, and take a ``progress`` callback
(done, total) for the command line's progress bar.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Iterator
from contextlib import suppress
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.models import (
    DatastoreFile,
    FileConsumption,
    Model,
    PipelineInstance,
    Task,
    utcnow,
)
from pipeline.domain.states import STOPPED_STATES
from pipeline.engine import datastore
from pipeline.engine.datastore_ledger import PATHS_PER_QUERY
from pipeline.errors import InvalidInput, shown
from pipeline.operations.views import DatastorePruneView, TaskDirsPruneView
from pipeline.settings import get_settings

#: Left alone by the sweep of objects and staged files: a store may be using them.
LEFT_BEHIND_AFTER = 3600.0
#: ``30d``, ``12h``, ``90m``, ``3600s``: an age.
AGE = re.compile(r"^(\d+(?:\.\d+)?)([smhd])$")
SECONDS_PER = {"s": 1, "m": 60, "h": 3600, "d": 86400}

Progress = Callable[[int, int], None]


def _no_progress(done: int, total: int) -> None:
    """No progress bar."""


def parse_since(text: str | datetime | None, now: datetime | None = None) -> datetime | None:
    """A cut-off: an ISO 8601 date or time (UTC unless it says), or an age (``30d``,
    ``12h``, ``90m``, ``3600s``) before ``now``; refused in one line otherwise."""
    if text is None or isinstance(text, datetime):
        return text
    now = now or utcnow()
    given = text.strip()
    age = AGE.match(given)
    if age:
        try:
            return now - timedelta(seconds=float(age.group(1)) * SECONDS_PER[age.group(2)])
        except OverflowError:
            raise InvalidInput(f"{shown(text)} is further back than any date") from None
    try:
        moment = datetime.fromisoformat(given)
    except ValueError:
        raise InvalidInput(
            f"{shown(text)} is neither a date (2026-11-30) nor an age (30d, 12h, 90m, 3600s)"
        ) from None
    moment = moment if moment.tzinfo else moment.replace(tzinfo=UTC)
    if moment > now:
        raise InvalidInput(f"{shown(text)} is in the future")
    return moment


def prune_datastore(
    keep_last: int | None = None,
    keep_since: str | datetime | None = None,
    dry_run: bool = False,
    progress: Progress = _no_progress,
) -> DatastorePruneView:
    """Remove the bytes of the versions the policy does not keep (module docstring)."""
    settings = get_settings()
    keep = settings.retention_keep_last if keep_last is None else keep_last
    if keep < 1:
        raise InvalidInput(f"keep-last {keep}: every path keeps its newest version at least")
    since = parse_since(keep_since) or utcnow() - timedelta(days=settings.retention_keep_days)
    root = datastore.require(settings.datastore)
    with transaction() as session:
        chosen = _prunable(session, keep, since)
        shas = {sha for _, sha in chosen}
        still_used = _used_elsewhere(session, shas, {file_id for file_id, _ in chosen})
        freed = sorted(shas - still_used)
        if not dry_run:
            ids = [file_id for file_id, _ in chosen]
            now = utcnow()
            for start in range(0, len(ids), PATHS_PER_QUERY):
                session.execute(
                    update(DatastoreFile)
                    .where(DatastoreFile.id.in_(ids[start : start + PATHS_PER_QUERY]))
                    .values(pruned_at=now)
                    .execution_options(synchronize_session=False)
                )
    # The rows first, then the bytes: a prune that dies between leaves objects no version
    # names, which the next one removes.
    removed = 0
    for done, sha in enumerate(freed, start=1):
        removed += _remove(datastore.object_path(root, sha), dry_run)
        progress(done, len(freed))
    left_objects, left_bytes = _left_behind(root, dry_run)
    return DatastorePruneView(
        dry_run=dry_run,
        keep_last=keep,
        keep_since=since.isoformat(timespec="seconds"),
        versions=len(chosen),
        objects=len(freed),
        bytes=removed + left_bytes,
        left_behind=left_objects,
    )


def _prunable(session: Session, keep_last: int, since: datetime) -> list[tuple[int, str]]:
    """(id, SHA-256) of every version the policy does not keep."""
    ranked = (
        select(
            DatastoreFile.id,
            DatastoreFile.sha256,
            DatastoreFile.instance_id,
            DatastoreFile.stored_at,
            DatastoreFile.superseded_at,
            DatastoreFile.pruned_at,
            func.row_number()
            .over(partition_by=DatastoreFile.path, order_by=DatastoreFile.id.desc())
            .label("newest"),
        )
        .where(~DatastoreFile.placing)  # a store's, not committed yet
        .subquery()
    )
    kept_instances = select(PipelineInstance.id).where(
        or_(
            PipelineInstance.created_at >= since,
            PipelineInstance.state.not_in(list(STOPPED_STATES)),
        )
    )
    consumed_by_kept = (
        select(FileConsumption.file_id)
        .join(Task, Task.id == FileConsumption.task_id)
        .where(Task.instance_id.in_(kept_instances))
    )
    return [
        (file_id, sha)
        for file_id, sha in session.execute(
            select(ranked.c.id, ranked.c.sha256).where(
                ranked.c.newest > keep_last,
                ranked.c.superseded_at.is_not(None),
                ranked.c.pruned_at.is_(None),
                ranked.c.stored_at < since,
                or_(ranked.c.instance_id.is_(None), ranked.c.instance_id.not_in(kept_instances)),
                ranked.c.id.not_in(consumed_by_kept),
            )
        )
    ]


def _used_elsewhere(session: Session, shas: set[str], pruning: set[int]) -> set[str]:
    """Of ``shas``, those a version not pruned (and not being pruned) still has."""
    used: set[str] = set()
    listed = sorted(shas)
    for start in range(0, len(listed), PATHS_PER_QUERY):
        for file_id, sha in session.execute(
            select(DatastoreFile.id, DatastoreFile.sha256).where(
                DatastoreFile.sha256.in_(listed[start : start + PATHS_PER_QUERY]),
                DatastoreFile.pruned_at.is_(None),
            )
        ):
            if file_id not in pruning:
                used.add(sha)
        # A model's bytes are kept forever (the registry), whatever the versions share.
        used.update(
            session.scalars(
                select(Model.sha256).where(
                    Model.sha256.in_(listed[start : start + PATHS_PER_QUERY])
                )
            )
        )
    return used


def _remove(path: Path, dry_run: bool) -> int:
    """Remove a file (unless ``dry_run``); the bytes it held (0 if it was gone)."""
    try:
        size = path.stat().st_size
        if not dry_run:
            path.unlink()
    except FileNotFoundError:
        return 0
    return size


def _left_behind(root: Path, dry_run: bool) -> tuple[int, int]:
    """Remove objects no unpruned version names and staged files, each at least
    ``LEFT_BEHIND_AFTER`` old: what crashed or refused stores left; (files, bytes)."""
    cutoff = time.time() - LEFT_BEHIND_AFTER
    files = freed = 0
    objects = root / datastore.OBJECTS_DIR
    for directory in sorted(objects.glob("??")) if objects.is_dir() else []:
        names = {entry.name: entry for entry in os.scandir(directory) if entry.is_file()}
        with transaction() as session:
            named = _used_elsewhere(session, set(names), set())
        for name, entry in names.items():
            if name not in named and _older(entry, cutoff):
                files += 1
                freed += _remove(Path(entry.path), dry_run)
    for staged in _staged(root):
        if _older(staged, cutoff):
            files += 1
            freed += _remove(Path(staged.path), dry_run)
    return files, freed


def _staged(root: Path) -> Iterator[os.DirEntry[str]]:
    """Every file in a staging directory under ``root``."""
    for directory, subdirectories, _ in os.walk(root):
        if os.path.basename(directory) == datastore.STAGING_DIR:
            subdirectories.clear()
            yield from (entry for entry in os.scandir(directory) if entry.is_file())


def _older(entry: os.DirEntry[str], cutoff: float) -> bool:
    """Last changed (linked, renamed, made read-only) before ``cutoff``."""
    with suppress(FileNotFoundError):
        return entry.stat().st_ctime < cutoff
    return False


def prune_task_dirs(
    older_than: str | datetime,
    dry_run: bool = False,
    progress: Progress = _no_progress,
) -> TaskDirsPruneView:
    """Remove the task directories no restart can want (module docstring), last changed
    before ``older_than`` (a date or an age)."""
    cutoff = parse_since(older_than)
    if cutoff is None:
        raise InvalidInput("taskdirs prune needs --older-than (a date, or an age such as 30d)")
    tasks_dir = get_settings().tasks_dir
    with transaction() as session:
        wanted = {
            Path(task_dir).name
            for task_dir in session.scalars(
                select(Task.task_dir).where(
                    Task.task_dir != "",
                    or_(~Task.done, Task.failed_subtasks > 0, Task.updated_at >= cutoff),
                )
            )
        }
    found = [
        entry
        for entry in (os.scandir(tasks_dir) if tasks_dir.is_dir() else [])
        if entry.is_dir(follow_symlinks=False)
        and entry.name not in wanted
        and entry.stat(follow_symlinks=False).st_mtime < cutoff.timestamp()
    ]
    freed = 0
    for done, entry in enumerate(found, start=1):
        freed += _tree_bytes(Path(entry.path))
        if not dry_run:
            shutil.rmtree(entry.path, ignore_errors=True)
        progress(done, len(found))
    return TaskDirsPruneView(
        dry_run=dry_run,
        older_than=cutoff.isoformat(timespec="seconds"),
        directories=len(found),
        bytes=freed,
    )


def _tree_bytes(directory: Path) -> int:
    total = 0
    for path, _, names in os.walk(directory):
        for name in names:
            with suppress(OSError):
                total += os.lstat(os.path.join(path, name)).st_size
    return total
