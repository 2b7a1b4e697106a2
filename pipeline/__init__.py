"""A Ziggy-style science pipeline on Celery."""

__version__ = "0.1.0"
