"""Each benchmark figure: what it runs, what it measures, and the target it is held to.

A figure is a value with its unit, the baseline it is compared with (raw Celery, or a
fixed target), and the ratio between them. Sizes come from ``Sizes``: the full run, or a
tenth of it for ``--quick``.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, text

from bench import harness

#: Seconds an instance may take before the benchmark gives up on it.
RUN_TIMEOUT = 900.0
#: Seconds between polls of an instance's state (short: latency is measured with it).
STATE_POLL = 0.002
#: Seconds between samples of the workers' memory.
MEMORY_POLL = 0.25
#: Share of a memory run's subtasks after which the workers count as warmed up.
WARM_UP_SHARE = 0.1
#: Pipeline instance states in which nothing more happens without an operator.
FINISHED = ("COMPLETED", "ERRORS_STALLED", "TRANSITION_FAILED")


@dataclass(frozen=True)
class Sizes:
    """How big each figure's run is."""

    throughput_subtasks: int = 10_000
    latency_runs: int = 20
    restart_tasks: int = 1_000
    status_tasks: int = 10_000
    status_subtasks_per_task: int = 100
    marshal_rows: int = 100_000
    memory_subtasks: int = 100_000

    def smaller(self, factor: int) -> Sizes:
        return Sizes(**{key: max(1, value // factor) for key, value in asdict(self).items()})


@dataclass(frozen=True)
class Figure:
    """One measured value beside its baseline; ``higher_is_better`` orients the ratio."""

    name: str
    value: float
    unit: str
    baseline: float
    baseline_label: str
    higher_is_better: bool
    #: The ratio to reach (at least, or at most); None for a figure reported for information.
    target_ratio: float | None
    details: dict[str, Any]

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> bool | None:
        if self.target_ratio is None:
            return None
        if self.higher_is_better:
            return self.ratio >= self.target_ratio
        return self.ratio <= self.target_ratio

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


# -- helpers ---------------------------------------------------------------------------------


def write_inputs(directory: Path, count: int) -> None:
    """``count`` empty input files: the algorithm ignores them, marshaling links them."""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        (directory / f"{index:07d}.in").touch()


class StateReader:
    """Reads instance progress on a connection of its own, outside the pipeline's write
    transactions (SQLite's BEGIN IMMEDIATE would make every poll take the write lock)."""

    def __init__(self) -> None:
        from config.settings import get_settings

        self.engine = create_engine(get_settings().db_url)

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def state(self, instance_id: int) -> str:
        return str(self.scalar("SELECT state FROM pipeline_instances WHERE id = :i", i=instance_id))

    def wait_finished(self, instance_id: int, poll: float = STATE_POLL) -> str:
        return harness.wait_for(
            lambda: (state := self.state(instance_id)) in FINISHED and state,
            RUN_TIMEOUT,
            f"instance {instance_id}",
            poll,
        )


def run_instance(reader: StateReader, pipeline: str, poll: float = STATE_POLL) -> tuple[int, float]:
    """Submit ``pipeline`` and wait for it to finish; returns its id and the seconds taken."""
    from pipeline.submit import submit

    started = time.perf_counter()
    instance = submit(pipeline).id
    state = reader.wait_finished(instance, poll)
    elapsed = time.perf_counter() - started
    if state != "COMPLETED":
        raise RuntimeError(f"{pipeline} instance {instance} ended {state}")
    return instance, elapsed


# -- a. throughput and b. latency ------------------------------------------------------------


def raw_throughput(count: int) -> float:
    """Raw Celery no-op tasks per second, sent and every result awaited."""
    from celery.result import ResultSet

    from bench import raw

    started = time.perf_counter()
    results = ResultSet([raw.noop.delay() for _ in range(count)])
    results.get(timeout=RUN_TIMEOUT)
    return count / (time.perf_counter() - started)


def raw_latency(runs: int) -> float:
    """Median seconds of a raw Celery chain of 4 no-op tasks, sent and awaited."""
    from celery import chain

    from bench import raw

    times = []
    for _ in range(runs + 1):  # the first warms the connections up
        started = time.perf_counter()
        chain(*(raw.noop.si() for _ in range(4))).apply_async().get(timeout=RUN_TIMEOUT)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:])


def pipeline_throughput(cluster: harness.Cluster, count: int) -> tuple[float, dict[str, Any]]:
    write_inputs(cluster.datastore / "throughput" / "many", count)
    reader = StateReader()
    instance, elapsed = run_instance(reader, "bench-throughput", poll=0.05)
    return count / elapsed, {"seconds": elapsed, "instance": instance}


def pipeline_latency(cluster: harness.Cluster, runs: int) -> tuple[float, dict[str, Any]]:
    write_inputs(cluster.datastore / "latency" / "one", 1)
    reader = StateReader()
    times = [run_instance(reader, "bench-latency")[1] for _ in range(runs + 1)]
    return statistics.median(times[1:]), {"runs": runs, "min": min(times[1:])}


# -- c. restart ------------------------------------------------------------------------------


def restart_failed(cluster: harness.Cluster, tasks: int) -> list[Figure]:
    """An instance whose every task failed; restart them all (resubmit) and time it."""
    from pipeline.restart import restart_failed as restart

    for index in range(tasks):
        write_inputs(cluster.datastore / f"r{index:05d}" / "restart", 1)
    reader = StateReader()
    from pipeline.submit import submit

    instance = submit("bench-restart").id
    state = reader.wait_finished(instance, poll=0.1)
    if state != "ERRORS_STALLED":
        raise RuntimeError(f"bench-restart instance {instance} ended {state}")
    started = time.perf_counter()
    outcomes = restart(instance, "resubmit")
    returned = time.perf_counter() - started
    rerun_sql = (
        "SELECT count(*) FROM subtasks JOIN tasks ON tasks.id = subtasks.task_id"
        " WHERE tasks.instance_id = :i AND subtasks.attempts >= 2"
    )
    harness.wait_for(
        lambda: reader.scalar(rerun_sql, i=instance) >= tasks, RUN_TIMEOUT, "rerun", 0.02
    )
    running = time.perf_counter() - started
    details = {"tasks": tasks, "restarted": sum(o.ok for o in outcomes)}
    return [
        Figure("c. restart-failed: call returns", returned, "s", 1.0, "1 s", False, 1.0, details),
        Figure(
            "c. restart-failed: every task running again",
            running,
            "s",
            1.0,
            "1 s",
            False,
            None,
            details,
        ),
    ]
