"""The run-time histogram of a task's finished subtasks, kept on the task's row as they
finish (``Task.run_times``), so that ``/metrics`` sums a node's histograms over its tasks
instead of reading every subtask row at each scrape.

A subtask counts once it has a start and an end: a run recorded adds it, and a subtask
claimed to run again (its end cleared) or marshaled away takes it out, so the histogram
is always that of the subtask rows as they stand. The value is JSON: ``{"counts": [...],
"micros": n}``, a count per bucket (the first bound at or above the run time; the last
slot for runs above every bound) and the sum of the run times in whole microseconds
(integers: adding and taking out runs leaves no rounding behind).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable
from typing import Any

#: Upper bounds (seconds) of the subtask run-time histogram exported for Prometheus.
DURATION_BUCKETS = (0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0, 3600.0)


def counted(value: dict[str, Any] | None, runs: Iterable[float], sign: int = 1) -> dict[str, Any]:
    """``value`` with these run times (seconds) added, or taken out with ``sign`` -1: a
    new value (a JSON column changes when it is assigned)."""
    counts = list(value["counts"]) if value else [0] * (len(DURATION_BUCKETS) + 1)
    micros = int(value["micros"]) if value else 0
    for seconds in runs:
        counts[bisect_left(DURATION_BUCKETS, seconds)] += sign
        micros += sign * round(seconds * 1_000_000)
    return {"counts": counts, "micros": micros}


def merged(values: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Several tasks' histograms as Prometheus reads one: the runs counted, the sum of
    their times in seconds, and the cumulative count at or under each bound."""
    counts = [0] * (len(DURATION_BUCKETS) + 1)
    micros = 0
    for value in values:
        counts = [a + b for a, b in zip(counts, value["counts"], strict=True)]
        micros += value["micros"]
    cumulative, running = [], 0
    for count in counts[:-1]:
        running += count
        cumulative.append(running)
    return {"count": sum(counts), "sum": micros / 1_000_000, "buckets": cumulative}
