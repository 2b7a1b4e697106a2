"""Nodes on a real one-host Slurm (``tests/slurm.py``), driven through the ``pipeline``
command as an operator would: a node of 200 subtasks runs as one job array and the
instance completes, with one ``squeue`` per monitor cycle (counted by a wrapper on the
cluster's PATH); halt leaves nothing in ``squeue``; a job cancelled while it runs loses no
subtask."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.slurm import OneHostSlurm, one_host_slurm
from tests.support import REPO, Cluster, started_cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("slurm")]

#: A node of ``per_file`` subtasks on Slurm, 20 subtasks per array element.
DEFINITION = """
name: on-slurm
python_path: ["{repo}"]
data_file_types:
  number: {{location: "{{unit}}/in", pattern: "n*.txt"}}
  echoed: {{location: "{{unit}}/out", pattern: "*-echo.txt"}}
nodes:
  - name: echo
    algorithm: tests.algorithms:{algorithm}
    inputs: [number]
    outputs: [echoed]
    execution:
      executor: slurm
      batch: {{subtasks_per_job: {per_job}, walltime: "00:10:00", memory_gb: 0.1}}
"""
JOB_NAME = "pipeline-test-slurm"
#: ``squeue`` on the cluster's PATH, logging when it was called before it runs.
SQUEUE_WRAPPER = '#!/bin/sh\ndate +%s.%N >> "{log}"\nexec /usr/bin/squeue "$@"\n'


@pytest.fixture(scope="module")
def slurm() -> Iterator[OneHostSlurm]:
    with one_host_slurm() as started:
        yield started


@pytest.fixture
def cluster(slurm: OneHostSlurm, tmp_path: Path) -> Iterator[Cluster]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    wrapper = bin_dir / "squeue"
    wrapper.write_text(SQUEUE_WRAPPER.format(log=tmp_path / "squeue.log"))
    wrapper.chmod(wrapper.stat().st_mode | stat.S_IXUSR)
    with started_cluster(
        SLURM_CONF=str(slurm.conf),
        PATH=f"{bin_dir}:{os.environ['PATH']}",
        PIPELINE_BATCH_JOB_NAME=JOB_NAME,
    ) as made:
        yield made


def on_slurm(cluster: Cluster, tmp_path: Path, files: int, per_job: int, algorithm: str) -> None:
    """Import the node on Slurm, with ``files`` input files (one subtask each)."""
    definition = tmp_path / "on-slurm.yaml"
    text = DEFINITION.format(repo=REPO, algorithm=algorithm, per_job=per_job)
    definition.write_text(text)
    cluster.cli("definitions", "import", definition)
    delivery = tmp_path / "numbers"
    delivery.mkdir()
    for number in range(files):
        (delivery / f"n{number:03d}.txt").write_text(str(number))
    cluster.cli("datastore", "import", delivery, "--type", "number", "--unit", "u1")


def running(slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path, **node: Any) -> int:
    """An instance of the node on Slurm (``on_slurm``), once one of its elements runs."""
    on_slurm(cluster, tmp_path, **node)
    instance = int(cluster.json("submit", "on-slurm")["id"])
    wait_for(lambda: any("RUNNING" in job for job in slurm.jobs(JOB_NAME)), what="a job running")
    return instance


def squeue_calls(tmp_path: Path) -> list[float]:
    log = tmp_path / "squeue.log"
    return [float(line) for line in log.read_text().split()] if log.exists() else []


def test_a_node_of_200_subtasks_runs_as_one_job_array_with_one_squeue_per_cycle(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    on_slurm(cluster, tmp_path, files=200, per_job=20, algorithm="echo")
    instance = int(cluster.json("submit", "on-slurm")["id"])
    cluster.wait(instance, timeout=300)
    [task] = cluster.tasks(instance)
    assert (task["completed_subtasks"], task["failed_subtasks"]) == (200, 0)
    outputs = sorted(p.name for p in (cluster.datastore / "u1" / "out").iterdir())
    assert outputs == [f"n{number:03d}-echo.txt" for number in range(200)]
    jobs = cluster.json("task", task["id"])["batch_jobs"]
    assert [(job["elements"], job["subtasks"]) for job in jobs] == [(10, 200)], "one array"
    [job] = jobs
    assert job["elements_by_state"] == {"COMPLETED": 10}
    assert job["estimated_node_hours"] == pytest.approx(200 * 600 / 3600), "the stated guess"
    assert 0 < job["node_hours"] < 1, "measured from the elements' elapsed times"
    shown = cluster.cli("task", task["id"]).stdout
    assert "batch jobs" in shown and "33.3 node-h" in shown and "10: 10 COMPLETED" in shown
    [row] = [row for row in cluster.json("cluster", "status") if row["name"] == "slurm"]
    assert row["alive"] is True and "UP" in row["message"]
    calls = squeue_calls(tmp_path)
    assert calls, "the monitor asked squeue"
    gaps = [later - earlier for earlier, later in zip(calls, calls[1:], strict=False)]
    assert min(gaps, default=1.0) > 0.5, f"one squeue per cycle (1 s apart), not {gaps}"
    assert slurm.jobs(JOB_NAME) == []


def test_halt_cancels_the_job_array_and_leaves_nothing_in_squeue(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    instance = running(slurm, cluster, tmp_path, files=6, per_job=1, algorithm="hang")
    [task] = cluster.tasks(instance)
    cluster.cli("halt", task["id"])
    wait_for(lambda: slurm.jobs(JOB_NAME) == [], what="squeue to have no job left")
    [task] = cluster.tasks(instance)
    assert task["state"].startswith("ERROR")


def test_a_job_cancelled_while_it_runs_loses_no_subtask(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    instance = running(slurm, cluster, tmp_path, files=4, per_job=2, algorithm="slow_echo")
    first = slurm.jobs(JOB_NAME)[0].split("_")[0]
    slurm.run("scancel", first)  # an administrator's
    cluster.wait(instance, timeout=300)
    [task] = cluster.tasks(instance)
    assert (task["completed_subtasks"], task["failed_subtasks"]) == (4, 0)
    assert max(cluster.attempts(task["id"])) == 2, "the cancelled ones ran again"
    assert any("without outcomes" in a["message"] for a in cluster.json("alerts"))
