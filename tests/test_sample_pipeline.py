"""The sample pipeline on a real cluster (redis-server, a Celery worker and beat), as the
README walks through it: a clean run, then Ziggy's failed task, resubmitted, and resumed.

They share a cluster with the other modules of xdist group ``shared-cluster``.
"""

from __future__ import annotations

import re
import shutil
from collections import Counter

import pytest

from tests.support import (
    SAMPLE_COMPLETED,
    STOPPED_WITH_ERRORS,
    Cluster,
    assert_sample_outputs,
    rows,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("shared-cluster")]

TASK_FIELDS = {
    "id",
    "node",
    "unit_of_work",
    "p_state",
    "error",
    "total_subtasks",
    "completed_subtasks",
    "failed_subtasks",
}


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    shared_cluster.set_parameters(throw_exception_subtask_0=False, execution_pause_seconds=0)
    return shared_cluster


def test_a_clean_run_completes_with_the_right_pixels(cluster: Cluster) -> None:
    for old in cluster.datastore.glob("set-*/L[123]"):  # a clean datastore: outputs of this run
        shutil.rmtree(old)
    log = cluster.home / "logs" / "worker1.log"
    logged = len(log.read_text())
    instance = cluster.submit()
    cluster.wait(instance)

    [summary] = [i for i in cluster.json("instances") if i["id"] == instance]
    assert summary["state"] == "COMPLETED" and summary["pipeline"] == "sample"
    tasks = cluster.tasks(instance)
    assert all(set(task) >= TASK_FIELDS for task in tasks)
    assert rows(tasks) == SAMPLE_COMPLETED
    assert_sample_outputs(cluster.datastore)
    history = cluster.json("task", tasks[0]["id"])["history"]
    assert all(e["host"].startswith("worker1@") for e in history)

    # One message per marshal and per subtask: execute, monitor and store ran in the worker
    # that finished the step before each (the reconciler re-sends none: its limit is 10 min).
    run = log.read_text()[logged:]
    received = Counter(re.findall(r"Task pipeline\.stage\.(\w+)\[\S+\] received", run))
    assert received == {"marshal": 6, "subtask": 18}, received


def test_a_failed_task_resubmitted_fails_again_and_resumed_lets_the_instance_go_on(
    cluster: Cluster,
) -> None:
    """README's "A failed task, restarted": subtask 0 fails on purpose; resubmitting reruns
    it alone (its parameters are frozen: it fails again); resuming the current step stores
    the three good outputs and the instance completes."""
    cluster.set_parameters(throw_exception_subtask_0=True)
    instance = cluster.submit()
    cluster.wait(instance, STOPPED_WITH_ERRORS)
    tasks = cluster.tasks(instance)
    assert {t["node"] for t in tasks} == {"permuter"}
    assert {(t["state"], t["counts"]) for t in tasks} == {("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")}
    assert "ERROR - ALGORITHM_COMPLETE" in cluster.cli("tasks", instance).stdout
    first = tasks[0]["id"]
    assert "subtask 0 failed on purpose" in cluster.cli("logs", first, "--subtask", 0).stdout

    [outcome] = cluster.restart(first, "--mode", "resubmit")
    assert (outcome["ok"], outcome["subtasks"]) == (True, [0])
    cluster.wait(instance, STOPPED_WITH_ERRORS)
    assert cluster.attempts(first) == [2, 1, 1, 1], "only subtask 0 ran again"
    assert cluster.json("task", first)["counts"] == "3/4 (1)"

    cluster.restart("--instance", instance, "--mode", "resume-current-step")
    cluster.wait(instance)
    final = cluster.tasks(instance)
    assert {(t["node"], t["state"]) for t in final} == {
        ("permuter", "COMPLETE"),
        ("flip", "COMPLETE"),
        ("averaging", "COMPLETE"),
    }
    history = [e["message"] for e in cluster.json("task", first)["history"]]
    assert "restart: resubmit" in history and "restart: resume-current-step" in history
    assert "stored 3 files" in history, "the three good outputs, the failed one abandoned"
