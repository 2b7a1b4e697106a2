"""The datastore: units of work and inputs found by data file type; outputs stored atomically."""

from __future__ import annotations

import os
import shutil
import uuid
from contextlib import suppress
from pathlib import Path

from pipeline.domain.definitions import Definition, Node
from pipeline.errors import InvalidInput

#: Where stored files are written before they are renamed into place.
STAGING_DIR = ".pipeline-staging"


def require(root: Path) -> Path:
    if not root.is_dir():
        raise InvalidInput(f"datastore {root} does not exist (set PIPELINE_DATASTORE_ROOT)")
    return root


def units_of_work(root: Path, definition: Definition, node: Node) -> list[str]:
    """``node``'s units of work: placeholder values under which its first input type has files."""
    kind = definition.data_file_types[node.inputs[0]]
    pattern = kind.location.replace(kind.placeholder, "*")
    position = Path(kind.location).parts.index(kind.placeholder)
    units = {
        directory.relative_to(root).parts[position]
        for directory in root.glob(pattern)
        if directory.is_dir() and any(f.is_file() for f in directory.glob(kind.pattern))
    }
    return sorted(units)


def input_files(root: Path, definition: Definition, node: Node, unit: str) -> list[Path]:
    files: list[Path] = []
    for name in node.inputs:
        kind = definition.data_file_types[name]
        directory = root / kind.directory(unit)
        files.extend(sorted(f for f in directory.glob(kind.pattern) if f.is_file()))
    return files


def describe_inputs(definition: Definition, node: Node) -> str:
    kind = definition.data_file_types[node.inputs[0]]
    return f"{node.inputs[0]} files ({kind.location}/{kind.pattern})"


def store_file(source: Path, destination: Path) -> None:
    """Copy ``source`` to ``destination`` atomically: readers see the old file or the whole new one.

    The copy is written in a staging directory beside the destination (on the same file
    system, out of sight of any file-name pattern), flushed to disk, then renamed over it;
    storing the same file twice leaves the same datastore.
    """
    staging = destination.parent / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    temporary = staging / f"{destination.name}.{uuid.uuid4().hex}"
    try:
        with source.open("rb") as reader, temporary.open("wb") as writer:
            shutil.copyfileobj(reader, writer)
            writer.flush()
            os.fsync(writer.fileno())
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
        with suppress(OSError):  # another store may be using it still
            staging.rmdir()
