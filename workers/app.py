"""The Celery app of the workers and of beat (``celery -A workers.app``), with every task of
``workers.chain`` and ``workers.operations`` registered on it, and each worker watching
beat's heartbeat."""

from typing import Any

from celery import bootsteps
from celery.signals import task_postrun

from pipeline.domain.models import utcnow
from pipeline.engine import runner
from pipeline.messaging.celery_app import celery_app
from pipeline.recovery.heartbeat import look
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


@task_postrun.connect
def _fork_a_spare(**_: Any) -> None:
    """Between two Celery tasks, a process that runs algorithms forks the child its next
    subtasks will run in, so they need not wait for a fork (``runner.prepare_spare``)."""
    runner.prepare_spare()


__all__ = ["app", "chain", "operations"]
