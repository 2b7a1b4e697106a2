"""The sample pipeline on a real cluster (redis-server, a Celery worker and beat), as the
README walks through it: a clean run, then Ziggy's failed task, resubmitted, and resumed.

One cluster serves the module; its tests run in order on one test process.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator

import pytest

from tests.support import (
    STOPPED_WITH_ERRORS,
    Cluster,
    assert_sample_outputs,
    started_cluster,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("sample")]

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


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    with started_cluster() as made:
        yield made


def test_a_clean_run_completes_with_the_right_pixels(cluster: Cluster) -> None:
    instance = cluster.submit()
    cluster.wait(instance)

    [summary] = [i for i in cluster.json("instances") if i["id"] == instance]
    assert summary["state"] == "COMPLETED" and summary["pipeline"] == "sample"
    tasks = cluster.tasks(instance)
    assert all(set(task) >= TASK_FIELDS for task in tasks)
    assert [(t["node"], t["state"], t["counts"]) for t in tasks] == [
        ("permuter", "COMPLETE", "4/4 (0)"),
        ("permuter", "COMPLETE", "4/4 (0)"),
        ("flip", "COMPLETE", "4/4 (0)"),
        ("flip", "COMPLETE", "4/4 (0)"),
        ("averaging", "COMPLETE", "1/1 (0)"),
        ("averaging", "COMPLETE", "1/1 (0)"),
    ]
    assert_sample_outputs(cluster.datastore)
    history = cluster.json("task", tasks[0]["id"])["history"]
    assert all(e["host"].startswith("worker1@") for e in history)

    # One message per marshal and per subtask: execute, monitor and store ran in the worker
    # that finished the step before each (beyond any message the monitor re-sent).
    log = (cluster.home / "logs" / "worker1.log").read_text()
    received = Counter(re.findall(r"Task pipeline\.stage\.(\w+)\[\S+\] received", log))
    resent = sum(int(n) for n in re.findall(r"'resent': (\d+)", log))
    assert received["subtask"] == 18 and received["marshal"] >= 6
    continued = received["execute"] + received["monitor"] + received["store"]
    assert received["marshal"] - 6 + continued <= resent, received


def test_a_failed_task_resubmitted_fails_again_and_resumed_lets_the_instance_go_on(
    cluster: Cluster,
) -> None:
    """README's "A failed task, restarted": subtask 0 fails on purpose; resubmitting reruns
    it alone (its parameters are frozen: it fails again); resuming the current step stores
    the three good outputs and the instance completes."""
    cluster.cli("params", "set", "algorithm", "throw_exception_subtask_0=true")
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
