"""The pipeline's figures for Prometheus, on Flower's ``/metrics`` beside Celery's.

A collector registered once in ``prometheus_client``'s default registry (the one Flower
exports) reads the figures from the database (``operations.pages.metrics``, counts kept on
the task rows as their subtasks change) at every scrape, so
every Flower process reports the same numbers, those of the database. A database that
cannot be read makes the scrape report ``pipeline_up 0`` rather than fail Celery's
figures too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import prometheus_client
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from pipeline.domain.run_times import DURATION_BUCKETS
from pipeline.operations import facade, pages, queries
from pipeline.operations.problems import problem

log = logging.getLogger(__name__)


class PipelineCollector(Collector):
    """Instances by state, tasks by P-state and error flag, subtasks by state, redispatches,
    restarts by mode, lost-work recoveries, subtask run times per node, and the age of the
    reconciler's last run."""

    def describe(self) -> list[Metric]:
        """Nothing up front: registering must not query the database."""
        return []

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("pipeline_up", "1 when the pipeline's database could be read")
        try:
            figures = pages.metrics()
        except Exception as exc:
            found = problem(exc)
            if found is None:
                raise
            log.warning("pipeline metrics: %s", found.message)
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield labelled(
            GaugeMetricFamily,
            "pipeline_instances",
            "Pipeline instances by state",
            {(state,): count for state, count in figures["instances"].items()},
            ["state"],
        )
        yield labelled(
            GaugeMetricFamily,
            "pipeline_tasks",
            "Tasks by P-state and error flag",
            {(p_state, str(error).lower()): n for (p_state, error), n in figures["tasks"].items()},
            ["p_state", "error"],
        )
        yield labelled(
            GaugeMetricFamily,
            "pipeline_subtasks",
            "Subtasks by state",
            {(state,): count for state, count in figures["subtasks"].items()},
            ["state"],
        )
        yield CounterMetricFamily(
            "pipeline_subtasks_redispatched",
            "Subtask dispatches after the first (lost work, resubmits)",
            value=figures["redispatched"],
        )
        yield labelled(
            CounterMetricFamily,
            "pipeline_restarts",
            "Task restarts by mode",
            {(mode,): count for mode, count in figures["restarts"].items()},
            ["mode"],
        )
        yield CounterMetricFamily(
            "pipeline_lost_work_recoveries",
            "Lost subtasks dispatched again and lost marshals redone by beat's reconciler",
            value=figures["lost_work_recoveries"],
        )
        durations = HistogramMetricFamily(
            "pipeline_subtask_duration_seconds", "Run time of finished subtasks", labels=["node"]
        )
        for node, found in sorted(figures["durations"].items()):
            buckets = [
                (str(bound), count)
                for bound, count in zip(DURATION_BUCKETS, found["buckets"], strict=True)
            ]
            buckets.append(("+Inf", found["count"]))
            durations.add_metric([node], buckets, found["sum"])
        yield durations
        yield from batch_metrics(figures)
        found_queues = queries.list_queues()
        for name, what, key in (
            ("pipeline_queue_messages", "Messages waiting on the broker", "messages"),
            (
                "pipeline_queue_tasks_waiting",
                "Tasks waiting in a step on the queue",
                "tasks_waiting",
            ),
            (
                "pipeline_queue_oldest_wait_seconds",
                "How long the oldest task waiting on the queue has had no news",
                "oldest_wait_seconds",
            ),
        ):
            gauge = GaugeMetricFamily(name, what, labels=["queue"])
            for row in found_queues:
                if row[key] is not None:
                    gauge.add_metric([row["queue"]], float(row[key]))
            yield gauge
        last = facade.reconciler_health()["last_run"]
        if last is not None:
            age = datetime.now(UTC) - datetime.fromisoformat(last)
            yield GaugeMetricFamily(
                "pipeline_reconciler_last_run_age_seconds",
                "Seconds since beat's reconciler last ran (its heartbeat)",
                value=max(0.0, age.total_seconds()),
            )


def batch_metrics(figures: dict[str, Any]) -> Iterator[Metric]:
    """Job arrays on a batch system by state, and by partition the node-hours and cost
    they took and were estimated to take (a partition ``batch_costs`` does not price has
    no cost)."""
    yield labelled(
        GaugeMetricFamily,
        "pipeline_batch_jobs",
        "Job arrays on a batch system by state",
        {(state,): count for state, count in figures["batch_jobs"].items()},
        ["state"],
    )
    partitions = sorted(figures["batch_partitions"].items())
    for key, name, what in (
        ("node_hours", "pipeline_batch_node_hours", "Node-hours batch jobs took"),
        ("cost", "pipeline_batch_cost", "Cost of the node-hours batch jobs took"),
        ("estimated_node_hours", "pipeline_batch_estimated_node_hours", "Node-hours estimated"),
        ("estimated_cost", "pipeline_batch_estimated_cost", "Cost estimated"),
    ):
        family = CounterMetricFamily(name, f"{what}, by partition", labels=["partition"])
        for partition, found in partitions:
            if found[key] is not None:
                family.add_metric([partition], found[key])
        yield family


def labelled(
    kind: type[GaugeMetricFamily] | type[CounterMetricFamily],
    name: str,
    documentation: str,
    values: dict[tuple[str, ...], int],
    labels: list[str],
) -> Metric:
    """A metric family with one sample per label values, in a stable order."""
    family = kind(name, documentation, labels=labels)
    for key, value in sorted(values.items()):
        family.add_metric(list(key), value)
    return family


_registered: list[PipelineCollector] = []


def register() -> None:
    """Add the collector to the default registry, once per process."""
    if not _registered:
        collector = PipelineCollector()
        prometheus_client.REGISTRY.register(collector)
        _registered.append(collector)


def latest() -> bytes:
    """Every metric of the default registry, Celery's and the pipeline's, in text format."""
    return prometheus_client.generate_latest()
