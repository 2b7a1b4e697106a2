"""Engine, sessions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every transaction begins IMMEDIATE:
several worker processes write to the same file, and a deferred transaction that
upgrades from reading to writing fails at once with "database is locked" instead of
waiting. On PostgreSQL the rows that two workers could race for are locked with
``SELECT ... FOR UPDATE`` (see ``pipeline.engine.locks.lock_task``).

PostgreSQL connections come from a pool per process, sized by the ``database_pool_*``
settings, each checked with a ping before use (a server restart leaves dead connections
in the pool). A transaction that loses a race (a deadlock, a serialization failure) or its
connection is rolled back whole; ``retrying`` runs a re-runnable unit of work again, with
jittered backoff, for ``database_retry_seconds``. It is the one retry policy for database
work: the pipeline's stages are fenced (a rerun of a stage that already committed is a
no-op), so ``workers.chain`` wraps each of them in it.
"""

from __future__ import annotations

import functools
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from sqlalchemy import (
    JSON,
    Connection,
    Engine,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
    insert,
    text,
    update,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from tenacity import (
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_delay,
    wait_random_exponential,
)

from pipeline import jsoncodec
from pipeline.errors import Unreachable
from pipeline.home import find_home
from pipeline.settings import Settings, get_settings

#: Milliseconds a SQLite writer waits for the lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 60_000
#: Seconds between a SQLite transaction's first tries to begin while another writes, and
#: at most (``begin_immediate``).
SQLITE_BEGIN_POLL_SECONDS, SQLITE_BEGIN_POLL_MAX_SECONDS = 0.0002, 0.002
MIGRATIONS = Path(__file__).parent / "migrations"
#: PostgreSQL's SQLSTATEs for a transaction that lost a race: serialization_failure and
#: deadlock_detected. The server rolled it back; run again, it will most likely pass.
RACE_SQLSTATES = frozenset({"40001", "40P01"})
#: Backoff between reruns of a transaction (seconds): random, so racers do not meet again.
RETRY_WAIT_MULTIPLIER, RETRY_WAIT_MAX = 0.05, 5.0

#: Every JSON column is written and read by one encoder pair, which cannot disagree: a value
#: that would not read back is refused when written (orjson reads: listing tasks reads one
#: column per task).
JSON_CODEC = {"json_serializer": jsoncodec.dumps, "json_deserializer": jsoncodec.loads}

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")


#: Query parameters whose value is a secret, whichever driver reads them.
SECRET_PARAMETERS = frozenset(
    {"password", "passwd", "pass", "pwd", "sslpassword", "secret", "token", "api_token", "auth"}
)
MASK = "***"


def masked(url: str) -> str:
    """The URL with every secret hidden, fit to print: the password of its user info (all
    before the last ``@`` of the authority, so an unencoded ``@`` in a password hides
    with it) and the value of every query parameter that names one (``?password=``)."""
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    authority, slash, path = rest.partition("/")
    userinfo, at, host = authority.rpartition("@")
    if at:
        user, colon, _ = userinfo.partition(":")
        authority = f"{user}{colon and ':' + MASK}@{host}"
    path, question, query = path.partition("?")
    if question:
        query = "&".join(_masked_parameter(pair) for pair in query.split("&"))
    return f"{scheme}://{authority}{slash}{path}{question}{query}"


def _masked_parameter(pair: str) -> str:
    name, equals, _ = pair.partition("=")
    return f"{name}={MASK}" if equals and name.lower() in SECRET_PARAMETERS else pair


def scrubbed(text: str, *urls: str) -> str:
    """``text`` (a driver's error, say) with each of ``urls`` masked, and their secrets
    hidden wherever else they appear in it."""
    for url in urls:
        text = text.replace(url, masked(url))
        for secret in _secrets(url):
            text = text.replace(secret, MASK)
    return text


def _secrets(url: str) -> list[str]:
    """The secrets of a URL, as written and decoded, longest first."""
    from urllib.parse import unquote

    _, _, rest = url.partition("://")
    authority, _, tail = rest.partition("/")
    userinfo, at, _ = authority.rpartition("@")
    found = [userinfo.partition(":")[2]] if at else []
    query = tail.partition("?")[2]
    for pair in query.split("&") if query else []:
        name, _, value = pair.partition("=")
        if name.lower() in SECRET_PARAMETERS:
            found.append(value)
    found += [unquote(secret) for secret in found]
    return sorted({secret for secret in found if len(secret) >= 3}, key=len, reverse=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection, _record) -> None:  # type: ignore[no-untyped-def]
        dbapi_connection.isolation_level = None  # we emit BEGIN ourselves
        cursor = dbapi_connection.cursor()
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection) -> None:  # type: ignore[no-untyped-def]
        begin_immediate(connection)


def begin_immediate(connection: Connection) -> None:
    """``BEGIN IMMEDIATE`` on a SQLite connection, waiting for another connection's write
    transaction to end by trying again after ``SQLITE_BEGIN_POLL_SECONDS``, twice as long
    each time up to ``SQLITE_BEGIN_POLL_MAX_SECONDS``, for at most
    ``SQLITE_BUSY_TIMEOUT_MS``; then, or for any error but a busy database, once more as
    SQLAlchemy runs it (which raises as it always did).

    SQLite's own busy handler sleeps 1, 2, 5, 10, 15, 20, 25 ... 100 ms between tries,
    however soon the lock is freed: two worker processes taking turns at the lock, each
    for a few milliseconds, spent a fifth of a restart of 1,000 tasks asleep on a free lock
    (woken 3 or 8 ms after the other's began, its transaction 5 ms long). So the handler
    is off while this one tries (``busy_timeout`` 0), and on for every other statement;
    the longest sleep keeps many waiting processes' tries to a few hundred a second."""
    cursor = connection.connection.dbapi_connection.cursor()
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    pause = SQLITE_BEGIN_POLL_SECONDS
    try:
        cursor.execute("PRAGMA busy_timeout=0")
        while time.monotonic() < deadline:
            try:
                cursor.execute("BEGIN IMMEDIATE")
                return
            except sqlite3.OperationalError as exc:
                if exc.sqlite_errorcode & 0xFF != sqlite3.SQLITE_BUSY:
                    break
            time.sleep(pause)
            pause = min(2 * pause, SQLITE_BEGIN_POLL_MAX_SECONDS)
    finally:
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        # No directory is made for the file: a command run in the wrong shell must not
        # leave an empty home behind (``cluster init`` makes the home first).
        engine = create_engine(url, connect_args=connect_args(url), **JSON_CODEC)
        _configure_sqlite(engine)
        return engine
    settings = get_settings()
    return create_engine(url, **pool_options(settings))


def pool_options(settings: Settings) -> dict[str, object]:
    """Connection pool of a server database (PostgreSQL), from the ``database_pool_*`` settings;
    JSON columns read and written by ``jsoncodec``."""
    return {
        **JSON_CODEC,
        "pool_pre_ping": True,
        "pool_size": settings.database_pool_size,
        "max_overflow": settings.database_max_overflow,
        "pool_timeout": settings.database_pool_timeout,
        "pool_recycle": settings.database_pool_recycle,
        "connect_args": connect_args(settings.db_url),
    }


def connect_args(url: str) -> dict[str, object]:
    """What the engine of ``url`` gives its driver's ``connect`` beside the URL's own."""
    if url.startswith("sqlite"):
        return {"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000}
    settings = get_settings()
    # libpq counts whole seconds, at least 2: round up, never below what was asked.
    options: dict[str, object] = {
        "connect_timeout": max(2, math.ceil(settings.database_connect_timeout))
    }
    if settings.database_ca_file:  # TLS, the server's certificate and host name verified
        options["sslrootcert"] = str(settings.database_ca_file)
        if "sslmode" not in make_url(settings.db_url).query:  # the URL's own says otherwise
            options["sslmode"] = "verify-full"
    return options


def one_of(session: Session, column: Any, values: Sequence[Any]) -> Any:
    """``column IN values`` as the database reads a long list fastest: one array parameter
    on PostgreSQL (``= ANY``), a parameter each on SQLite (no arrays there). Rendering and
    parsing 500 parameters a query took longer than the queries of a marshal themselves."""
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import ARRAY

        return column == any_(bindparam(None, list(values), type_=ARRAY(column.type)))
    return column.in_(values)


def insert_rows(session: Session, table: Table, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``rows`` into ``table`` in bulk; their new ids, in order. On PostgreSQL the
    ids are drawn from the table's sequence first and the rows copied in (``add_rows``): an
    INSERT RETURNING in bulk is a statement of a parameter per value, which the driver
    parses again for every thousand rows (10,000 rows: 1.5 to 2.2 s, against 0.5 to 0.8
    inserted as they are, and less copied)."""
    if session.get_bind().dialect.name == "postgresql":
        drawn = "SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"
        ids = list(session.scalars(text(drawn), {"t": table.name, "n": len(rows)}))
        add_rows(session, table, [{**row, "id": id_} for row, id_ in zip(rows, ids, strict=True)])
        return ids
    returning = insert(table).returning(table.c.id, sort_by_parameter_order=True)
    return list(session.execute(returning, rows).scalars())


def insert_plain(
    session: Session,
    table: Table,
    columns: Sequence[str],
    rows: Sequence[tuple[Any, ...]],
    shared: dict[str, Any],
) -> None:
    """Insert ``rows``, tuples of ``columns``' values that need no converting (strings,
    integers, None), each with the values ``shared`` by every row (converted once by their
    columns' types: times, JSON), through the driver's own executemany in the session's
    transaction (PostgreSQL's COPY, see ``add_rows``). A store's 10,000 ledger rows took
    0.25 s through Core, which converts every value of every row; no ids are read back."""
    if not rows:
        return
    connection = session.connection()
    dialect = connection.dialect
    if dialect.name == "postgresql":
        tail = [_writer(table.c[name], value)(value) for name, value in shared.items()]
        _copy(connection, table, [*columns, *shared], ([*row, *tail] for row in rows))
        return
    values = []
    for name, value in shared.items():
        convert = table.c[name].type.dialect_impl(dialect).bind_processor(dialect)
        values.append(value if convert is None or value is None else convert(value))
    names = [*columns, *shared]
    quoted = ", ".join(dialect.identifier_preparer.quote(name) for name in names)
    marker = "?" if dialect.paramstyle == "qmark" else "%s"
    statement = f"INSERT INTO {table.name} ({quoted}) VALUES ({', '.join([marker] * len(names))})"
    tail = tuple(values)
    cursor = connection.connection.cursor()
    try:
        cursor.executemany(statement, [row + tail for row in rows])
    finally:
        cursor.close()


def add_rows(session: Session, table: Table, rows: Sequence[dict[str, Any]]) -> None:
    """Insert ``rows`` (each with the same columns) into ``table`` in bulk, in the session's
    transaction: PostgreSQL's COPY, or Core's multi-row INSERTs elsewhere. COPY takes
    10,000 rows in a tenth of the time of an INSERT's executemany; the columns the rows
    leave out get their Python-side defaults, as an INSERT would give them."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        session.execute(insert(table), list(rows))
        return
    named = list(rows[0])
    missing = [
        column
        for column in table.columns
        if column.name not in rows[0]
        and column.default is not None
        and (column.default.is_scalar or column.default.is_callable)
    ]
    defaults = {
        column.name: column.default.arg(None) if column.default.is_callable else column.default.arg
        for column in missing
    }
    first = {**rows[0], **defaults}
    writers = [(name, _writer(table.c[name], first[name])) for name in named]
    tail = [_writer(table.c[name], value)(value) for name, value in defaults.items()]
    written = ([write(row[name]) for name, write in writers] + tail for row in rows)
    _copy(connection, table, [*named, *defaults], written)


def _copy(connection: Any, table: Table, names: list[str], rows: Iterable[list[Any]]) -> None:
    """Rows of ``names``' values, as COPY takes them, into ``table`` by PostgreSQL's COPY,
    in the connection's transaction."""
    columns = ", ".join(f'"{name}"' for name in names)
    cursor = connection.connection.driver_connection.cursor()
    with cursor, cursor.copy(f"COPY {table.name} ({columns}) FROM STDIN") as copy:
        for row in rows:
            copy.write_row(row)


def update_rows(
    session: Session, table: Table, keys: Sequence[str], rows: Sequence[dict[str, Any]]
) -> None:
    """Set the other columns of each of ``rows`` (each with the same columns) on the row of
    ``table`` its ``keys`` columns match, in the session's transaction: one statement on
    PostgreSQL, joining arrays of the values (an executemany of 10,000 updates took 0.3
    s), an executemany elsewhere."""
    if not rows:  # an executemany of no rows would run once, with no values
        return
    columns = list(rows[0])
    values = [name for name in columns if name not in keys]
    if session.get_bind().dialect.name != "postgresql":
        session.execute(
            update(table)
            .where(*(table.c[name] == bindparam(f"key_{name}") for name in keys))
            .values({name: bindparam(f"value_{name}") for name in values}),
            [
                {f"{'key' if name in keys else 'value'}_{name}": row[name] for name in columns}
                for row in rows
            ],
        )
        return
    dialect = session.get_bind().dialect
    arrays = ", ".join(
        f"CAST(:c{i} AS {table.c[name].type.compile(dialect=dialect)}[])"
        for i, name in enumerate(columns)
    )
    named = ", ".join(f'"{name}"' for name in columns)
    sets = ", ".join(f'"{name}" = v."{name}"' for name in values)
    matched = " AND ".join(f'{table.name}."{name}" = v."{name}"' for name in keys)
    session.execute(
        text(f"UPDATE {table.name} SET {sets} FROM unnest({arrays}) AS v({named}) WHERE {matched}"),
        {f"c{i}": [row[name] for row in rows] for i, name in enumerate(columns)},
    )


#: Rows a step must add to a table before its statistics are looked at (``refresh_statistics``).
ANALYZE_AFTER_ROWS = 1_000


def refresh_statistics(tables: Sequence[str], added: int) -> None:
    """On PostgreSQL, after a step added ``added`` rows to each of ``tables``: ANALYZE those
    whose statistics count fewer rows than that, on a thread of its own (the step's
    messages are not held back). A fresh database's planner otherwise takes a task of
    10,000 subtasks for a few hundred rows and claims a batch of 100 with a scan of them
    all, under the task's lock (5 to 8 ms a claim instead of a fraction of one, figure a on
    PostgreSQL); autovacuum would look only a minute later. Skipped, not waited for, when
    another ANALYZE (autovacuum's) holds the table."""
    if added < ANALYZE_AFTER_ROWS or get_engine().dialect.name != "postgresql":
        return
    worker = threading.Thread(
        target=_analyze, args=(get_engine(), list(tables), added), name="analyze", daemon=True
    )
    worker.start()


def _analyze(engine: Engine, tables: list[str], added: int) -> None:
    try:
        with engine.connect() as connection:
            stale = connection.execute(
                text(
                    "SELECT relname FROM pg_class WHERE relname = ANY(:names)"
                    " AND relkind = 'r' AND reltuples < :added"
                ),
                {"names": tables, "added": added},
            ).scalars()
            for name in list(stale):
                connection.execute(text("SET LOCAL lock_timeout = '100ms'"))
                connection.execute(text(f'ANALYZE "{name}"'))
                connection.commit()
    except DBAPIError as exc:  # a busy table, a lost server: the planner's guess stays
        log.info("statistics of %s not refreshed: %s", ", ".join(tables), exc)


def _writer(column: Any, example: Any) -> Callable[[Any], Any]:
    """How COPY is given a column's values (like ``example``): JSON as its text, an
    enumeration's members as their values, anything else as it is."""
    if isinstance(column.type, JSON):
        return lambda value: None if value is None else jsoncodec.dumps(value)
    if isinstance(example, Enum):
        return lambda value: value.value
    return lambda value: value


_engines: dict[str, Engine] = {}
_sessions: dict[str, sessionmaker[Session]] = {}


def engine_for(url: str) -> Engine:
    if url not in _engines:
        _engines[url] = make_engine(url)
        _sessions[url] = sessionmaker(_engines[url], expire_on_commit=False)
    return _engines[url]


def get_engine() -> Engine:
    return engine_for(get_settings().db_url)


@contextmanager
def transaction() -> Iterator[Session]:
    """One database transaction: committed on success, rolled back on any error.

    A database that cannot be reached becomes ``Unreachable`` naming the URL.
    """
    url = get_settings().db_url
    try:
        engine_for(url)
        with _sessions[url].begin() as session:
            yield session
    except OperationalError as exc:
        if _is_connection_error(exc):
            raise Unreachable(_unreachable_message(url, exc)) from exc
        raise


def _unreachable_message(url: str, exc: Exception) -> str:
    """The home's own SQLite file that cannot be opened is a home with no cluster yet."""
    if get_settings().database_url is None and "unable to open" in _first_line(exc):
        return no_cluster_message()
    return f"database unreachable at {masked(url)}: {scrubbed(_first_line(exc), url)}"


def _is_connection_error(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return exc.connection_invalidated or any(
        word in message
        for word in ("connection", "could not connect", "unable to open", "server closed")
    )


def is_retryable(exc: BaseException) -> bool:
    """Would running the whole transaction again cure ``exc``? A lost race or connection would;
    anything else (a constraint, a bug, a missing table) fails the same way again."""
    if isinstance(exc, Unreachable):
        return True
    if not isinstance(exc, DBAPIError):
        return False
    if exc.connection_invalidated or getattr(exc.orig, "sqlstate", None) in RACE_SQLSTATES:
        return True
    return isinstance(exc, OperationalError) and _is_connection_error(exc)


def retrying(seconds: float | None = None) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Run the decorated function again while it fails with a retryable database error.

    Only for re-runnable work: each of its transactions either committed or was rolled back
    whole, and running it again after a commit must do no harm (the stages are fenced).
    ``seconds`` defaults to the ``database_retry_seconds`` setting, read at each call.
    """

    def decorate(function: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(function)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            limit = get_settings().database_retry_seconds if seconds is None else seconds
            policy = Retrying(
                retry=retry_if_exception(is_retryable),
                wait=wait_random_exponential(multiplier=RETRY_WAIT_MULTIPLIER, max=RETRY_WAIT_MAX),
                stop=stop_after_delay(limit),
                before_sleep=before_sleep_log(log, logging.WARNING),
                reraise=True,
            )
            return policy(function, *args, **kwargs)

        return wrapper

    return decorate


def _first_line(exc: BaseException) -> str:
    return str(getattr(exc, "orig", exc)).strip().splitlines()[0]


def check_database() -> None:
    """Raise ``Unreachable`` unless the database answers."""
    with transaction() as session:
        session.execute(text("SELECT 1"))


def upgrade() -> None:
    """Apply every Alembic migration to the configured database."""
    from alembic import command
    from alembic.config import Config

    url = make_url(get_settings().db_url)
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        Path(url.database).parent.mkdir(parents=True, exist_ok=True)  # made here, and only here
    check_database()
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.attributes["engine"] = get_engine()
    command.upgrade(config, "head")


def reset_engines() -> None:
    """Forget every engine: in a forked worker child, whose parent's connections are not its own."""
    for engine in _engines.values():
        engine.dispose(close=False)
    _engines.clear()
    _sessions.clear()


def describe_database_error(exc: Exception) -> str:
    """One line for a database error the CLI did not expect (a missing schema, most often)."""
    settings = get_settings()
    url = masked(settings.db_url)
    detail = _first_line(exc).lower()
    if any(word in detail for word in ("no such table", "does not exist", "undefinedtable")):
        if settings.database_url is None:
            return no_cluster_message()
        return f"database at {url} has no pipeline tables: run `pipeline cluster init`"
    return f"database error at {url}: {scrubbed(_first_line(exc), settings.db_url)}"


def no_cluster_message() -> str:
    """A home with no cluster in it: where it is, why this one, and how to make one there
    or point at another (a new shell, without the PIPELINE_HOME of the one that made it)."""
    found = find_home()
    return (
        f"no cluster at {found.path} ({found.reason}): run `pipeline cluster init` to make "
        "one there, or point at another with PIPELINE_HOME=DIR (or run from the directory "
        "holding its .pipeline, or below)"
    )
