"""Engine, sessions and migrations for SQLite (embedded default) and PostgreSQL.

SQLite runs in WAL mode with a busy timeout, and every transaction begins IMMEDIATE:
several worker processes write to the same file, and a deferred transaction that
upgrades from reading to writing fails at once with "database is locked" instead of
waiting. On PostgreSQL the rows that two workers could race for are locked with
``SELECT ... FOR UPDATE`` (see ``pipeline.tasks.lock_task``).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from config.settings import get_settings
from pipeline.errors import Unreachable

#: Milliseconds a SQLite writer waits for the lock before giving up.
SQLITE_BUSY_TIMEOUT_MS = 60_000
MIGRATIONS = Path(__file__).parent / "migrations"


def masked(url: str) -> str:
    """The URL with any password hidden, fit to print."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL (a broker URL, say)
        from kombu.utils.url import maybe_sanitize_url

        return maybe_sanitize_url(url)


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
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        path = make_url(url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(url, connect_args={"timeout": SQLITE_BUSY_TIMEOUT_MS / 1000})
        _configure_sqlite(engine)
        return engine
    return create_engine(
        url, pool_pre_ping=True, pool_size=5, max_overflow=5, connect_args={"connect_timeout": 10}
    )


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
            raise Unreachable(f"database unreachable at {masked(url)}: {_first_line(exc)}") from exc
        raise


def _is_connection_error(exc: OperationalError) -> bool:
    message = str(exc.orig).lower()
    return exc.connection_invalidated or any(
        word in message
        for word in ("connection", "could not connect", "unable to open", "server closed")
    )


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
    url = masked(get_settings().db_url)
    detail = _first_line(exc)
    if any(
        word in detail.lower() for word in ("no such table", "does not exist", "undefinedtable")
    ):
        return f"database at {url} has no pipeline tables: run `pipeline cluster init`"
    return f"database error at {url}: {detail}"
