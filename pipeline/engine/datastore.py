"""The datastore on disk: units of work and files found by data file type, and the bytes
of every stored version (the ledger of who stored them is ``datastore_ledger``).

Every version's bytes are kept once by content, as ``.pipeline-objects/ab/abcd...`` (its
SHA-256), read-only, until retention removes them: identical bytes are stored once, and a
version stays readable whatever later happens to its path. A datastore path shows its
current version as a hard link to that version's object, renamed into place so readers
see the old version or the new one whole.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import threading
import time
import uuid
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import BinaryIO, NamedTuple

from pipeline.domain.definitions import DataFileType, Definition, Node
from pipeline.errors import InvalidInput
from pipeline.settings import get_settings

#: Where stored files are written before they are renamed into place.
STAGING_DIR = ".pipeline-staging"
#: Times a placement makes its staging directory again when another store removed it.
STAGING_TRIES = 100
#: Every version's bytes, by SHA-256, under the datastore root.
OBJECTS_DIR = ".pipeline-objects"
#: Files and directories of the pipeline's own under the datastore root: never data.
PRIVATE_PREFIX = ".pipeline-"
#: Objects are read-only: an algorithm or an operator writing through a link is refused
#: (unless running as root). Readable as the settings' umask allows (``read_only``).
OBJECT_MODE = 0o444


def read_only() -> int:
    """``OBJECT_MODE`` less what the settings' umask withholds (a private home's stored
    bytes are its owner's alone, a shared one's its group's too)."""
    return OBJECT_MODE & ~get_settings().umask


#: Bytes read at a time when copying or hashing a file.
CHUNK_BYTES = 1 << 20


def require(root: Path) -> Path:
    if not root.is_dir():
        raise InvalidInput(f"datastore {root} does not exist (set PIPELINE_DATASTORE_ROOT)")
    return root


def units_of_work(root: Path, definition: Definition, node: Node) -> list[str]:
    """``node``'s units of work: the placeholders' values (each matching its
    ``unit_regexp``, if any), joined by "/", under which its first input type has files."""
    kind = definition.data_file_types[node.inputs[0]]
    units = set()
    for directory in root.glob(kind.directory("/".join("*" for _ in kind.placeholders))):
        relative = directory.relative_to(root)
        unit = kind.unit_in(relative.as_posix())
        if (
            unit is not None
            and directory.is_dir()
            and not any(part.startswith(PRIVATE_PREFIX) for part in relative.parts)
            and any((directory / name).is_file() for name in names_of(directory, kind))
        ):
            units.add(unit)
    return sorted(units)


def names_of(directory: Path | str, kind: DataFileType) -> list[str]:
    """The names in ``directory`` of type ``kind``, sorted."""
    try:
        names = os.listdir(directory)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(name for name in names if kind.matches(name))


def describe_inputs(definition: Definition, node: Node) -> str:
    kind = definition.data_file_types[node.inputs[0]]
    return f"{node.inputs[0]} files ({kind.describe()})"


@dataclass(frozen=True)
class Staged:
    """A version kept in the object store for ``path`` (under the datastore root), not
    yet placed there, with its size, SHA-256 and the modification time its object has
    (and so, once linked there, the destination). Paths are strings: a store handles
    thousands, and ``pathlib`` cost a third of its time."""

    kept: str
    path: str
    destination: str
    size: int
    sha256: str
    mtime_ns: int
    #: The object's inode: the destination shows this version when it is the same file.
    inode: int


def object_path(root: Path | str, sha256: str) -> Path:
    """Where the bytes with this SHA-256 are kept."""
    return Path(_object_file(str(root), sha256))


def _object_file(root: str, sha256: str) -> str:
    return f"{root}/{OBJECTS_DIR}/{sha256[:2]}/{sha256}"


def stage_file(root: Path, source: Path | str, path: str, link: bool = True) -> Staged:
    """Keep ``source``'s bytes in the object store (``keep``) for ``path`` (under the
    datastore ``root``), where ``place`` puts them. Not flushed to disk: ``flush`` does
    that once for all the files of a store."""
    kept = keep(root, source, link)
    destination = f"{root}/{path}"
    return Staged(kept.path, path, destination, kept.size, kept.sha256, kept.mtime_ns, kept.inode)


def staged_kept(
    root: Path, path: str, sha256: str, size: int, mtime_ns: int, inode: int | None = None
) -> Staged | None:
    """A version a subtask kept as it ended, for ``path``: None unless its object is still
    the file it kept, its modification time (and ``inode``, where known) unchanged
    (retention removes bytes no version names after an hour)."""
    kept = _object_file(str(root), sha256)
    found = _existing(kept, size)
    if found is None or found[0] != mtime_ns or inode not in (None, found[1]):
        return None
    return Staged(kept, path, f"{root}/{path}", size, sha256, mtime_ns, found[1])


class Kept(NamedTuple):
    """Bytes in the object store: their size, SHA-256, object, and the object's
    modification time and inode."""

    size: int
    sha256: str
    path: str
    mtime_ns: int
    inode: int


def keep(root: Path | str, source: Path | str, link: bool = True, preserve: bool = False) -> Kept:
    """Put ``source``'s bytes in the object store unless the same bytes are there already;
    their size, SHA-256, object and the object's modification time (ns).

    With ``link``, the source itself becomes the object, a hard link (a task's output: it
    is not copied, and nothing writes it once it is stored); a copy where links cannot be
    made, or without ``link`` (with ``preserve``, keeping its modification time), hashed as
    copied, so a later change to ``source`` cannot make the SHA-256 lie.
    """
    if link:
        size, sha256, status, kept, existing = _hashed(root, source)
        if existing is not None:
            return Kept(size, sha256, kept, *existing)
        os.chmod(source, read_only())
        try:
            _link(source, kept)
            return Kept(size, sha256, kept, status.st_mtime_ns, status.st_ino)
        except FileExistsError:  # the same bytes, kept by another store meanwhile
            existing = _existing(kept, size)
            if existing is not None:
                return Kept(size, sha256, kept, *existing)
        except OSError:
            pass  # no links here: copy
    return _keep_copy(root, source, preserve)


def _keep_copy(root: Path | str, source: Path | str, preserve: bool) -> Kept:
    """Copy ``source`` into the object store (``_keep_read``)."""
    with open(source, "rb", buffering=0) as reader:
        return _keep_read(str(root), reader, preserve, os.fstat(reader.fileno()).st_size)


def _keep_read(root: str, reader: BinaryIO, preserve: bool, expected: int) -> Kept:
    """Copy what ``reader`` reads into the object store, hashing the bytes as they are
    written (one pass, so the SHA-256 is that of the copy whatever the source does
    meanwhile), and name the copy as its object once whole, unless the same bytes are kept
    already. A file of one chunk is read whole first, and not written at all when its
    bytes are kept already.

    The copy is made without a name (``unnamed``) and linked as its object: nothing of it
    is seen before it is whole, and a copy cut short leaves nothing behind. Where that
    cannot be done, it is made in the staging directory and renamed into place. Plain
    ``os`` calls on strings: a marshal keeps thousands of found files (10,000 of them in
    0.28 s made unnamed, 0.46 s through the staging directory). ``expected``: its size
    as last seen, read at once, no more (a chunk read allocates its whole length first)."""
    head = reader.read(_first_read(expected))
    tail = reader.read(1 if len(head) <= expected else CHUNK_BYTES) if head else b""
    whole = not tail
    if whole:
        sha256 = hashlib.sha256(head).hexdigest()
        existing = _existing(_object_file(root, sha256), len(head))
        if existing is not None:
            return Kept(len(head), sha256, _object_file(root, sha256), *existing)
    replayed = _Replayed([head, tail], reader)
    writer = unnamed(f"{root}/{OBJECTS_DIR}")
    if writer is None:
        return _keep_staged(root, replayed, preserve)
    try:
        if whole:
            _write_all(writer, head)
            size, status = len(head), _finish(reader, writer, preserve)
        else:
            size, sha256, status = _fill(replayed, writer, preserve)
        copy = Kept(size, sha256, _object_file(root, sha256), status.st_mtime_ns, status.st_ino)
        return _name(root, writer, copy)
    finally:
        os.close(writer)


class _Replayed:
    """A reader whose first chunks were read already: they are read again first."""

    def __init__(self, chunks: list[bytes], reader: BinaryIO) -> None:
        self.chunks = [chunk for chunk in chunks if chunk]
        self.reader = reader

    def read(self, size: int) -> bytes:
        return self.chunks.pop(0) if self.chunks else self.reader.read(size)

    def fileno(self) -> int:
        return self.reader.fileno()


#: Where Linux names each open file of the process (``/proc/self/fd/N``): an unnamed file
#: is linked into a directory through it.
OPEN_FILES = "/proc/self/fd"


@cache
def _names_open_files(directory: str) -> bool:
    return os.path.isdir(directory)


def unnamed(directory: str) -> int | None:
    """A new file without a name, writable, on the file system of ``directory`` (made if
    missing), to be named by ``link_unnamed`` once written (Linux's ``O_TMPFILE``); None
    where the system or the file system makes none, or cannot name it afterwards."""
    flag = getattr(os, "O_TMPFILE", None)
    if flag is None or not _names_open_files(OPEN_FILES):
        return None
    flags = flag | os.O_WRONLY | os.O_CLOEXEC
    try:
        try:
            return os.open(directory, flags, 0o600)
        except FileNotFoundError:
            os.makedirs(directory, exist_ok=True)
            return os.open(directory, flags, 0o600)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            return None  # not on this file system (or kernel)
        raise


def link_unnamed(writer: int, path: str) -> None:
    """Give the unnamed file open as ``writer`` the name ``path`` (its directory made if
    missing); ``FileExistsError`` when the name is taken."""
    # Given a directory descriptor, ``os.link`` is a ``linkat`` that follows the /proc
    # link to the open file itself (without one, it would link the /proc link). The
    # source path is absolute, so the descriptor is not read: the file's own will do,
    # and no directory is opened for each file.
    source = f"{OPEN_FILES}/{writer}"
    try:
        os.link(source, path, src_dir_fd=writer)
    except FileNotFoundError:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.link(source, path, src_dir_fd=writer)


def _name(root: str, writer: int, copy: Kept) -> Kept:
    """Link the unnamed, written ``copy`` (open as ``writer``) as its object, unless the
    same bytes are kept already; what is kept."""
    try:
        link_unnamed(writer, copy.path)
        return copy
    except FileExistsError:
        existing = _existing(copy.path, copy.size)
        if existing is not None:
            return Kept(copy.size, copy.sha256, copy.path, *existing)
    # An object written through since: these bytes are right. Named aside, then renamed
    # over it.
    temporary = f"{root}/{OBJECTS_DIR}/{STAGING_DIR}/{uuid.uuid4().hex}"
    link_unnamed(writer, temporary)
    try:
        os.replace(temporary, copy.path)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return copy


def _keep_staged(root: str, reader: BinaryIO, preserve: bool) -> Kept:
    """``_keep_copy`` where no unnamed file can be made: copied into the staging
    directory, then renamed into place as its object."""
    incoming = f"{root}/{OBJECTS_DIR}/{STAGING_DIR}"
    temporary = f"{incoming}/{uuid.uuid4().hex}"
    try:
        size, sha256, status = _copy_hashing(reader, temporary, preserve)
        kept = _object_file(root, sha256)
        existing = _existing(kept, size)
        if existing is not None:
            os.unlink(temporary)
            return Kept(size, sha256, kept, *existing)
        # New bytes, or an object written through since: these are right.
        try:
            os.replace(temporary, kept)
        except FileNotFoundError:  # the first object with these two leading digits
            os.makedirs(os.path.dirname(kept), exist_ok=True)
            os.replace(temporary, kept)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return Kept(size, sha256, kept, status.st_mtime_ns, status.st_ino)


def _copy_hashing(
    reader: BinaryIO, temporary: str, preserve: bool
) -> tuple[int, str, os.stat_result]:
    """Write what ``reader`` reads to the new, read-only file ``temporary`` (``_fill``);
    its size, SHA-256 and status."""
    try:
        writer = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    except FileNotFoundError:  # no staging directory yet, or another store removed it
        os.makedirs(os.path.dirname(temporary), exist_ok=True)
        writer = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        return _fill(reader, writer, preserve)
    finally:
        os.close(writer)


def _fill(reader: BinaryIO, writer: int, preserve: bool) -> tuple[int, str, os.stat_result]:
    """Write what ``reader`` reads to the file open as ``writer`` and ``_finish`` it; its
    size, SHA-256 and status."""
    size, sha256 = _hash(reader, writer)
    return size, sha256, _finish(reader, writer, preserve)


def _finish(reader: BinaryIO, writer: int, preserve: bool) -> os.stat_result:
    """Make the copy open as ``writer`` read-only (with ``preserve``, at the modification
    time of the file ``reader`` reads); its status."""
    if preserve:
        read = os.fstat(reader.fileno())
        os.utime(writer, ns=(read.st_atime_ns, read.st_mtime_ns))
    os.fchmod(writer, read_only())
    return os.fstat(writer)


def _hashed(
    root: Path | str, path: Path | str
) -> tuple[int, str, os.stat_result, str, tuple[int, int] | None]:
    """A file's size, SHA-256 and status as read, its object, and that object's
    modification time and inode when the same bytes are kept already (``_existing``)."""
    # Unbuffered, read by the file's size: a buffered reader asking for CHUNK_BYTES cost a
    # small output 3.5 of its 9 microseconds here.
    with open(path, "rb", buffering=0) as reader:
        size, sha256 = _hash(reader, expected=os.fstat(reader.fileno()).st_size)
        status = os.fstat(reader.fileno())
    kept = _object_file(str(root), sha256)
    return size, sha256, status, kept, _existing(kept, size)


def _existing(kept: str, size: int) -> tuple[int, int] | None:
    """The modification time and inode of the object ``kept`` when it holds ``size``
    bytes (the same SHA-256, so the same bytes unless written through), else None."""
    try:
        status = os.stat(kept)
    except FileNotFoundError:
        return None
    return (status.st_mtime_ns, status.st_ino) if status.st_size == size else None


def _link(source: Path | str, link: str) -> None:
    """Hard-link ``link`` to ``source``, making its directory first if needed."""
    try:
        os.link(source, link)
    except FileNotFoundError:
        if not os.path.exists(source):
            raise
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.link(source, link)


def version_bytes(root: Path, path: str, sha256: str, size: int) -> Path:
    """The object holding the bytes of the version of ``path`` with this SHA-256 and size.

    A version stored before the object store existed is kept from its path on first use,
    when the path still holds it. Refused in one line when retention removed it, or when
    its size shows it was written through since it was stored.
    """
    kept = object_path(root, sha256)
    try:
        actual = kept.stat().st_size
    except FileNotFoundError:
        actual = None
        with suppress(OSError):
            if (root / path).stat().st_size == size:
                actual, found, kept_file, _, _ = keep(root, root / path)
                kept = Path(kept_file)
                if found != sha256:
                    actual = None
        if actual is None:
            raise InvalidInput(
                f"the bytes of {path} (version {sha256[:12]}) are no longer kept"
            ) from None
    if actual != size:
        raise InvalidInput(
            f"the bytes of {path} (version {sha256[:12]}) changed after they were stored"
            f" ({actual} bytes, {size} recorded)"
        )
    return kept


def _hash(
    reader: BinaryIO, writer: int | None = None, expected: int | None = None
) -> tuple[int, str]:
    """The size and SHA-256 of what ``reader`` reads, written to the file descriptor
    ``writer`` as it is read, if one is given; with the size ``expected``, its first read
    asks for no more (``_first_read``)."""
    digest, size = hashlib.sha256(), 0
    want = CHUNK_BYTES if expected is None else _first_read(expected)
    while chunk := reader.read(want):
        digest.update(chunk)
        size += len(chunk)
        if writer is not None:
            _write_all(writer, chunk)
        want = CHUNK_BYTES
    return size, digest.hexdigest()


def _first_read(expected: int) -> int:
    """Bytes to ask for first from a file of ``expected`` bytes: all of it and one more
    (which tells that it is whole), at most ``CHUNK_BYTES`` (a read allocates what it asks
    for before it reads)."""
    return min(expected + 1, CHUNK_BYTES)


def _write_all(writer: int, data: bytes) -> None:
    """Write all of ``data`` to the file descriptor ``writer``."""
    view = memoryview(data)
    while view:
        view = view[os.write(writer, view) :]


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


@contextmanager
def flushing(root: Path, wanted: bool = True) -> Iterator[None]:
    """``flush`` on a thread of its own while the body runs (a file system's sync waits
    for every writer's dirty pages on it: 0.2 to 0.6 s a store of 10,000 files here,
    mostly waiting on the disk); done when the body is, or its error raised then."""
    if not wanted:
        yield
        return
    with ThreadPoolExecutor(1, thread_name_prefix="flush") as pool:
        flushed = pool.submit(flush, root)
        yield
        flushed.result()


class _FlushAhead:
    """A flush on a daemon thread, at most one at a time and one every
    ``FLUSH_AHEAD_SECONDS`` in a process (see ``flush_ahead``)."""

    thread: threading.Thread | None = None
    started = 0.0


#: Seconds between two flushes ahead of a store in one worker process.
FLUSH_AHEAD_SECONDS = 0.25


def flush_ahead(root: Path | str) -> None:
    """Start writing what this process kept to disk now, on a thread, so the flush of the
    store that makes it current (``flushing``, which alone guarantees it) finds less to
    wait for; nothing when one runs or ran within ``FLUSH_AHEAD_SECONDS``."""
    now = time.monotonic()
    running = _FlushAhead.thread
    if (
        running is not None and running.is_alive()
    ) or now - _FlushAhead.started < FLUSH_AHEAD_SECONDS:
        return
    _FlushAhead.started = now
    _FlushAhead.thread = threading.Thread(
        target=_flush_quietly, args=(Path(root),), name="flush-ahead", daemon=True
    )
    _FlushAhead.thread.start()


def _flush_quietly(root: Path) -> None:
    with suppress(OSError):  # the store's own flush says what is wrong
        flush(root)


@cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)


def place(staged: Staged) -> int:
    """Put a staged version at its destination: a hard link to its object, made in one
    step for a new path, else linked in the staging directory beside it (same file
    system, out of sight of any file-name pattern) and renamed over it, so readers see the
    old file or the whole new one. The stored file's modification time (ns)."""
    place_all([staged])
    return staged.mtime_ns


def place_all(versions: Iterable[Staged]) -> None:
    """``place`` each version, making each staging directory once and removing it once
    all are placed (a making and a removal per file cost a store of 10,000 files 0.5 s)."""
    staging: dict[str, list[str]] = {}  # each staging directory made: our links in it
    try:
        for staged in versions:
            _place(staged, staging)
    finally:
        for directory, ours in staging.items():
            try:
                os.rmdir(directory)
            except OSError:  # another store's links, or one of ours a rename left there
                for temporary in ours:
                    with suppress(FileNotFoundError):
                        os.unlink(temporary)
                with suppress(OSError):  # another store is using it still
                    os.rmdir(directory)


def _place(staged: Staged, staging: dict[str, list[str]]) -> None:
    """``place`` one version (nothing to do where its path shows it already); ``staging``:
    the staging directories this store has made, with the links it made in them."""
    try:
        if os.stat(staged.destination).st_ino == staged.inode:
            return
    except FileNotFoundError:
        try:
            _link(staged.kept, staged.destination)
            return
        except FileExistsError:  # placed meanwhile by another store
            pass
    directory, name = os.path.split(staged.destination)
    into = os.path.join(directory, STAGING_DIR)
    temporary = os.path.join(into, f"{name}.{uuid.uuid4().hex}")
    for _ in range(STAGING_TRIES):
        if into not in staging:
            os.makedirs(into, exist_ok=True)
            staging[into] = []
        try:
            os.link(staged.kept, temporary)
            break
        except FileNotFoundError:
            # Another store removed the staging directory, empty for an instant, between
            # its making and this link; the object itself must still be there.
            os.stat(staged.kept)
            del staging[into]
    else:
        os.link(staged.kept, temporary)
    staging.setdefault(into, []).append(temporary)
    # Renaming a link over another link of the same object (another store placed this
    # version meanwhile) does nothing and leaves it there: ``place_all`` removes it.
    os.replace(temporary, staged.destination)


def shows(staged: Staged) -> bool:
    """Does the destination show this version (is it a link to its object)?"""
    try:
        return os.stat(staged.destination).st_ino == staged.inode
    except OSError:
        return False


def put_back(root: Path, path: str, sha256: str | None, placed_inode: int) -> None:
    """Undo a placement at ``path`` (under ``root``) that never became current: if the
    path still shows the withdrawn version (``placed_inode``), show the version ``sha256``
    again (its current one), or nothing when it had none."""
    destination = f"{root}/{path}"
    try:
        if os.stat(destination).st_ino != placed_inode:
            return  # another placement since: not this one's to undo
    except OSError:  # not there, or not even its directory: nothing of it is shown
        return
    if sha256 is None:
        with suppress(FileNotFoundError):
            os.unlink(destination)
        return
    kept = _object_file(str(root), sha256)
    with suppress(FileNotFoundError):  # retention removed it: leave what is there
        status = os.stat(kept)
        version = Staged(
            kept, path, destination, status.st_size, sha256, status.st_mtime_ns, status.st_ino
        )
        place(version)


def fingerprint(root: Path, path: Path | str) -> tuple[int, str, int]:
    """Size, SHA-256 and modification time (ns) of a file the pipeline did not write, its
    bytes kept in the object store (a copy: the file is not the pipeline's to protect).
    The time is read before the bytes: a file changed while it is copied is seen changed
    at the next look."""
    with open(path, "rb", buffering=0) as reader:
        status = os.fstat(reader.fileno())
        kept = _keep_read(str(root), reader, True, status.st_size)
    return kept.size, kept.sha256, status.st_mtime_ns
