"""The Celery app of the workers and of beat (``celery -A workers.app``), with every task of
``workers.chain`` and ``workers.operations`` registered on it, each worker watching beat's
heartbeat, and beat running the reconciler in its own process.

The reconciler runs in beat, on a thread of its own, once an interval: not as a message a
worker takes from a queue, where it would wait behind every long subtask and bulk marshal
queued before it (and an alert would say the reconciler is not running while beat sends
it on time). Beat alive is the reconciler running.
"""

import logging
import threading
from typing import Any

from celery import bootsteps
from celery.signals import beat_init, task_postrun

from pipeline.domain.models import utcnow
from pipeline.engine import runner
from pipeline.messaging.celery_app import celery_app
from pipeline.recovery.heartbeat import look
from pipeline.recovery.reconcile import reconcile
from pipeline.recovery.services import ServiceWatch
from pipeline.settings import get_settings
from workers import chain, operations


class WorkerWatch(bootsteps.StartStopStep):
    """A worker's look at the reconciler's heartbeat once an interval, on the worker's own
    timer (no thread: the pool forks new children from this process)."""

    requires = {"celery.worker.components:Timer"}

    def __init__(self, worker: Any, **options: Any) -> None:
        super().__init__(worker, **options)
        self.timer_entry: Any = None

    def start(self, worker: Any) -> None:
        self.timer_entry = worker.timer.call_repeatedly(
            get_settings().reconcile_interval, look, (utcnow(),)
        )

    def stop(self, worker: Any) -> None:
        if self.timer_entry is not None:
            self.timer_entry.cancel()


app = celery_app()
# Every worker tells when beat's reconciler has gone silent.
app.steps["worker"].add(WorkerWatch)


log = logging.getLogger(__name__)


class BeatReconciler(threading.Thread):
    """Beat's reconciler: ``reconcile`` once an interval, in beat's process (see the module
    docstring); a run that fails is logged and the next one goes on."""

    def __init__(self, interval: float) -> None:
        super().__init__(name="reconciler", daemon=True)
        self.interval = interval
        self.stopped = threading.Event()
        self.watch = ServiceWatch(reconcile)

    def run(self) -> None:
        while not self.stopped.is_set():
            try:
                self.watch.run_once()
            except Exception:
                log.exception("reconciler: this run failed; the next one goes on")
            self.stopped.wait(self.interval)


@beat_init.connect
def _reconcile_in_beat(**_: Any) -> None:
    BeatReconciler(get_settings().reconcile_interval).start()


@task_postrun.connect
def _fork_a_spare(**_: Any) -> None:
    """Between two Celery tasks, a process that runs algorithms forks the child its next
    subtasks will run in, so they need not wait for a fork (``runner.prepare_spare``)."""
    runner.prepare_spare()


__all__ = ["app", "chain", "operations"]
