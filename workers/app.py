"""The Celery app of the workers and of beat (``celery -A workers.app``), with every task of
``workers.stages`` and ``workers.operations`` registered on it, and each worker watching
beat's heartbeat."""

from pipeline.messaging.celery_app import celery_app
from pipeline.recovery.heartbeat import WorkerWatch
from workers import operations, stages

app = celery_app()
# Every worker tells when beat's monitor has gone silent.
app.steps["worker"].add(WorkerWatch)

__all__ = ["app", "operations", "stages"]
