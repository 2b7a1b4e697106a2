"""Nodes on a real one-host Slurm (``tests/slurm.py``), driven through the ``pipeline``
command as an operator would: a node of 200 subtasks runs as one job array and the
instance completes, with one ``squeue`` per monitor cycle (counted by a wrapper on the
cluster's PATH); halt leaves nothing in ``squeue``; a job cancelled while it runs, or killed at its
walltime, loses no subtask; the cluster stopped and started while jobs run picks them up
again."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.slurm import OneHostSlurm, missing, one_host_slurm
from tests.support import (
    REPO,
    STOPPED_WITH_ERRORS,
    Cluster,
    started_cluster,
    unavailable,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("slurm")]

#: The input files of every node on Slurm here (``on_slurm``): unit ``u1``, one subtask each.
NUMBER = {"location": "{unit}/in", "pattern": "n*.txt"}
JOB_NAME = "pipeline-test-slurm"
#: ``squeue`` on the cluster's PATH, logging when it was called before it runs.
SQUEUE_WRAPPER = '#!/bin/sh\ndate +%s.%N >> "{log}"\nexec /usr/bin/squeue "$@"\n'


@pytest.fixture(scope="module")
def slurm() -> Iterator[OneHostSlurm]:
    if why := missing():
        unavailable(why)
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
        TEST_GATES=str(gates(tmp_path)),
    ) as made:
        yield made


def gates(tmp_path: Path) -> Path:
    """Where ``tests.algorithms.gated_echo`` waits for its subtask's gate to open."""
    directory = tmp_path / "gates"
    directory.mkdir(exist_ok=True)
    return directory


def on_slurm_node(algorithm: str, **batch: Any) -> dict[str, Any]:
    """A node of ``on_slurm``'s, its batch settings those given."""
    return {"algorithm": algorithm, "batch": {"walltime": "00:10:00", "memory_gb": 0.1, **batch}}


def on_slurm(
    cluster: Cluster,
    tmp_path: Path,
    files: int,
    nodes: dict[str, dict[str, Any]] | None = None,
    environments: dict[str, Any] | None = None,
    options: Sequence[str] = (),
) -> int:
    """Import pipeline ``on-slurm`` (independent ``nodes``, by name, see ``on_slurm_node``;
    by default ``echo``, 20 subtasks an array element; with ``environments`` as its remote
    environments) and ``files`` input files (one subtask each), and submit it with
    ``options``; the instance."""
    nodes = nodes or {"echo": on_slurm_node("echo", subtasks_per_job=20)}
    definition = {
        "name": "on-slurm",
        "remote_environments": environments or {},
        "python_path": [str(REPO)],
        "data_file_types": {
            "number": NUMBER,
            **{
                f"{name}-out": {"location": f"{{unit}}/{name}", "pattern": "*-echo.txt"}
                for name in nodes
            },
        },
        "nodes": [
            {
                "name": name,
                "algorithm": f"tests.algorithms:{node['algorithm']}",
                "inputs": ["number"],
                "outputs": [f"{name}-out"],
                "execution": {"executor": "slurm", "batch": node["batch"]},
            }
            for name, node in nodes.items()
        ],
    }
    path = tmp_path / "on-slurm.yaml"
    path.write_text(yaml.safe_dump(definition))
    cluster.cli("definitions", "import", path)
    delivery = tmp_path / "numbers"
    delivery.mkdir()
    for number in range(files):
        (delivery / f"n{number:03d}.txt").write_text(str(number))
    cluster.cli("datastore", "import", delivery, "--type", "number", "--unit", "u1")
    return int(cluster.json("submit", "on-slurm", *options)["id"])


def running(slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path, files: int, **node: Any) -> int:
    """An instance of one node on Slurm (``on_slurm``), once one of its elements runs."""
    instance = on_slurm(cluster, tmp_path, files, {"echo": on_slurm_node(**node)})
    wait_for(lambda: any("RUNNING" in job for job in slurm.jobs(JOB_NAME)), what="a job running")
    return instance


def ended_jobs(cluster: Cluster, task_id: int) -> list[dict[str, Any]]:
    """The task's job arrays once the monitor saw each end: an element exits a moment
    after writing its last outcome, which may already have let the task go on."""

    def ended() -> list[dict[str, Any]] | None:
        jobs: list[dict[str, Any]] = cluster.json("task", task_id)["batch_jobs"]
        return jobs if all(job["state"] in ("ENDED", "CANCELLED") for job in jobs) else None

    return wait_for(ended, what=f"the jobs of task {task_id} to end")  # type: ignore[no-any-return]


def squeue_calls(tmp_path: Path) -> list[float]:
    log = tmp_path / "squeue.log"
    return [float(line) for line in log.read_text().split()] if log.exists() else []


def test_a_node_of_200_subtasks_runs_as_one_job_array_with_one_squeue_per_cycle(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    instance = on_slurm(cluster, tmp_path, files=200)
    cluster.wait(instance, timeout=300)
    [task] = cluster.tasks(instance)
    assert (task["completed_subtasks"], task["failed_subtasks"]) == (200, 0)
    outputs = sorted(p.name for p in (cluster.datastore / "u1" / "echo").iterdir())
    assert outputs == [f"n{number:03d}-echo.txt" for number in range(200)]
    jobs = ended_jobs(cluster, task["id"])
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
    planned = cluster.cli("submit", "on-slurm", "--dry-run").stdout
    assert "echo on slurm: 1 job, 200 subtasks, " in planned
    assert " as measured over 200 subtasks run before" in planned, "not the guess any more"


#: The one-host Slurm as a remote environment (Ziggy's): its partition ``debug`` as two
#: queues, one granted to a group.
ONE_HOST = {
    "batch_system": "slurm",
    "cost_unit": "SBU",
    "architectures": {"tiny": {"cores": 1, "ram_gigabytes": 0.1, "cost": 3}},
    "queues": {
        "debug": {"max_wall_time_hours": 1},
        "granted": {"reserved": True, "auto_selectable": False},
    },
}


def test_a_node_selected_onto_a_remote_environment_runs_on_its_queue_at_its_price(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    onto = ["--set=echo:batch.environment=one-host", "--set=echo:batch.architecture=tiny"]
    node = {"echo": {"algorithm": "echo", "batch": {"walltime": "00:10:00"}}}
    instance = on_slurm(cluster, tmp_path, 4, node, {"one-host": ONE_HOST}, onto)
    cluster.wait(instance, timeout=300)
    [task] = cluster.tasks(instance)
    assert (task["completed_subtasks"], task["failed_subtasks"]) == (4, 0)
    batch = cluster.json("task", task["id"])["execution"]["batch"]
    assert (batch["queue"], batch["partition"], batch["cores"]) == ("debug", "debug", 1)
    [job] = ended_jobs(cluster, task["id"])
    assert job["partition"] == "debug", "the queue chosen (auto-selectable, fits 10 min)"
    assert job["cost"] == pytest.approx(3 * job["node_hours"]), "the architecture's price"

    refused = cluster.cli(
        "submit", "on-slurm", *onto, "--set=echo:batch.queue=granted", check=False
    )
    assert refused.returncode == 1 and len(refused.stderr.splitlines()) == 1
    assert "queue 'granted' of remote environment 'one-host' is reserved" in refused.stderr
    assert len(cluster.json("instances")) == 1 and slurm.jobs(JOB_NAME) == []


def test_halt_cancels_the_job_array_and_leaves_nothing_in_squeue(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    instance = running(slurm, cluster, tmp_path, files=6, algorithm="hang")
    [task] = cluster.tasks(instance)
    cluster.cli("halt", task["id"])
    wait_for(lambda: slurm.jobs(JOB_NAME) == [], what="squeue to have no job left")
    [task] = cluster.tasks(instance)
    assert task["state"].startswith("ERROR")


def test_a_job_cancelled_while_it_runs_loses_no_subtask(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    instance = running(slurm, cluster, tmp_path, files=4, algorithm="slow_echo", subtasks_per_job=2)
    first = slurm.jobs(JOB_NAME)[0].split("_")[0]
    slurm.run("scancel", first)  # an administrator's
    cluster.wait(instance, timeout=300)
    [task] = cluster.tasks(instance)
    assert (task["completed_subtasks"], task["failed_subtasks"]) == (4, 0)
    assert max(cluster.attempts(task["id"])) == 2, "the cancelled ones ran again"
    assert any("without outcomes" in a["message"] for a in cluster.json("alerts"))


def test_a_job_killed_at_its_walltime_loses_no_subtask(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    """Slurm counts a walltime in whole minutes (00:00:05 is a minute) and its controller
    looks for jobs over theirs every 30 s: both nodes' jobs are killed 60 to 90 s in."""
    nodes = {
        "again": on_slurm_node("hang_on_first_run", walltime="00:00:05", subtasks_per_job=2),
        "failing": on_slurm_node(
            "hang", walltime="00:00:05", subtasks_per_job=2, lost_subtasks="fail"
        ),
    }
    instance = on_slurm(cluster, tmp_path, 2, nodes)
    cluster.wait(instance, expect=STOPPED_WITH_ERRORS, timeout=300)
    tasks = {task["node"]: task for task in cluster.tasks(instance)}

    again = tasks["again"]
    assert (again["state"], again["counts"]) == ("COMPLETE", "2/2 (0)"), "run again, then stored"
    assert cluster.attempts(again["id"]) == [2, 2]
    timed_out, rerun = ended_jobs(cluster, again["id"])
    assert timed_out["elements_by_state"] == {"TIMEOUT": 1}
    assert rerun["elements_by_state"] == {"COMPLETED": 1}
    history = [event["message"] for event in cluster.json("task", again["id"])["history"]]
    assert (
        f"batch job {timed_out['job_id']} ended (TIMEOUT) without outcomes for subtasks 0, 1:"
        " 2 subtasks run again, 0 failed"
    ) in history

    failing = tasks["failing"]
    assert (failing["state"], failing["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "0/2 (2)")
    [job] = ended_jobs(cluster, failing["id"])
    assert job["elements_by_state"] == {"TIMEOUT": 1}
    errors = {subtask["error"] for subtask in cluster.json("subtasks", failing["id"])}
    assert errors == {f"batch job {job['job_id']} ended (TIMEOUT) without its outcome"}
    assert "1: 1 TIMEOUT" in cluster.cli("task", failing["id"]).stdout
    assert slurm.jobs(JOB_NAME) == []
    longer = ("--set", "batch.walltime=00:10:00")
    [preview] = cluster.restart(failing["id"], "--mode", "resubmit", "--dry-run", *longer)
    assert "; on slurm: 1 job, 2 subtasks, " in preview["message"]
    assert " as measured over 2 subtasks run before" in preview["message"]


def test_the_cluster_stopped_and_started_while_jobs_run_picks_them_up_again(
    slurm: OneHostSlurm, cluster: Cluster, tmp_path: Path
) -> None:
    """Two elements of two subtasks, each subtask waiting for its gate: the first element
    ends while the cluster is stopped, the second runs on after it started again, and
    the monitor follows both again on its own (no resume-monitoring asked)."""
    node = on_slurm_node("gated_echo", subtasks_per_job=2)
    instance = on_slurm(cluster, tmp_path, 4, {"echo": node})
    wait_for(
        lambda: slurm.jobs(JOB_NAME) and all("RUNNING" in job for job in slurm.jobs(JOB_NAME)),
        what="both elements running",
    )
    [task] = cluster.tasks(instance)
    cluster.stop()
    for index in (0, 1):
        (gates(tmp_path) / str(index)).touch()
    wait_for(lambda: len(slurm.jobs(JOB_NAME)) == 1, what="the first element to end")
    cluster.start()  # nobody asks: the monitor picks the jobs up on its own
    for index in (2, 3):
        (gates(tmp_path) / str(index)).touch()
    cluster.wait(instance, timeout=120)
    [task] = cluster.tasks(instance)
    assert task["counts"] == "4/4 (0)"
    assert cluster.attempts(task["id"]) == [1, 1, 1, 1], "none ran again"
    [job] = ended_jobs(cluster, task["id"])
    assert job["elements_by_state"] == {"COMPLETED": 2}
    assert slurm.jobs(JOB_NAME) == []
