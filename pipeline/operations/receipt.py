"""Data receipt: files an operator brings into the datastore, checked and recorded.

``receive`` copies the files of one directory into the datastore as one data file type
and unit of work. Everything is checked before anything is placed: names (no path out of
the directory, every file matching the type's pattern) and, with a manifest in
``sha256sum`` format (``HASH  NAME`` per line), every file's checksum against the bytes
actually written, with no file missing and none extra. A refused receipt places nothing.
Accepted, the files are renamed into place and recorded as ``received`` in one
transaction, and an acknowledgement listing them is written beside the manifest.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pydantic import BaseModel
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain import definitions
from pipeline.domain.definitions import UNIT_VALUE, DataFileType, Definition
from pipeline.engine import datastore
from pipeline.engine.datastore import Staged
from pipeline.engine.datastore_ledger import record_received
from pipeline.errors import InvalidInput, NotFound
from pipeline.operations.views import ReceiptView, ReceivedFile
from pipeline.settings import get_settings

#: What each level of a unit of work may be called: one path component.
UNIT_PATTERN = re.compile(rf"^{UNIT_VALUE}$")
#: A ``sha256sum`` line: the checksum, a space, then a space (text) or ``*`` (binary) and
#: the name; a leading backslash says the name is escaped (``\\`` for a backslash, ``\n``
#: for a newline), as sha256sum writes a name holding either.
MANIFEST_LINE = re.compile(r"^(\\?)([0-9a-fA-F]{64}) [ *](.+)$")
#: sha256sum's escapes in an escaped name.
ESCAPES = {"\\\\": "\\", "\\n": "\n"}
MANIFEST_FORMAT = "expected a SHA-256 checksum, two spaces and a name (sha256sum format)"
#: The acknowledgement's name: the manifest's, with this suffix.
ACK_SUFFIX = ".ack"


@dataclass(frozen=True)
class Received:
    """A file accepted into the datastore."""

    name: str
    staged: Staged


def receive(
    directory: Path,
    data_file_type: str,
    unit: str,
    manifest: Path | None = None,
    pipeline: str | None = None,
) -> ReceiptView:
    """Import the files of ``directory`` as ``data_file_type`` for ``unit`` (see the module
    docstring); what was imported, and where the acknowledgement was written."""
    kind = _data_file_type(data_file_type, pipeline)
    levels = len(kind.placeholders)
    if len(unit.split("/")) != levels or not all(map(UNIT_PATTERN.match, unit.split("/"))):
        said = "one name" if levels == 1 else f"{levels} names joined by '/' ({kind.location})"
        raise InvalidInput(f"unit of work {unit!r} must be {said} of letters, digits, _.+=-")
    for given in (directory, manifest):
        if given is not None and "\x00" in str(given):
            raise InvalidInput(f"{str(given)[:80]!r}: a file name cannot hold a NUL character")
    if not directory.is_dir():
        raise InvalidInput(f"{directory}: not a directory")
    root = datastore.require(get_settings().datastore)
    names = _names(directory, kind, data_file_type, manifest)
    expected = read_manifest(manifest, names) if manifest else {}
    destination = root / kind.directory(unit)
    made = missing_parents(root, destination)  # removed again if the receipt is refused
    staged: list[Received] = []
    try:
        for name in names:
            # A copy: the delivery stays the operator's to change or delete.
            path = f"{kind.directory(unit)}/{name}"
            copy = datastore.stage_file(root, directory / name, path, link=False)
            staged.append(Received(name, copy))
            if expected and copy.sha256 != expected[name].lower():
                raise InvalidInput(f"{name}: checksum differs from the manifest's")
        datastore.flush(root)
        # Named by its manifest and its delivery directory: two deliveries' manifests may
        # share a name.
        delivered = directory.resolve()
        receipt = f"{manifest.name} ({delivered})" if manifest else str(delivered)
        with transaction() as session:
            copies = [received.staged for received in staged]
            rows = record_received(session, root, copies, data_file_type, unit, receipt)
    except BaseException:
        for made_here in made:
            with suppress(OSError):  # not empty: another receipt or store is using it
                made_here.rmdir()
        raise
    acknowledgement = acknowledge(manifest, staged) if manifest else None
    return ReceiptView(
        receipt=receipt,
        data_file_type=data_file_type,
        unit_of_work=unit,
        files=[
            ReceivedFile(path=row["path"], size=row["size"], sha256=row["sha256"]) for row in rows
        ],
        acknowledgement=str(acknowledgement) if acknowledgement else None,
    )


def missing_parents(root: Path, directory: Path) -> list[Path]:
    """``directory`` and its parents under ``root`` that do not exist yet, deepest first."""
    missing = []
    while directory != root and not directory.exists():
        missing.append(directory)
        directory = directory.parent
    return missing


def _data_file_type(name: str, pipeline: str | None) -> DataFileType:
    """The type called ``name`` in the newest definition of ``pipeline`` or, unnamed, of
    every pipeline that declares it (they must agree on where it lives)."""
    with transaction() as session:
        return agreed(session, "data file type", name, pipeline, lambda d: d.data_file_types)


def declared(session: Session, pipeline: str | None = None) -> list[Definition]:
    """The newest definition of ``pipeline``, or of every pipeline."""
    stored = [definitions.get(session, pipeline)] if pipeline else definitions.list_latest(session)
    return [definitions.parse(row.spec) for row in stored]


Declared = TypeVar("Declared", bound=BaseModel)


def agreed(
    session: Session,
    what: str,
    name: str,
    pipeline: str | None,
    table: Callable[[Definition], Mapping[str, Declared]],
) -> Declared:
    """The ``what`` (a data file type, a model type) called ``name`` in ``table`` of the
    newest definition of ``pipeline`` or, unnamed, of every pipeline that declares it:
    they must agree on it."""
    found = {
        definition.name: kind
        for definition in declared(session, pipeline)
        if (kind := table(definition).get(name)) is not None
    }
    if not found:
        where = f"pipeline {pipeline!r}" if pipeline else "any imported pipeline"
        raise NotFound(f"no {what} {name!r} in {where}")
    if len({kind.model_dump_json() for kind in found.values()}) > 1:
        raise InvalidInput(
            f"{what} {name!r} differs in {', '.join(sorted(found))}: name --pipeline"
        )
    return next(iter(found.values()))


def _names(directory: Path, kind: DataFileType, type_name: str, manifest: Path | None) -> list[str]:
    """The names of the files to import, each checked (see the module docstring)."""
    inside = directory.resolve()
    skip = set()
    if manifest and manifest.resolve().parent == inside:
        skip = {manifest.name, manifest.name + ACK_SUFFIX}
    names = []
    for entry in sorted(directory.iterdir()):
        if entry.name in skip:
            continue
        if entry.is_symlink() and not entry.resolve().is_relative_to(inside):
            raise InvalidInput(f"{entry}: a symbolic link out of {directory}")
        if not entry.is_file():
            raise InvalidInput(f"{entry}: not a file (an import takes one directory's files)")
        if not kind.matches(entry.name):
            raise InvalidInput(f"{entry.name}: does not match {type_name}'s pattern {kind.names!r}")
        names.append(entry.name)
    if not names:
        raise InvalidInput(f"{directory}: no files to import")
    return names


def read_manifest(manifest: Path, names: list[str], nested: bool = False) -> dict[str, str]:
    """The manifest's checksum of each file; refused unless it lists exactly ``names``
    (with ``nested``, relative paths under the manifest's directory). A line for the
    manifest itself is passed over: a manifest written into its delivery can list itself,
    with the checksum it had before it was written (as one of Ziggy's deliveries does)."""
    try:
        lines = manifest.read_text().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{manifest}: cannot read ({exc})") from None
    expected: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = MANIFEST_LINE.match(line)
        if not match:
            raise InvalidInput(f"{manifest}:{number}: {MANIFEST_FORMAT}")
        escaped, checksum, name = match.groups()
        if escaped:
            name = re.sub(r"\\[\\n]", lambda found: ESCAPES[found.group(0)], name)
        outside = (
            name.startswith("/") or ".." in name.split("/")
            if nested
            else "/" in name or name in (".", "..")
        )
        if outside:
            raise InvalidInput(f"{manifest}:{number}: {name}: names a file outside the directory")
        if name == manifest.name and name not in names:
            continue
        if name in expected:
            raise InvalidInput(f"{manifest}:{number}: {name}: listed twice")
        expected[name] = checksum
    missing = sorted(set(expected) - set(names))
    if missing:
        hint = ""
        normal = {unicodedata.normalize("NFC", name): name for name in names}
        alike = normal.get(unicodedata.normalize("NFC", missing[0]))
        if alike is not None:
            hint = (
                f" ({alike!r} there differs only in its Unicode normalisation, NFC or NFD:"
                " write the manifest from the files as they are)"
            )
        raise InvalidInput(f"{missing[0]}: in the manifest but not in the directory{hint}")
    extra = sorted(set(names) - set(expected))
    if extra:
        raise InvalidInput(f"{extra[0]}: in the directory but not in the manifest")
    return expected


def acknowledge(manifest: Path, accepted: list[Received]) -> Path:
    """Write, beside the manifest, the accepted files in the manifest's own format."""
    path = manifest.with_name(manifest.name + ACK_SUFFIX)
    path.write_text("".join(f"{r.staged.sha256}  {r.name}\n" for r in accepted))
    return path
