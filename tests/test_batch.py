"""A node on a batch system, in the test's own process: the product's in-memory batch
system (``MemoryBatchSystem``) runs each job array's elements through the compute node's
own entry point, and beat's reconciler follows the jobs with one query per cycle. The
same against a real Slurm is ``test_slurm.py``; Slurm's own parsing is tested here too."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from pipeline.engine import batch_system
from pipeline.engine.batch_memory import MemoryBatchSystem
from pipeline.engine.batch_system import ArrayRequest
from pipeline.engine.slurm import elapsed_seconds, parse_squeue_line, sbatch_arguments
from pipeline.operations import facade, queries
from pipeline.recovery import reconcile
from tests.support import REPO, InProcessWorker

#: The sample, its permuter and flip on the batch system, 3 subtasks per array element.
BATCH_NODES = ("permuter", "flip")


@contextmanager
def batch_nodes(tmp_path: Path) -> Iterator[MemoryBatchSystem]:
    """The sample as ``sample-batch`` (permuter and flip with ``executor: slurm``),
    imported, with an in-memory batch system installed."""
    definition = yaml.safe_load((REPO / "config" / "pipelines" / "sample.yaml").read_text())
    definition["name"] = "sample-batch"
    for node in definition["nodes"]:
        if node["name"] in BATCH_NODES:
            node["execution"] = {"executor": "slurm", "batch": {"subtasks_per_job": 3}}
    path = tmp_path / "sample-batch.yaml"
    path.write_text(yaml.safe_dump(definition))
    facade.import_definitions([path])
    system = MemoryBatchSystem()
    replaced = batch_system.use(system)
    try:
        yield system
    finally:
        batch_system.use(replaced)


@pytest.fixture
def slurm(home: Path, worker: InProcessWorker, tmp_path: Path) -> Iterator[MemoryBatchSystem]:
    """``batch_nodes`` in a home of the test's own."""
    with batch_nodes(tmp_path) as system:
        yield system


def cycle(system: MemoryBatchSystem, worker: InProcessWorker) -> int:
    """One reconciler run, then the messages it called for; the queries it made."""
    before = system.queries
    reconcile.reconcile_once()
    worker.drain()
    return system.queries - before


def test_each_task_runs_as_one_job_array_and_the_instance_completes(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch")["id"]
    worker.drain()
    assert "subtask" not in worker.names() and "subtasks" not in worker.names()
    arrays = [(job.request.elements, job.request.comment) for job in slurm.jobs.values()]
    assert [elements for elements, _ in arrays] == [2, 2], "4 subtasks, 3 a job: 2 elements"
    [task, *_] = queries.list_tasks(instance)
    assert task["p_state"] == "ALGORITHM_QUEUED"

    queried = []
    while queries.get_instance(instance)["state"] != "COMPLETED":
        assert len(queried) < 10, queries.list_tasks(instance)
        slurm.run()
        queried.append(cycle(slurm, worker))
    assert set(queried) == {1}, "one query per cycle, whatever the number of jobs"
    assert len(slurm.jobs) == 4, "permuter and flip: one job array per task"
    tasks = {(t["node"], t["unit_of_work"]): t for t in queries.list_tasks(instance)}
    assert {key: t["counts"] for key, t in tasks.items()} == {
        ("permuter", "set-1"): "4/4 (0)",
        ("permuter", "set-2"): "4/4 (0)",
        ("flip", "set-1"): "4/4 (0)",
        ("flip", "set-2"): "4/4 (0)",
        ("averaging", "set-1"): "1/1 (0)",
        ("averaging", "set-2"): "1/1 (0)",
    }


def test_a_job_ended_without_outcomes_runs_its_subtasks_again_or_fails_them(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch", end_node="permuter")["id"]
    worker.drain()
    first, second = slurm.jobs
    slurm.end(first, "TIMEOUT", elements=[0])  # subtasks 0 to 2 of the first task
    slurm.run(first)
    cycle(slurm, worker)
    [rerun] = [job for job in slurm.jobs.values() if job.job_id not in (first, second)]
    assert rerun.request.elements == 1
    slurm.run()
    cycle(slurm, worker)
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    [task, _] = queries.list_tasks(instance)
    assert task["counts"] == "4/4 (0)"
    assert [s["attempts"] for s in queries.list_subtasks(task["id"])] == [2, 2, 2, 1]
    [alert] = [a["message"] for a in queries.list_alerts() if "without outcomes" in a["message"]]
    assert alert == (
        "batch job 1 ended (COMPLETED, TIMEOUT) without outcomes for subtasks 0, 1, 2:"
        " 3 subtasks run again, 0 failed"
    )


def test_halt_cancels_the_jobs_and_nothing_stays_in_the_queue(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch", end_node="permuter")["id"]
    worker.drain()
    task_ids = [t["id"] for t in queries.list_tasks(instance)]
    facade.halt(task_ids)
    assert {state for job in slurm.jobs.values() for state in job.states} == {"CANCELLED"}
    cycle(slurm, worker)
    assert [t["state"] for t in queries.list_tasks(instance)] == ["ERROR - ALGORITHM_QUEUED"] * 2


def test_a_batch_system_that_does_not_answer_is_an_alert_and_loses_nothing(
    slurm: MemoryBatchSystem, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample-batch", end_node="permuter")["id"]
    worker.drain()
    slurm.run()
    slurm.down = True
    cycle(slurm, worker)
    [alert] = [a for a in queries.list_alerts() if "slurm" in a["message"]]
    assert "Unable to contact slurm controller" in alert["message"]
    assert queries.get_instance(instance)["state"] == "PROCESSING"
    slurm.down = False
    cycle(slurm, worker)
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    [alert] = [a for a in queries.list_alerts(True) if "slurm" in a["message"]]
    assert alert["cleared_at"] is not None


# -- Slurm's commands, without a Slurm --------------------------------------------------------


def test_sbatch_is_asked_for_one_array_with_the_batch_settings(tmp_path: Path) -> None:
    request = ArrayRequest(
        name="pipeline-x",
        comment="token",
        command=["python", "-m", "element"],
        elements=200,
        directory=tmp_path,
        partition="long",
        account="science",
        cores=4,
        memory_gb=2.5,
        walltime="02:00:00",
        max_running=10,
        options=["--qos=debug"],
    )
    assert sbatch_arguments(request) == [
        "--parsable",
        "--job-name=pipeline-x",
        "--comment=token",
        "--array=0-199%10",
        f"--chdir={tmp_path}",
        f"--output={tmp_path}/element-%a.log",
        "--time=02:00:00",
        "--cpus-per-task=4",
        "--mem=2560M",
        "--partition=long",
        "--account=science",
        "--qos=debug",
    ]


def test_squeue_lines_are_read_as_elements_with_their_wait_and_run_times() -> None:
    now = datetime(2026, 12, 6, 17, 0, 0)
    running = parse_squeue_line(
        "12|3|RUNNING|1:02:03|2026-12-06T16:00:00|2026-12-06T16:00:30|None|debug|1|tok", now
    )
    assert (running.job_id, running.element, running.state, running.comment) == (
        "12",
        3,
        "RUNNING",
        "tok",
    )
    assert (running.elapsed, running.queued, running.active) == (3723.0, 30.0, True)
    pending = parse_squeue_line(
        "12|7|PENDING|0:00|2026-12-06T16:00:00|N/A|Resources|debug|1|tok", now
    )
    assert (pending.queued, pending.reason, pending.active) == (3600.0, "Resources", True)
    ended = parse_squeue_line("12|4|TIMEOUT|1-00:00:05|N/A|N/A|None|debug|2|tok", now)
    assert (ended.elapsed, ended.nodes, ended.active) == (86405.0, 2, False)
    assert [elapsed_seconds(t) for t in ("0:03", "INVALID", "10:00")] == [3.0, 0.0, 600.0]


def test_cluster_status_says_whether_the_batch_system_answers(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    assert facade.batch_system_status() is None, "no node runs on a batch system"
    with batch_nodes(tmp_path) as system:
        assert facade.batch_system_status() == {
            "name": "slurm",
            "pid": None,
            "alive": True,
            "url": None,
            "message": "in memory: UP",
        }
        system.down = True
        row = facade.batch_system_status()
        assert row is not None and row["alive"] is False
        assert row["message"] == "slurm: squeue: Unable to contact slurm controller"
