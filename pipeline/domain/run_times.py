"""The run-time histogram of a task's finished subtasks, kept on the task's row as they
finish, so that ``/metrics`` has the database sum a node's histogram over its tasks
instead of reading every subtask row at each scrape.

A subtask counts once it has a start and an end: a run recorded adds it, and a subtask
claimed to run again (its end cleared) or marshaled away takes it out, so the histogram
is always that of the subtask rows as they stand. The task keeps how many ran, their
time in all in whole microseconds (integers: adding and taking out runs leaves no
rounding behind), and how many ran within each bucket (at most its bound, above the one
before), one integer column each: summing columns by node is what the database does
fastest, where decoding a value per task in Python cost more than the old recount.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Sequence
from typing import Any

#: Upper bounds (seconds) of the subtask run-time histogram exported for Prometheus.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)
#: The task's column counting the runs within each bucket (``runs_le_0_1``...).
BUCKET_COLUMNS = tuple(f"runs_le_{bound:g}".replace(".", "_") for bound in DURATION_BUCKETS)


def count(task: Any, seconds: float, sign: int = 1) -> None:
    """Add a run of ``seconds`` to the task's histogram (``sign`` -1: take it out)."""
    task.runs += sign
    task.run_micros += sign * round(seconds * 1_000_000)
    within = bisect_left(DURATION_BUCKETS, seconds)  # the first bound at or above it
    if within < len(BUCKET_COLUMNS):
        column = BUCKET_COLUMNS[within]
        setattr(task, column, getattr(task, column) + sign)


def histogram(runs: int, micros: int, within: Sequence[int]) -> dict[str, Any]:
    """Summed counts as Prometheus reads a histogram: the runs, the sum of their times in
    seconds, and the cumulative count at or under each bound."""
    cumulative, running = [], 0
    for found in within:
        running += found
        cumulative.append(running)
    return {"count": runs, "sum": micros / 1_000_000, "buckets": cumulative}
