"""Where figure b's time goes, step by step: ``python -m bench.breakdown`` prints it, and
``python -m bench`` records it with figure b.

Runs the one-subtask pipeline's stages one after another in this process, on a cluster
that is initialised but not started (its broker is a Redis database that nobody reads),
and takes the median milliseconds of each step: the database work of each stage, the
forked child that runs the algorithm, and one publish. Compare with figure b's raw chain
of 4, whose every hop is a publish and a worker's receipt and nothing else.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bench import figures, harness

#: The prototype of a design that forks nothing on the chain's path (``--fork-free``):
#: every chain's subtask runs in the one child kept from the first, whatever its instance,
#: as a child forked ahead by a small separate process would be ready for it, and the
#: worker pays no copy-on-write faults after a fork. It measures what such a design could
#: save at most; the product does not share a child between instances.
FORK_FREE_SCOPE = ("prototype", 0, "every instance")
#: Chains timed; the first few warm the caches and connections up and are left out.
#: Chains run before the timed ones, so connections and caches are warm.
WARM_UP = 5


def stage_breakdown(
    base: Path, broker: str, runs: int, fork_free: bool = False
) -> dict[str, float]:
    """Median milliseconds of each step of a one-subtask chain, run in this process
    (``runs`` chains, the first ``WARM_UP`` not counted); ``fork_free``: see
    ``FORK_FREE_SCOPE``."""
    home = base / "home"
    cluster = harness.Cluster(home, harness.cluster_env(home, broker))
    cluster.cli("cluster", "init", "--no-sample-data")
    cluster.activate()
    figures.write_inputs(cluster.datastore / "latency" / "one", 1)
    times: dict[str, list[float]] = {}

    def timed(step: str, call: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        result = call(*args)
        times.setdefault(step, []).append((time.perf_counter() - started) * 1000)
        return result

    _run_chains(timed, WARM_UP + max(1, runs - WARM_UP), fork_free)
    return {step: round(statistics.median(values[WARM_UP:]), 2) for step, values in times.items()}


def _run_chains(timed: Callable[..., Any], runs: int, fork_free: bool = False) -> None:
    from sqlalchemy import select

    from pipeline.database import transaction
    from pipeline.domain.lifecycle import Stage
    from pipeline.domain.models import Task
    from pipeline.engine import runner, stages
    from pipeline.engine.leases import Claim, LeaseRenewal
    from pipeline.messaging.broker import CeleryPublisher, publish_now
    from pipeline.messaging.messages import stage_message
    from pipeline.messaging.publisher import use_publisher
    from pipeline.operations.submit import submit

    class Unpublished(CeleryPublisher):
        """The broker as always, but what the stages call for is not sent: a stage's
        messages are published by its Celery task, timed on their own here."""

        def publish(self, messages: Any) -> None:
            pass

    previous = use_publisher(Unpublished())
    beat = LeaseRenewal(lambda: None, 60)
    try:
        for _ in range(runs):
            timed(
                "publish one stage message (and its task-sent event)",
                publish_now,
                [stage_message(Stage.MONITOR, 0, 0, "default")],
            )
            instance = timed("submit (broker check, one transaction)", submit, "bench-latency").id
            with transaction() as session:
                task = session.scalars(select(Task).where(Task.instance_id == instance)).one()
            timed(
                "marshal (three transactions, the task directory, the subtask queued)",
                stages.marshal,
                task.id,
                1,
            )
            claim = Claim(task.id, 1, 0, 1)
            [run] = timed("claim the subtask (one transaction)", stages.begin_subtasks, [claim])
            if fork_free:
                run = replace(run, scope=FORK_FREE_SCOPE)
            else:
                runner.prepare_spare()  # as a worker does between two Celery tasks
            outcomes = timed(
                "run the no-op in the spare child, read its outcome", _in_child, run, beat
            )
            timed(
                "record the outcome and monitor's decision (one transaction)",
                stages.finish_subtasks,
                [(claim, outcomes[0])],
            )
            timed("store (one transaction: the node stores nothing)", stages.store, task.id, 1)
    finally:
        use_publisher(previous)


def _in_child(run: Any, beat: Any) -> list[Any]:
    from pipeline.engine import runner

    return list(runner.run_many(run.algorithm, [run.context], run.timeout, beat, (), run.scope))


def main() -> None:
    fork_free = "--fork-free" in sys.argv[1:]
    with (
        tempfile.TemporaryDirectory(prefix="bench-breakdown-") as base,
        harness.redis_server(Path(base)) as port,
    ):
        medians = stage_breakdown(
            Path(base), f"redis://127.0.0.1:{port}", figures.Sizes().breakdown_runs, fork_free
        )
    title = "one-subtask pipeline, stage by stage in one process (median ms)"
    table = Table(title=title + (", the fork-free prototype" if fork_free else ""))
    table.add_column("step")
    table.add_column("ms", justify="right")
    for step, value in medians.items():
        table.add_row(step, f"{value:.2f}")
    Console().print(table)


if __name__ == "__main__":
    main()
