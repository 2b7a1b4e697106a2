"""The Celery app, made once per process and configured for reliability from the settings.

JSON only (a pickled message is refused); a message is acknowledged after its task
finishes and given back to the broker if the worker process dies (acks_late with
reject-on-worker-lost); each worker process prefetches one message, since subtasks can
be long. The database, not Celery's result backend, holds pipeline state: the backend
(Redis, on the broker's own server) only keeps what an operator's operation run from
Flower did; every other task ignores its result.

The app's tasks are defined in ``workers`` (the Celery entry points, ``TASK_MODULES``),
which import this module, never the other way round: publishing a message needs only the
task's name. Celery itself is imported when the app is first made, so the commands that
only read the database never load it.
"""

from __future__ import annotations

import ssl
import threading
from typing import TYPE_CHECKING, Any

from pipeline.database import reset_engines
from pipeline.domain.execution import DEFAULT_QUEUE
from pipeline.settings import TASK_MODULES, Settings, get_settings

if TYPE_CHECKING:
    from celery import Celery

#: The queue of an operator's operations (``workers.operations``), served by a worker of
#: its own so a halt never waits behind the long subtasks filling every other worker.
OPERATIONS_QUEUE = "pipeline.operations"
#: Those operations, by Celery task name (Flower's API applies them by these names).
OPERATIONS = (
    "pipeline.submit",
    "pipeline.restart",
    "pipeline.restart_failed",
    "pipeline.halt",
    "pipeline.halt_instance",
)
#: Broker URL schemes whose server can also hold the results of operations.
REDIS_SCHEMES = ("redis://", "rediss://", "redis+socket://")
#: The scheme of a broker reached over TLS.
TLS_SCHEME = "rediss://"
#: Seconds the result of an operation (a restart run from Flower, say) stays readable.
RESULT_EXPIRES = 24 * 3600


_app: Celery | None = None
#: Made once, under a lock: the HTTP API's threads ask at once, and Celery's lazily built
#: package, imported by two threads together, can give one of them no ``Celery`` at all.
_making = threading.Lock()


def celery_app() -> Celery:
    """This process's Celery app, configured from its settings (``configure`` re-points it)."""
    global _app
    if _app is not None:
        return _app
    with _making:
        if _app is None:
            from celery import Celery
            from celery.signals import beat_init, worker_process_init

            app = Celery("pipeline", include=list(TASK_MODULES))
            configure(app, get_settings())
            worker_process_init.connect(_fresh_connections, weak=False)
            beat_init.connect(_quiet_beat, weak=False)
            _app = app
    return _app


def result_backend(broker: str) -> str | None:
    """The broker's Redis server, else no backend (an operation's result is then not kept)."""
    return broker if broker.startswith(REDIS_SCHEMES) else None


def broker_tls(settings: Settings) -> dict[str, Any] | None:
    """The TLS options of a ``rediss://`` broker (None for plain ``redis://``): its
    certificate verified against ``broker_ca_file`` (else the system's CAs), host name
    included."""
    if not settings.broker.startswith(TLS_SCHEME):
        return None
    options: dict[str, Any] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    if settings.broker_ca_file:
        options["ssl_ca_certs"] = str(settings.broker_ca_file)
    return options


def configure(app: Celery, settings: Settings) -> None:
    """Apply ``settings``; an app pointed at another broker drops its connections to the
    former one."""
    if app.conf.broker_url != settings.broker:
        _forget_connections(app)
    app.conf.update(
        broker_url=settings.broker,
        broker_use_ssl=broker_tls(settings),
        redis_backend_use_ssl=broker_tls(settings),
        result_backend=result_backend(settings.broker),
        result_expires=RESULT_EXPIRES,
        task_serializer="json",
        accept_content=["json"],
        result_serializer="json",
        result_accept_content=["json"],
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue=DEFAULT_QUEUE,
        task_routes={name: {"queue": OPERATIONS_QUEUE} for name in OPERATIONS},
        task_send_sent_event=True,
        worker_send_task_events=True,
        broker_connection_retry_on_startup=True,
        # Every broker call has a deadline: a host that accepts the connection and never
        # answers makes it fail, not hang (connect, publish, ping; the result backend too).
        broker_connection_timeout=settings.broker_timeout,
        redis_socket_timeout=settings.broker_timeout,
        redis_socket_connect_timeout=settings.broker_timeout,
        broker_transport_options={
            # Ten priority levels in each queue; Redis serves priority 0 first.
            "priority_steps": list(range(10)),
            "socket_timeout": settings.broker_timeout,
            "socket_connect_timeout": settings.broker_timeout,
        },
        # Beat runs the reconciler in its own process (``workers.app``), not as a message.
        beat_schedule={},
        worker_hijack_root_logger=True,
        timezone="UTC",
    )


def _forget_connections(app: Celery) -> None:
    """Drop the app's connection pool and result backend (made again on first use)."""
    if app._pool is not None:  # Celery keeps no public way to forget its connection pool
        app._pool.force_close_all()
        app._pool = None
        app.amqp._producer_pool = None
    app._backend_cache = None  # nor its result backend
    app._local.__dict__.pop("backend", None)


def _quiet_beat(sender: object = None, **_: object) -> None:
    """Beat runs the reconciler in its process (``workers.app``): the stage messages it
    sends again send no ``task-sent`` event, so a reconciler run every few seconds does
    not fill Flower's task list (the workers' events show them as they are received)."""
    celery_app().conf.task_send_sent_event = False


def _fresh_connections(**_: object) -> None:
    """A forked pool process must not share its parent's database connections."""
    reset_engines()
