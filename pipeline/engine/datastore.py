"""The datastore on disk: units of work and files found by data file type; files stored
atomically, hashed as they are written (the ledger of who stored them is
``datastore_ledger``)."""

from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import uuid
from contextlib import suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from pipeline.domain.definitions import Definition, Node
from pipeline.errors import InvalidInput

#: Where stored files are written before they are renamed into place.
STAGING_DIR = ".pipeline-staging"
#: Bytes read at a time when copying or hashing a file.
CHUNK_BYTES = 1 << 20


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


def describe_inputs(definition: Definition, node: Node) -> str:
    kind = definition.data_file_types[node.inputs[0]]
    return f"{node.inputs[0]} files ({kind.location}/{kind.pattern})"


@dataclass(frozen=True)
class Staged:
    """A file put beside its destination in the datastore, not yet renamed into place, with
    its size and SHA-256 as read there."""

    temporary: Path
    destination: Path
    size: int
    sha256: str


def stage_file(source: Path, destination: Path, link: bool = True) -> Staged:
    """Put ``source`` in the staging directory beside ``destination`` (same file system,
    out of sight of any file-name pattern) and hash it; ``place`` renames it over the
    destination, so readers see the old file or the whole new one.

    With ``link``, a hard link where the file system allows (a large output is not
    copied: the task directory and the datastore share it, as marshaled inputs do), a copy
    elsewhere. Not flushed to disk: ``flush`` does that once for all the files of a store.
    """
    staging = destination.parent / STAGING_DIR
    staging.mkdir(parents=True, exist_ok=True)
    temporary = staging / f"{destination.name}.{uuid.uuid4().hex}"
    try:
        if not (link and _linked(source, temporary)):
            shutil.copyfile(source, temporary)
        size, sha256 = _hash(temporary)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return Staged(temporary, destination, size, sha256)


def _linked(source: Path, link: Path) -> bool:
    """Hard-link ``link`` to ``source``; False on another file system or one without links."""
    try:
        os.link(source, link)
    except OSError:
        return False
    return True


def _hash(path: Path) -> tuple[int, str]:
    digest, size = hashlib.sha256(), 0
    with path.open("rb") as reader:
        while chunk := reader.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def flush(root: Path) -> None:
    """Write every staged file under ``root`` to disk before the ledger records it: one
    ``syncfs`` of the datastore's file system rather than an fsync per file (which cost
    about 1.5 ms a file here, more than a short subtask)."""
    descriptor = os.open(root, os.O_RDONLY)
    try:
        if _libc().syncfs(descriptor) != 0:
            os.sync()
    finally:
        os.close(descriptor)


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def place(staged: Staged) -> int:
    """Rename a staged file over its destination; the stored file's modification time (ns)."""
    os.replace(staged.temporary, staged.destination)
    with suppress(OSError):  # another store may be using the staging directory still
        staged.temporary.parent.rmdir()
    return staged.destination.stat().st_mtime_ns


def discard(staged: list[Staged]) -> None:
    """Remove staged files that will not be placed (the store turned out stale)."""
    for file in staged:
        file.temporary.unlink(missing_ok=True)
        with suppress(OSError):
            file.temporary.parent.rmdir()


def fingerprint(path: Path) -> tuple[int, str, int]:
    """Size, SHA-256 and modification time (ns) of a file the pipeline did not write."""
    size, sha256 = _hash(path)
    return size, sha256, path.stat().st_mtime_ns
