"""Benchmarks: the pipeline against raw Celery on the same Redis and worker processes.

``python -m bench`` (``make bench``) runs every figure; ``--quick`` (``make bench-quick``)
runs each at a tenth of its size. See ``docs/benchmarks.md`` for what each figure means.
"""
