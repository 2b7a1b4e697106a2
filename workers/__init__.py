"""The Celery side of the pipeline: the app and the stage tasks that move work."""
