"""``pipeline worker``: one Celery worker in the foreground, on any host, from settings alone.

A worker host needs no home of its own: the broker URL, the database URL, the datastore
root and the task root come from ``PIPELINE_*`` variables (or a ``settings.toml`` in its
``PIPELINE_HOME``). Everything is checked before Celery starts, so a worker pointed at the
wrong place stops at once with one line saying what is wrong, instead of retrying a
connection forever or failing each task it takes.
"""

from __future__ import annotations

import ipaddress
import os
import re
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.engine import make_url

from pipeline import database
from pipeline.deploy import cluster
from pipeline.domain.execution import NAME_PATTERN
from pipeline.domain.models import PipelineDefinition
from pipeline.engine import datastore
from pipeline.errors import InvalidInput, Refused
from pipeline.messaging.publisher import publisher
from pipeline.settings import Settings, get_settings

#: The worker's node name unless ``--hostname`` is given; Celery puts the host name for %h.
DEFAULT_NODE_NAME = "worker@%h"
#: The name part of a node name given as a bare host (``--hostname hostA``).
NODE_PREFIX = "worker"


def node_name(hostname: str | None) -> str:
    """Celery's node name: ``worker@HOST`` for a bare host, a full ``name@host`` kept as is.

    The node name is what the database records as a subtask's worker host, so it must
    tell hosts apart even where their system host names are the same (containers, network
    namespaces).
    """
    if not hostname:
        return DEFAULT_NODE_NAME
    return hostname if "@" in hostname else f"{NODE_PREFIX}@{hostname}"


def parse_queues(text: str) -> list[str]:
    """``Q1,Q2`` as a list of queue names, each a valid name (as in execution settings)."""
    queues = [name.strip() for name in text.split(",") if name.strip()]
    if not queues:
        raise InvalidInput("--queues names no queue")
    for name in queues:
        if not re.match(NAME_PATTERN, name):
            raise InvalidInput(f"queue {name!r} is not a valid queue name ({NAME_PATTERN})")
    return queues


def require_shared_settings(settings: Settings) -> None:
    """Refuse to start without a broker and a database named for this host.

    Without them a worker would fall back to a local default (redis on 127.0.0.1, a SQLite
    file in its home) and quietly serve a cluster of its own that nobody submits to. A
    home initialised here (its settings file exists) is a local cluster: its defaults hold.
    """
    local_home = settings.settings_file.exists()
    missing = []
    if not settings.broker_url and not (local_home and settings.redis_port):
        missing.append("PIPELINE_BROKER_URL")
    if not settings.database_url and not local_home:
        missing.append("PIPELINE_DATABASE_URL")
    if missing:
        raise Refused(
            f"{' and '.join(missing)} not set: a worker needs the central host's broker and"
            f" database (in the environment or in {settings.settings_file})"
        )


def require_safe_network(settings: Settings) -> None:
    """Refuse a broker or database on another host that takes no password: anyone on the
    network could read or rewrite the pipeline's work there. ``allow_insecure_network``
    lets a private network go without."""
    if settings.allow_insecure_network:
        return
    broker = urlsplit(settings.broker)
    if not _loopback(broker.hostname) and not broker.password:
        raise Refused(_open_door("broker", settings.broker))
    if settings.database_url and not settings.database_url.startswith("sqlite"):
        url = make_url(settings.database_url)
        client_certificate = "sslcert" in url.query
        if not _loopback(url.host) and not url.password and not client_certificate:
            raise Refused(_open_door("database", settings.database_url))


def _open_door(what: str, url: str) -> str:
    return (
        f"{what} at {database.masked(url)} has no password: anyone on the network could use"
        f" it (set one in the URL, or PIPELINE_ALLOW_INSECURE_NETWORK=true on a private"
        f" network)"
    )


def _loopback(host: str | None) -> bool:
    """A unix socket (no host) or this host's loopback address."""
    if not host or host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: another host


def check_reachable(settings: Settings) -> None:
    """Datastore and task root (the shared mount), database with the pipeline's tables, and
    broker, in that order, or one error naming the first that fails."""
    datastore.require(settings.datastore)
    try:
        settings.tasks_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise Refused(f"task root {settings.tasks_dir} cannot be created: {exc}") from None
    database.check_database()
    with database.transaction() as session:
        session.execute(select(PipelineDefinition.id).limit(1))  # no tables: a one-line error
    publisher().check()


def argv(queues: str | None, concurrency: int | None, hostname: str | None) -> list[str]:
    """The checked Celery command line of this host's worker."""
    settings = get_settings()
    require_shared_settings(settings)
    require_safe_network(settings)
    chosen = parse_queues(queues) if queues is not None else None
    check_reachable(settings)
    return cluster.celery_worker_argv(
        node_name(hostname),
        chosen or cluster.worker_queues(settings),
        concurrency or settings.worker_concurrency,
    )


def run(queues: str | None, concurrency: int | None, hostname: str | None) -> None:
    """Replace this process with the Celery worker: signals reach Celery itself, so a stop
    (SIGTERM) is Celery's warm shutdown and a container's init needs no extra process."""
    command = argv(queues, concurrency, hostname)
    os.execv(command[0], command)
