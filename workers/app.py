"""The Celery app of the workers and of beat (``celery -A workers.app``), with every task of
``workers.stages`` and ``workers.operations`` registered on it."""

from pipeline.messaging.celery_app import celery_app
from workers import operations, stages

app = celery_app()

__all__ = ["app", "operations", "stages"]
