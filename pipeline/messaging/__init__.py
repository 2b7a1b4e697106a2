"""The broker: what the pipeline sends (messages), when (the outbox, once a transaction
has committed), and through what (a publisher: Celery's, or one in memory)."""
