"""A delivery: one directory laid out as the datastore (each file at its data file type's
location, the unit of work its placeholders' values), model files in ``models/``, and its
manifest at the top, the one file named ``*.sha256`` (``sha256sum`` format, relative
paths). ``pipeline datastore import DIR`` with no ``--type``/``--unit`` receives one, and
an event handler receives one per label.

All or nothing, as ``receipt``: every file is classified (the data file type whose
location and pattern it matches, or the model type whose pattern a model matches) and
checked against the manifest (no file missing, none extra, every checksum of the bytes
actually copied) before anything is placed; then every file is placed and recorded in one
transaction. Received again, a file whose current version is this receipt's bytes
already is left as it is (``already``), so a delivery received twice (an event handled
again after a crash) makes no second version.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.definitions import UNIT_VALUE, Definition
from pipeline.domain.models import Dataset, DatastoreFile, utcnow
from pipeline.engine import datastore, deliveries, model_registry
from pipeline.engine.datastore_ledger import current_rows, record_received
from pipeline.engine.deliveries import SHA256_MANIFEST_SUFFIX
from pipeline.errors import InvalidInput, NotFound
from pipeline.operations import manifests
from pipeline.operations import receipt as receipts
from pipeline.operations.receipt import declared
from pipeline.operations.views import DeliveryView, ReceivedFile, model_view
from pipeline.settings import get_settings

#: Where a delivery's model files are.
MODELS_DIR = "models"
#: A manifest's name ends so.
MANIFEST_SUFFIX = SHA256_MANIFEST_SUFFIX


@dataclass(frozen=True)
class Classified:
    """A delivered file: its relative path, and its data file type and unit (or model type)."""

    path: str
    data_file_type: str = ""
    unit: str = ""
    model_type: str = ""


def manifest_of(directory: Path) -> Path:
    """The delivery's manifest: the one ``*.sha256`` file (or Ziggy's ``*-manifest.xml``)
    at its top."""
    found = sorted(
        [*directory.glob(f"*{MANIFEST_SUFFIX}"), *directory.glob(f"*{manifests.SUFFIX}")]
    )
    if not found:
        raise InvalidInput(
            f"{directory}: no manifest (a delivery holds one *{MANIFEST_SUFFIX} file at its top,"
            f" sha256sum format, relative paths, or Ziggy's *{manifests.SUFFIX})"
        )
    if len(found) > 1:
        raise InvalidInput(
            f"{directory}: {len(found)} manifests ({', '.join(p.name for p in found[:3])}):"
            " a delivery holds one"
        )
    return found[0]


def receive_delivery(
    directory: Path,
    pipeline: str | None = None,
    received_by: Mapping[str, Any] | None = None,
) -> DeliveryView:
    """Receive the delivery in ``directory`` (see the module docstring); ``received_by``:
    a data receipt task's fields, recorded with its files, and the delivery cleared as a
    Ziggy manifest's is (the files removed, manifest and acknowledgement kept under the
    home) whatever its manifest's format."""
    if "\x00" in str(directory) or not directory.exists():  # a NUL names no file
        raise NotFound(f"{str(directory)[:200]!r}: no such directory")
    if not directory.is_dir():
        raise InvalidInput(f"{directory}: not a directory")
    root = datastore.require(get_settings().datastore)
    manifest = manifest_of(directory)
    with transaction() as session:
        known = declared(session, pipeline)
    files = [_classify(known, path) for path in _paths(directory, manifest)]
    ziggy = manifests.read(manifest, [f.path for f in files]) if _ziggy(manifest) else None
    expected = (
        {} if ziggy else receipts.read_manifest(manifest, [f.path for f in files], nested=True)
    )
    delivered = directory.resolve()
    name = f"{manifest.name} ({delivered})"
    data = [f for f in files if f.data_file_type]
    made: list[Path] = []
    for found in data:
        made += receipts.missing_parents(root, (root / found.path).parent)
    staged: list[tuple[Classified, receipts.Received]] = []
    try:
        for found in data:
            copy = datastore.stage_file(root, directory / found.path, found.path, link=False)
            staged.append((found, receipts.Received(found.path, copy)))
            _check(ziggy, expected, found.path, copy.kept, copy.size, copy.sha256)
        models_given = [f for f in files if f.model_type]
        for found in models_given:
            kept = datastore.keep(root, directory / found.path, link=False)
            _check(ziggy, expected, found.path, kept.path, kept.size, kept.sha256)
        datastore.flush(root)
        with transaction() as session:
            if ziggy is not None:
                _claim_dataset(session, ziggy, name)
            current = current_rows(session, [f.path for f in data])
            fresh = [
                (found, got)
                for found, got in staged
                if not _same(current.get(found.path), got.staged.sha256, name)
            ]
            # Models first: a version refused places no data file.
            models = []
            for found in models_given:
                declaring = next(d for d in known if found.model_type in d.model_types)
                model, _ = model_registry.receive(
                    session,
                    root,
                    directory / found.path,
                    found.model_type,
                    declaring.model_types[found.model_type],
                    name,
                )
                models.append(model_view(model))
            groups: dict[tuple[str, str], list[receipts.Received]] = {}
            for found, got in fresh:
                groups.setdefault((found.data_file_type, found.unit), []).append(got)
            rows = []
            for (kind, unit), got in groups.items():
                rows += record_received(
                    session, root, [g.staged for g in got], kind, unit, name, received_by
                )
    except BaseException:
        for made_here in made:
            with suppress(OSError):
                made_here.rmdir()
        raise
    units: dict[str, list[str]] = {}
    for found in data:
        if found.unit not in units.setdefault(found.data_file_type, []):
            units[found.data_file_type].append(found.unit)
    if ziggy is not None:
        acknowledgement = manifests.acknowledge(ziggy)
    else:
        acknowledgement = receipts.acknowledge(manifest, [got for _, got in staged])
    if ziggy is not None or received_by is not None:
        acknowledgement = _kept_with_acknowledgement(directory, manifest, acknowledgement, files)
    return DeliveryView(
        receipt=name,
        units=units,
        files=[ReceivedFile(path=r["path"], size=r["size"], sha256=r["sha256"]) for r in rows],
        already=len(staged) - len(fresh),
        models=models,
        acknowledgement=str(acknowledgement),
    )


def receive_waiting(directory: Path, pipeline: str, received_by: Mapping[str, Any]) -> str:
    """Ziggy's data receipt, as a task of an instance (``engine.deliveries``): receive the
    delivery in ``directory``, recorded with the task, and clear it; afterwards nothing may
    remain there (else the task fails, naming what is left, as Ziggy's does). A task whose
    delivery is gone already received it (a worker that died after the receipt): said so.
    The line its history keeps."""
    if deliveries.has_manifest(directory):
        received = receive_delivery(directory, pipeline, received_by)
        units = sorted({u for found in received["units"].values() for u in found})
        said = (
            f"received {len(received['files']) + received['already']} files"
            f" and {len(received['models'])} models of {received['receipt']}"
            f" for {', '.join(units) or 'no unit'}"
        )
    else:
        with transaction() as session:
            before = session.scalar(
                select(func.count(DatastoreFile.id)).where(
                    DatastoreFile.task_id == received_by["task_id"]
                )
            )
        if not before:
            raise InvalidInput(f"{directory}: no delivery here (no manifest)")
        said = f"received before: {before} files"
    if directory != get_settings().receipt:
        with suppress(OSError):  # not empty: said below
            directory.rmdir()
    left = sorted(
        relative
        for relative in (p.relative_to(directory).as_posix() for p in directory.rglob("*"))
        if (directory / relative).is_file() and not _not_delivered(relative)
    )
    if directory.exists() and left:
        raise InvalidInput(
            f"{directory}: left after the receipt: {', '.join(left[:5])}"
            + (f" and {len(left) - 5} more" if len(left) > 5 else "")
        )
    return said


def _not_delivered(relative: str) -> bool:
    """An event's ready file at the top of a delivery's directory (a top-level delivery
    shares the handler's directory with them) is no file of the delivery."""
    return "/" not in relative and deliveries.READY_FILE.match(relative) is not None


def _ziggy(manifest: Path) -> bool:
    return manifests.is_manifest(manifest)


def _check(
    ziggy: manifests.Manifest | None,
    expected: dict[str, str],
    name: str,
    copy: str | Path,
    size: int,
    sha256: str,
) -> None:
    """Refuse a copied file unless it is as the manifest says."""
    if ziggy is not None:
        manifests.check(ziggy, name, Path(copy), size, sha256)
    elif sha256 != expected[name].lower():
        raise InvalidInput(f"{name}: checksum differs from the manifest's")


def _claim_dataset(session: Session, manifest: manifests.Manifest, receipt: str) -> None:
    """Record the manifest's dataset id, refusing one received before (but 0)."""
    if manifest.dataset_id == manifests.REUSABLE_DATASET:
        return
    used = session.get(Dataset, manifest.dataset_id)
    if used is not None:
        raise InvalidInput(
            f"{manifest.path.name}: datasetId {manifest.dataset_id} was received already"
            f" ({used.receipt}, {used.received_at:%Y-%m-%d %H:%M}): a dataset is received once"
        )
    session.add(Dataset(dataset_id=manifest.dataset_id, receipt=receipt))
    session.flush()


def _kept_with_acknowledgement(
    directory: Path, manifest: Path, acknowledgement: Path, files: list[Classified]
) -> Path:
    """As Ziggy does once a delivery is in: the files received removed from ``directory``
    (and the directories they leave empty), its manifest and acknowledgement moved to
    ``manifests/`` under the home, in a directory of the receipt's own; where they are."""
    for found in files:
        with suppress(FileNotFoundError):
            (directory / found.path).unlink()
        parent = (directory / found.path).parent
        while parent != directory:
            with suppress(OSError):  # not empty
                parent.rmdir()
            parent = parent.parent
    kept = get_settings().home / "manifests" / f"{utcnow():%Y%m%dT%H%M%S%f}-{manifest.name}"
    kept.mkdir(parents=True)
    for file in (manifest, acknowledgement):
        shutil.move(file, kept / file.name)
    return kept / acknowledgement.name


def _same(row: object, sha256: str, receipt: str) -> bool:
    """Is the current version ``row`` these bytes from this receipt already?"""
    return row is not None and row.sha256 == sha256 and row.receipt == receipt  # type: ignore[attr-defined]


def _paths(directory: Path, manifest: Path) -> list[str]:
    """Every file of the delivery but its manifest and acknowledgement, and the ready
    files beside it (``_not_delivered``), as relative paths."""
    inside = directory.resolve()
    ack = manifest.name[: -len(manifests.SUFFIX)] + manifests.ACK_SUFFIX
    skip = {manifest.name, manifest.name + receipts.ACK_SUFFIX, ack}
    found = []
    for folder, subfolders, names in os.walk(directory):
        subfolders.sort()
        for entry in sorted(names):
            path = Path(folder) / entry
            relative = path.relative_to(directory).as_posix()
            if relative in skip or _not_delivered(relative):
                continue
            if path.is_symlink() and not path.resolve().is_relative_to(inside):
                raise InvalidInput(f"{relative}: a symbolic link out of {directory}")
            if not path.is_file():
                raise InvalidInput(f"{relative}: not a regular file")
            found.append(relative)
    if not found:
        raise InvalidInput(f"{directory}: no files to receive")
    return found


def _classify(known: list[Definition], path: str) -> Classified:
    """What ``path`` of a delivery is: a model (in ``models/``) or a data file."""
    folder, _, name = path.rpartition("/")
    if folder == MODELS_DIR:
        kind = model_registry.model_type_of(known, name)
        if kind is None:
            raise InvalidInput(f"{path}: matches no model type's pattern")
        return Classified(path, model_type=kind)
    matches = {}
    for definition in known:
        for kind_name, kind in definition.data_file_types.items():
            unit = kind.unit_in(folder, UNIT_VALUE)
            if unit is not None and kind.matches(name):
                matches[kind_name] = unit
    if not matches:
        raise InvalidInput(
            f"{path}: matches no data file type's location and pattern"
            " (a delivery is laid out as the datastore; models go in models/)"
        )
    if len(matches) > 1:
        raise InvalidInput(f"{path}: matches data file types {', '.join(sorted(matches))}")
    [(kind_name, unit)] = matches.items()
    return Classified(path, data_file_type=kind_name, unit=unit)
