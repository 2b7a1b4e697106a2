"""Celery and the broker: the app, the outbox that publishes a transaction's messages once
it has committed, and what is in flight on the broker and the workers."""
