"""The Celery app of the workers and of beat (``celery -A workers.app``), with every task of
``workers.stages`` and ``workers.operations`` registered on it, and each worker watching
beat's heartbeat."""

from typing import Any

from celery.signals import task_postrun

from pipeline.engine import runner
from pipeline.messaging.celery_app import celery_app
from pipeline.recovery.heartbeat import WorkerWatch
from workers import operations, stages

app = celery_app()
# Every worker tells when beat's monitor has gone silent.
app.steps["worker"].add(WorkerWatch)


@task_postrun.connect
def _fork_a_spare(**_: Any) -> None:
    """Between two Celery tasks, a process that runs algorithms forks the child its next
    subtasks will run in, so they need not wait for a fork (``runner.prepare_spare``)."""
    runner.prepare_spare()


__all__ = ["app", "operations", "stages"]
