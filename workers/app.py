"""The Celery app of the workers and of beat (``celery -A workers.app``), with every task of
``workers.chain`` and ``workers.operations`` registered on it, each worker watching beat's
heartbeat, and beat running the reconciler, and the event handlers' scan, in its own process.

The reconciler runs in beat, on a thread of its own, once an interval: not as a message a
worker takes from a queue, where it would wait behind every long subtask and bulk marshal
queued before it (and an alert would say the reconciler is not running while beat sends
it on time). Beat alive is the reconciler running.
"""

import logging
import threading
from collections.abc import Callable
from typing import Any

from celery import bootsteps
from celery.signals import beat_init, task_postrun
from celery.worker.consumer import Consumer as CeleryConsumer

from pipeline.deploy.supervisor import SupervisorWatch
from pipeline.domain.models import utcnow
from pipeline.engine import runner
from pipeline.engine.task_state import HOST
from pipeline.messaging.celery_app import celery_app
from pipeline.operations import events
from pipeline.recovery import worker_liveness
from pipeline.recovery.heartbeat import look
from pipeline.recovery.reconcile import reconcile
from pipeline.recovery.refused import RefusedCount
from pipeline.recovery.services import ServiceWatch
from pipeline.settings import get_settings
from workers import chain, operations


class WorkerWatch(bootsteps.StartStopStep):
    """A worker's look at the reconciler's heartbeat and at the home's supervisor, and its
    own heartbeat, once an interval, on the worker's own timer (no thread: the pool forks
    new children from this process); a worker that shuts down says so
    (``worker_liveness``)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **options: Any) -> None:
        super().__init__(worker, **options)
        self.timer_entries: list[Any] = []
        self.pool_deaths: logging.Handler | None = None

    def start(self, worker: Any) -> None:
        interval = get_settings().reconcile_interval
        node = worker.hostname
        worker_liveness.beat(node, HOST)
        # The prefork pool says on this logger when one of its processes died unasked.
        self.pool_deaths = worker_liveness.PoolDeaths(worker_liveness.PoolWatch(node))
        logging.getLogger("multiprocessing").addHandler(self.pool_deaths)
        self.timer_entries = [
            worker.timer.call_repeatedly(interval, look, (utcnow(),)),
            worker.timer.call_repeatedly(interval, worker_liveness.beat, (node, HOST)),
            worker.timer.call_repeatedly(interval, SupervisorWatch(f"worker {node}").look),
        ]

    def stop(self, worker: Any) -> None:
        for entry in self.timer_entries:
            entry.cancel()
        if self.pool_deaths is not None:
            logging.getLogger("multiprocessing").removeHandler(self.pool_deaths)
        worker_liveness.leave(worker.hostname)


class Consumer(CeleryConsumer):
    """Celery's consumer, counting the messages it refuses to read (``refused``): of a
    content type it does not accept, or not a task message at all."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.refused = RefusedCount(self.hostname)

    def on_decode_error(self, message: Any, exc: Exception) -> None:
        super().on_decode_error(message, exc)
        self._count(message)

    def on_invalid_task(self, body: Any, message: Any, exc: Exception) -> None:
        super().on_invalid_task(body, message, exc)  # a disallowed content type lands here
        self._count(message)

    def _count(self, message: Any) -> None:
        self.refused.refused(message.content_type, message.delivery_info.get("routing_key", ""))


app = celery_app()
# Every worker tells when beat's reconciler has gone silent.
app.steps["worker"].add(WorkerWatch)
app.conf.worker_consumer = "workers.app:Consumer"


log = logging.getLogger(__name__)


class BeatLoop(threading.Thread):
    """``run_once`` once an interval, on a thread of beat's process (see the module
    docstring); a run that fails is logged and the next one goes on."""

    def __init__(self, name: str, interval: float, run_once: Callable[[], Any]) -> None:
        super().__init__(name=name, daemon=True)
        self.interval = interval
        self.run_once = run_once
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.run_once()
            except Exception:
                log.exception("%s: this run failed; the next one goes on", self.name)
            self.stopped.wait(self.interval)


@beat_init.connect
def _reconcile_in_beat(**_: Any) -> None:
    settings = get_settings()
    BeatLoop("reconciler", settings.reconcile_interval, ServiceWatch(reconcile).run_once).start()
    BeatLoop("supervisor watch", settings.reconcile_interval, SupervisorWatch("beat").look).start()
    # The event handlers' directories, looked at on a thread of their own: a large
    # delivery being received never delays the reconciler.
    BeatLoop("event handlers", settings.event_scan_interval, events.scan).start()


@task_postrun.connect
def _fork_a_spare(**_: Any) -> None:
    """Between two Celery tasks, a process that runs algorithms forks the child its next
    subtasks will run in, so they need not wait for a fork (``runner.prepare_spare``)."""
    runner.prepare_spare()


__all__ = ["app", "chain", "operations"]
