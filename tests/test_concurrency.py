"""Many workers racing on PostgreSQL: 8 worker processes on 2 queues finish 400 subtasks,
and every count is exactly right (each outcome recorded once, under the task row's lock)."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from pipeline.database import transaction
from pipeline.domain.models import Subtask
from tests.support import Cluster, PostgresServer, make_cluster

pytestmark = [pytest.mark.e2e, pytest.mark.postgres, pytest.mark.xdist_group("concurrency")]

#: Units of work, and input files (one subtask each) per unit and node.
BATCHES, FILES_PER_BATCH = 2, 100
#: Two root nodes on queues of their own, each with one task per batch.
NODES = {"left": "alpha", "right": "beta"}
SUBTASKS = BATCHES * FILES_PER_BATCH * len(NODES)
#: Two workers with four pool processes each: eight processes racing for the same rows.
WORKERS, CONCURRENCY = 2, 4

DEFINITION = """
name: many
description: A no-op algorithm over many small files, on two queues.
data_file_types:
  item: {location: "{batch}/in", pattern: "*.txt"}
nodes:
"""
NODE = """  - name: NAME
    algorithm: tests.algorithms:noop
    inputs: [item]
    execution: {queue: QUEUE}
"""


def write_definition(directory: Path) -> Path:
    nodes = "".join(
        NODE.replace("NAME", name).replace("QUEUE", queue) for name, queue in NODES.items()
    )
    path = directory / "many.yaml"
    path.write_text(DEFINITION + nodes)
    return path


def write_inputs(datastore: Path) -> None:
    for batch in range(BATCHES):
        directory = datastore / f"batch-{batch}" / "in"
        directory.mkdir(parents=True)
        for number in range(FILES_PER_BATCH):
            (directory / f"item-{number:04d}.txt").write_text(str(number))


@pytest.fixture
def busy_cluster(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Cluster]:
    """A PostgreSQL cluster with the test pipeline and its inputs, 2 workers of 4 processes."""
    cluster = make_cluster(
        "postgres",
        postgres,
        PIPELINE_WORKER_CONCURRENCY=str(CONCURRENCY),
        PIPELINE_CLUSTER_SERVICES="",
    )
    try:
        cluster.cli("definitions", "import", write_definition(tmp_path))
        write_inputs(cluster.datastore)
        cluster.start(workers=WORKERS)
        cluster.activate(monkeypatch)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.home, ignore_errors=True)


def test_eight_worker_processes_finish_400_subtasks_with_exact_counts(
    busy_cluster: Cluster,
) -> None:
    started = time.monotonic()
    instance = int(busy_cluster.json("submit", "many")["id"])
    busy_cluster.wait(instance, timeout=240)
    elapsed = time.monotonic() - started

    tasks = busy_cluster.tasks(instance)
    assert sorted((t["node"], t["unit_of_work"]) for t in tasks) == sorted(
        (node, f"batch-{batch}") for node in NODES for batch in range(BATCHES)
    )
    for task in tasks:
        assert (task["p_state"], task["error"]) == ("COMPLETE", False)
        counts = (task["total_subtasks"], task["completed_subtasks"], task["failed_subtasks"])
        assert counts == (FILES_PER_BATCH, FILES_PER_BATCH, 0), task
    with transaction() as session:
        by_state = dict(
            session.execute(select(Subtask.state, func.count()).group_by(Subtask.state)).all()
        )
        runs = session.scalar(select(func.sum(Subtask.attempts)))
        hosts = set(session.scalars(select(Subtask.worker_host).distinct()))
        processes = session.scalar(select(func.count(func.distinct(Subtask.worker_pid))))
    assert by_state == {"COMPLETE": SUBTASKS}
    assert runs == SUBTASKS, "each subtask ran exactly once"
    assert len(hosts) == WORKERS, hosts
    assert processes == WORKERS * CONCURRENCY, "every pool process took its share"
    print(f"{SUBTASKS} subtasks in {elapsed:.1f} s: {SUBTASKS / elapsed:.0f} per second")


def test_a_big_marshal_on_a_fresh_database_gives_the_planner_its_subtasks(
    postgres: PostgresServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a new PostgreSQL database, a task of 1,200 subtasks: once marshaled, the planner
    counts its rows (``refresh_statistics``) and claims a batch of them by index, not by a
    scan of every row under the task's lock (figure a on PostgreSQL: 5 to 8 ms a claim)."""
    from sqlalchemy import text

    from pipeline.operations import facade
    from tests.support import InProcessWorker, wait_for

    cluster = make_cluster("postgres", postgres, PIPELINE_CLUSTER_SERVICES="")
    try:
        cluster.cli("definitions", "import", write_definition(tmp_path))
        directory = cluster.datastore / "batch-0" / "in"
        directory.mkdir(parents=True)
        for number in range(1_200):
            (directory / f"item-{number:04d}.txt").write_text(str(number))
        cluster.activate(monkeypatch)
        with InProcessWorker() as worker:
            facade.submit("many", None, "left")
            worker.run_next()  # the marshal

        def counted() -> bool:  # the subtasks, and the found inputs in the ledger
            with transaction() as session:
                known = session.execute(
                    text(
                        "SELECT relname, reltuples FROM pg_class"
                        " WHERE relname IN ('subtasks', 'datastore_files')"
                    )
                ).all()
            return all(rows >= 1_200 for _, rows in known)

        assert wait_for(counted, timeout=30, what="the subtasks and found inputs analyzed")
        with transaction() as session:
            ids = list(session.scalars(select(Subtask.id).limit(100)))
            plan = session.scalars(
                text("EXPLAIN UPDATE subtasks SET error = '' WHERE id = ANY(:ids)"), {"ids": ids}
            ).all()
        assert "Seq Scan" not in "\n".join(plan), plan
    finally:
        cluster.stop()
        shutil.rmtree(cluster.home, ignore_errors=True)
