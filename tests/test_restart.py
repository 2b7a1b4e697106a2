"""Restarts and halts that need real processes: running algorithms terminated by a halt,
monitoring reattached through the real broker and workers, and a code fix picked up by
workers that were never restarted. (What each mode does is in ``test_restart_modes.py``.)

One cluster serves the module; its monitor leaves quiet tasks alone for ten minutes, so
what is lost stays lost until an operator resumes monitoring.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis

from config.sample.algorithms import CHANNEL_ORDER
from config.sample.images import pixels
from config.settings import PACKAGED_DEFINITIONS
from pipeline.operations import facade
from tests.support import (
    STOPPED_WITH_ERRORS,
    Cluster,
    algorithms_running_in,
    read_image,
    started_cluster,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("restart")]


@pytest.fixture(scope="module")
def code(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A directory on the workers' path for algorithms the tests change."""
    return tmp_path_factory.mktemp("code")


@pytest.fixture(scope="module")
def cluster(code: Path) -> Iterator[Cluster]:
    with started_cluster(PIPELINE_STALE_AFTER="600", PYTHONPATH=str(code)) as made:
        yield made


def running(cluster: Cluster, task_id: int) -> bool:
    return any(s["state"] == "RUNNING" for s in cluster.json("subtasks", task_id))


def test_a_halt_terminates_running_algorithms_and_each_task_resumes_where_it_stopped(
    cluster: Cluster,
) -> None:
    # Long enough that neither task can finish before the halt, however busy the machine.
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=4")
    instance = cluster.submit("--end-node", "permuter")
    tasks = [t["id"] for t in cluster.tasks(instance)]
    wait_for(lambda: any(running(cluster, t) for t in tasks), what="a subtask to run")

    outcomes = json.loads(cluster.cli("halt", "--instance", instance, "--json").stdout)
    assert {o["task_id"] for o in outcomes if o["ok"]} == set(tasks)
    for task in cluster.tasks(instance):
        assert task["error"] and task["halted"] and task["error_message"] == "halted by operator"
    task_dirs = [Path(cluster.json("task", t)["task_dir"]) for t in tasks]
    wait_for(lambda: not algorithms_running_in(task_dirs), what="halted algorithms to stop")
    halted = {t: cluster.json("subtasks", t) for t in tasks}
    assert not any(s["state"] in ("QUEUED", "RUNNING") for subs in halted.values() for s in subs)

    cluster.restart("--instance", instance, "--mode", "resume-current-step")
    cluster.wait(instance)
    for task_id, subtasks in halted.items():
        old = {s["index"]: s for s in subtasks}
        for new in cluster.json("subtasks", task_id):
            before = old.get(new["index"], {"state": "NEW", "attempts": 0})
            assert new["state"] == "COMPLETE"
            rerun = 0 if before["state"] == "COMPLETE" else 1
            assert new["attempts"] == before["attempts"] + rerun, (task_id, before, new)


def test_a_halt_terminates_a_running_batch_and_a_resubmit_finishes_it(cluster: Cluster) -> None:
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=3")
    instance = cluster.submit("--end-node", "permuter")
    cluster.cli("halt", "--instance", instance)
    cluster.restart(
        "--instance", instance, "--mode", "restart-from-beginning", "--set", "batch_size=4"
    )
    first = cluster.tasks(instance)[0]["id"]
    wait_for(lambda: running(cluster, first), what="a batch to run")
    [outcome] = json.loads(cluster.cli("halt", first, "--json").stdout)
    assert outcome["ok"] and 3 in outcome["subtasks"], "the whole batch was in flight"
    task_dir = Path(cluster.json("task", first)["task_dir"])
    wait_for(lambda: not algorithms_running_in([task_dir]), what="the batch to be terminated")
    assert {s["state"] for s in cluster.json("subtasks", first)} <= {"NEW", "COMPLETE"}

    cluster.restart(first, "--mode", "resubmit")
    cluster.wait(instance)
    assert {s["state"] for s in cluster.json("subtasks", first)} == {"COMPLETE"}


def test_resume_monitoring_keeps_live_work_and_redispatches_what_the_broker_lost(
    cluster: Cluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    broker = redis.Redis.from_url(cluster.process("redis")["url"])
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=3")
    instance = cluster.submit("--end-node", "permuter")
    tasks = [t["id"] for t in cluster.tasks(instance)]
    cluster.activate(monkeypatch)  # poll the database directly: the window is a few seconds

    def queued_behind_running() -> bool:
        listed = facade.list_tasks(instance)
        executing = all(
            t["p_state"] in ("ALGORITHM_QUEUED", "ALGORITHM_EXECUTING") and t["total_subtasks"] == 4
            for t in listed
        )
        states = [s["state"] for t in tasks for s in facade.list_subtasks(t)]
        return executing and states.count("QUEUED") >= 3 and "RUNNING" in states

    wait_for(queued_behind_running, what="subtasks queued behind the running ones")
    lost = sum(broker.delete(key) for key in broker.keys("default*"))  # the queue is gone
    assert lost

    outcomes = cluster.restart(*map(str, tasks), "--mode", "resume-monitoring")
    redispatched = sum(len(o["subtasks"]) for o in outcomes)
    assert redispatched >= 3, outcomes
    assert all("alive" in o["message"] for o in outcomes)
    alive = sum(int(o["message"].split()[0]) for o in outcomes)
    assert alive >= 1, "the running subtasks were found on their worker, and kept"
    cluster.wait(instance)
    for task_id in tasks:
        assert cluster.attempts(task_id) == [1, 1, 1, 1], "each subtask ran exactly once"


#: An algorithm with a bug in subtask 0, and the same module once the bug is fixed.
BROKEN_ALGORITHM = """
from config.sample.algorithms import permuter


def permute(ctx):
    if ctx.index == 0:
        raise RuntimeError("bug in subtask 0")
    permuter(ctx)
"""
FIXED_ALGORITHM = "from config.sample.algorithms import permuter as permute\n"


def test_resubmit_after_a_code_fix_runs_the_fixed_code(
    cluster: Cluster, code: Path, tmp_path: Path
) -> None:
    """Ziggy's page: fix the software, resubmit. Only the failed subtask runs again, and it
    runs the fixed module on the same workers, which were never restarted."""
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=0")
    (code / "fixable.py").write_text(BROKEN_ALGORITHM)
    definition = tmp_path / "fixable.yaml"
    definition.write_text(
        (PACKAGED_DEFINITIONS / "sample.yaml")
        .read_text()
        .replace("name: sample", "name: fixable")
        .replace("config.sample.algorithms:permuter", "fixable:permute")
    )
    cluster.cli("definitions", "import", definition)
    worker = cluster.pid("worker1")
    instance = int(cluster.json("submit", "fixable", "--end-node", "permuter")["id"])
    cluster.wait(instance, STOPPED_WITH_ERRORS)
    tasks = cluster.tasks(instance)
    assert {(t["state"], t["counts"]) for t in tasks} == {("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")}
    assert cluster.json("subtasks", tasks[0]["id"])[0]["error"] == "RuntimeError: bug in subtask 0"

    (code / "fixable.py").write_text(FIXED_ALGORITHM)
    outcomes = cluster.restart("--instance", instance, "--mode", "resubmit")
    assert [o["subtasks"] for o in outcomes] == [[0], [0]]
    cluster.wait(instance)

    assert cluster.pid("worker1") == worker, "the same worker ran the fixed code"
    for task in tasks:
        assert cluster.attempts(task["id"]) == [2, 1, 1, 1]
        # What the fixed code wrote (the buggy run wrote nothing), and what was stored.
        task_dir = Path(cluster.json("task", task["id"])["task_dir"])
        output = task_dir / "st-0" / "nasa-logo-file-0-perm.png"
        set_number = int(task["unit_of_work"].split("-")[1])
        np.testing.assert_array_equal(read_image(output), pixels(set_number, 0)[..., CHANNEL_ORDER])
        history = [e["message"] for e in cluster.json("task", task["id"])["history"]]
        assert "stored 4 files" in history
