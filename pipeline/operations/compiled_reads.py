"""The operators' read commands in a new process without SQLAlchemy, the settings'
libraries or the models: the read statements compiled beforehand for the home's database,
run with its driver alone (``sqlite3``, ``psycopg``).

A read command that imports SQLAlchemy and pydantic-settings spends 0.4 s importing them
on these machines, above the 0.35 s an operator should wait for ``pipeline tasks``. So,
once a read has run the usual way, it keeps in the home's ``run/reads.json`` (the owner's
alone: it holds how to connect, a password included) what it read with: the statements
compiled for its database (``read_statements.compiled``), how to connect, every execution
setting's default (a task's view shows them; their model needs pydantic, a tenth of a
second more) and what the settings were made from (``home.settings_fingerprint``) with the
stamp of the code that compiled them. The next read in a new process whose settings and
code are the same runs the same statements through ``reading``, which makes the same views;
otherwise (no file, other settings, other code, a driver's error) it reads the usual way,
and keeps the file again.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline import jsoncodec
from pipeline.home import settings_fingerprint, write_run_file
from pipeline.operations import reading
from pipeline.operations.read_views import task_builder

#: The file under the home's ``run`` directory.
READS_FILE = "reads.json"
#: The modules whose code the compiled statements and the execution settings' defaults come
#: from: a change to any makes the file stale (a column added, a statement changed, a
#: setting added).
SOURCES = ("domain/models.py", "operations/read_statements.py", "domain/execution.py")


def code_stamp() -> str:
    """The size and modification time of each source of the statements."""
    package = Path(__file__).resolve().parent.parent
    stamps = []
    for source in SOURCES:
        status = (package / source).stat()
        stamps.append(f"{source}:{status.st_size}:{status.st_mtime_ns}")
    return ";".join(stamps)


def _utc(value: Any) -> Any:
    if isinstance(value, str):
        value = datetime.fromisoformat(value)
    if isinstance(value, datetime) and value.tzinfo is None:
        value = value.replace(tzinfo=UTC)
    return value


def _json() -> Callable[[Any], Any]:
    """JSON text decoded as the engine decodes it (``jsoncodec``), each text once: the
    tasks of a node share their execution settings, and decoding them for each of 10,000
    tasks took a sixth of the listing. Rows of one text share its value; nothing changes
    the values a view is made of (``with_execution_defaults`` copies)."""
    decoded: dict[str | bytes, Any] = {}

    def value(text: Any) -> Any:
        if not isinstance(text, (str, bytes)):
            return text
        found = decoded.get(text, decoded)
        if found is decoded:
            found = decoded[text] = jsoncodec.loads(text)
        return found

    return value


def _enum(path: str) -> Callable[[Any], Any]:
    """An enum's member by its value (None stays None): a lookup in a dict, ten times
    quicker than calling the enum for each of 10,000 rows."""
    module, _, name = path.partition(":")
    enum = getattr(importlib.import_module(module), name)
    members: dict[Any, Any] = {None: None, **{member.value: member for member in enum}}
    return members.__getitem__


#: What reads which kinds of column (``read_statements._kind``) as SQLAlchemy's types do,
#: so their values are taken as it gives them: psycopg's times are aware and its booleans
#: ``bool``; a SQLAlchemy session (``SESSION``) reads all but the JSON, which every
#: statement selects as its text, decoded here (``_json``).
SESSION = "session"
NATIVE: dict[str, frozenset[str]] = {
    "postgresql": frozenset({"utc", "bool"}),
    SESSION: frozenset({"utc", "bool", "enum"}),
}


def _converter(kind: str | None, reader: str) -> Callable[[Any], Any] | None:
    """How a column's value is read back (``read_statements._kind``), as SQLAlchemy's type
    reads it: a time made aware in UTC, JSON decoded, 0 and 1 as booleans, an enum's value
    as its member; None where the ``reader`` (a dialect's driver, or ``SESSION``) gives
    that already (``NATIVE``)."""
    if kind is None or kind.partition(":")[0] in NATIVE.get(reader, ()):
        return None
    if kind == "utc":
        return _utc
    if kind == "json":
        return _json()
    if kind == "bool":
        return lambda value: None if value is None else bool(value)
    if kind.startswith("enum:"):
        return _enum(kind.removeprefix("enum:"))
    raise ValueError(f"unknown column kind {kind!r}")


Converters = list[tuple[int, Callable[[Any], Any]]]


def converters(kinds: Sequence[str | None], reader: str) -> Converters:
    """Each column's converter (``_converter``) by its position, those that convert."""
    return [
        (position, converter)
        for position, kind in enumerate(kinds)
        if (converter := _converter(kind, reader)) is not None
    ]


def converted(found: Iterable[Sequence[Any]], converting: Converters) -> list[Sequence[Any]]:
    """Rows with their values read back by ``converting`` (``converters``)."""
    if not converting:
        return list(found)
    rows = []
    for row in found:
        values = list(row)
        for position, converter in converting:
            values[position] = converter(values[position])
        rows.append(values)
    return rows


class CompiledReader:
    """``reading.Reader`` over a driver's connection and the compiled statements."""

    def __init__(
        self,
        connection: Any,
        statements: dict[str, dict[str, Any]],
        dialect: str,
        execution_defaults: dict[str, Any],
    ) -> None:
        self.connection = connection
        self.statements = statements
        self.dialect = dialect
        self._converters: dict[str, Converters] = {}
        self.task_view = task_builder(execution_defaults)

    def names(self, name: str) -> list[str]:
        return list(self.statements[name]["names"])

    def rows(self, name: str, **params: Any) -> list[Sequence[Any]]:
        statement = self.statements[name]
        params = {**statement["defaults"], **params}
        positions = statement["positions"]
        values: Any = [params[key] for key in positions] if positions is not None else params
        cursor = self.connection.cursor()
        try:
            cursor.execute(statement["sql"], values)
            found = cursor.fetchall()
        finally:
            cursor.close()
        converting = self._converters.get(name)
        if converting is None:
            converting = self._converters[name] = converters(statement["kinds"], self.dialect)
        return converted(found, converting)


class CompiledQueries:
    """The read commands' queries (``reading``) over one compiled reader, named as the
    ``queries`` module names them."""

    def __init__(self, reader: CompiledReader) -> None:
        self.reader = reader

    def instances_listing(self, limit: int | None = None) -> reading.Listing:
        return reading.instances_listing(self.reader, limit)

    def tasks_listing(self, instance_id: int, limit: int | None = None) -> reading.Listing:
        return reading.tasks_listing(self.reader, instance_id, limit)

    def subtasks_listing(self, task_id: int, limit: int | None = None) -> reading.Listing:
        return reading.subtasks_listing(self.reader, task_id, limit)

    def get_task(self, task_id: int) -> dict[str, Any]:
        return reading.get_task(self.reader, task_id)


def _file(home: Path) -> Path:
    return home / "run" / READS_FILE


def keep(
    home: Path,
    dialect: str,
    connect: dict[str, Any],
    statements: dict[str, Any],
    execution_defaults: dict[str, Any],
) -> None:
    """Keep what the next read needs to run without SQLAlchemy nor pydantic (see the
    module)."""
    record = {
        "settings": settings_fingerprint(home),
        "code": code_stamp(),
        "dialect": dialect,
        "connect": connect,
        "statements": statements,
        "execution_defaults": execution_defaults,
    }
    write_run_file(home, READS_FILE, record)


def _record(home: Path) -> dict[str, Any] | None:
    """The home's reads file when it was written with this process's settings and code."""
    with suppress(OSError, ValueError):
        record = json.loads(_file(home).read_text())
        if (
            isinstance(record, dict)
            and record.get("settings") == settings_fingerprint(home)
            and record.get("code") == code_stamp()
        ):
            return record
    return None


def _connect(record: dict[str, Any]) -> Any:
    args, kwargs = record["connect"]["args"], record["connect"]["kwargs"]
    if record["dialect"] == "sqlite":
        import sqlite3

        if not Path(args[0]).is_file():  # never make an empty database where none is
            raise FileNotFoundError(args[0])
        connection = sqlite3.connect(*args, **kwargs)
        connection.execute("PRAGMA query_only=ON")
        return connection
    if record["dialect"] == "postgresql":
        import psycopg

        return psycopg.connect(*args, **kwargs)
    raise ValueError(f"no compiled reads for {record['dialect']}")


@contextmanager
def queries(home: Path) -> Iterator[CompiledQueries | None]:
    """The compiled queries over a connection to the home's database, or None where the
    usual way must read (no file for these settings and code, no connection)."""
    record = _record(home)
    connection = None
    if record is not None:
        with suppress(Exception):
            connection = _connect(record)
    if connection is None:
        yield None
        return
    try:
        reader = CompiledReader(
            connection, record["statements"], record["dialect"], record["execution_defaults"]
        )
        yield CompiledQueries(reader)
    finally:
        connection.close()
