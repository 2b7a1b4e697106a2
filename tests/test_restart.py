"""Restarts and halts that need real processes: running algorithms terminated by a halt,
and a code fix picked up by workers that were never restarted. (What each mode does is in
``test_restart_modes.py``; monitoring reattached through the real broker and workers, in
the chaos tests, ``test_lost_services.py``.)

The cluster is shared with the other modules of xdist group ``shared-cluster``; its
reconciler leaves quiet tasks alone for ten minutes, so what is lost stays lost until an
operator resumes monitoring.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.operations import queries
from pipeline.sample.algorithms import CHANNEL_ORDER
from pipeline.sample.images import pixels
from pipeline.settings import PACKAGED_DEFINITIONS
from tests.support import (
    STOPPED_WITH_ERRORS,
    Cluster,
    algorithms_running_in,
    read_image,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("shared-cluster")]


@pytest.fixture
def cluster(shared_cluster: Cluster, monkeypatch: pytest.MonkeyPatch) -> Cluster:
    """The shared cluster, this test process reading its database directly: the operator
    acts through the CLI, the test watches at once (a CLI call takes a second)."""
    shared_cluster.activate(monkeypatch)
    return shared_cluster


def attempts(task_id: int) -> list[int]:
    return [s["attempts"] for s in queries.list_subtasks(task_id)]


def running(task_id: int) -> bool:
    return any(s["state"] == "RUNNING" for s in queries.list_subtasks(task_id))


def test_a_halt_terminates_a_running_batch_and_each_task_resumes_where_it_stopped(
    cluster: Cluster,
) -> None:
    """Halted mid-run, a batch of subtasks (one message, one child process) stops at once,
    its algorithm with it; restarted with resume-current-step, each task goes on from where
    it stopped, and what had finished does not run again."""
    cluster.set_parameters(throw_exception_subtask_0=False, execution_pause_seconds=2)
    instance = cluster.submit("--end-node", "permuter")
    cluster.cli("halt", "--instance", instance)  # then run again, four subtasks a message
    cluster.restart(
        "--instance", instance, "--mode", "restart-from-beginning", "--set", "batch_size=4"
    )
    tasks = [t["id"] for t in queries.list_tasks(instance)]
    wait_for(lambda: any(running(t) for t in tasks), what="a batch to run")

    outcomes = json.loads(cluster.cli("halt", "--instance", instance, "--json").stdout)
    assert {o["task_id"] for o in outcomes if o["ok"]} == set(tasks), outcomes
    assert any(3 in o["subtasks"] for o in outcomes), "the end of a batch was in flight"
    for task in queries.list_tasks(instance):
        assert task["error"] and task["halted"] and task["error_message"] == "halted by operator"
    task_dirs = [Path(d) for t in tasks if (d := queries.get_task(t)["task_dir"])]
    wait_for(lambda: not algorithms_running_in(task_dirs), what="halted algorithms to stop")
    halted = {t: queries.list_subtasks(t) for t in tasks}
    assert not any(s["state"] in ("QUEUED", "RUNNING") for subs in halted.values() for s in subs)

    cluster.restart("--instance", instance, "--mode", "resume-current-step")
    cluster.wait(instance)
    for task_id, subtasks in halted.items():
        old = {s["index"]: s for s in subtasks}
        for new in queries.list_subtasks(task_id):
            before = old.get(new["index"], {"state": "NEW", "attempts": 0})
            assert new["state"] == "COMPLETE"
            rerun = 0 if before["state"] == "COMPLETE" else 1
            assert new["attempts"] == before["attempts"] + rerun, (task_id, before, new)


#: An algorithm with a bug in subtask 0, and the same module once the bug is fixed.
BROKEN_ALGORITHM = """
from pipeline.sample.algorithms import permuter


def permute(ctx):
    if ctx.index == 0:
        raise RuntimeError("bug in subtask 0")
    permuter(ctx)
"""
FIXED_ALGORITHM = "from pipeline.sample.algorithms import permuter as permute\n"


def test_resubmit_after_a_code_fix_runs_the_fixed_code(
    cluster: Cluster, algorithms_path: Path, tmp_path: Path
) -> None:
    """Ziggy's page: fix the software, resubmit. Only the failed subtask runs again, and it
    runs the fixed module on the same workers, which were never restarted."""
    code = algorithms_path
    cluster.set_parameters(throw_exception_subtask_0=False, execution_pause_seconds=0)
    (code / "fixable.py").write_text(BROKEN_ALGORITHM)
    definition = tmp_path / "fixable.yaml"
    definition.write_text(
        (PACKAGED_DEFINITIONS / "sample.yaml")
        .read_text()
        .replace("name: sample", "name: fixable")
        .replace("pipeline.sample.algorithms:permuter", "fixable:permute")
    )
    cluster.cli("definitions", "import", definition)
    worker = cluster.pid("worker1")
    instance = int(cluster.json("submit", "fixable", "--end-node", "permuter")["id"])
    cluster.wait(instance, STOPPED_WITH_ERRORS)
    tasks = queries.list_tasks(instance)
    assert {(t["state"], t["counts"]) for t in tasks} == {("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")}
    assert queries.list_subtasks(tasks[0]["id"])[0]["error"] == "RuntimeError: bug in subtask 0"

    (code / "fixable.py").write_text(FIXED_ALGORITHM)
    outcomes = cluster.restart("--instance", instance, "--mode", "resubmit")
    assert [o["subtasks"] for o in outcomes] == [[0], [0]]
    cluster.wait(instance)

    assert cluster.pid("worker1") == worker, "the same worker ran the fixed code"
    for task in tasks:
        assert attempts(task["id"]) == [2, 1, 1, 1]
        # What the fixed code wrote (the buggy run wrote nothing), and what was stored.
        task_dir = Path(queries.get_task(task["id"])["task_dir"])
        output = task_dir / "st-0" / "nasa-logo-file-0-perm.png"
        set_number = int(task["unit_of_work"].split("-")[1])
        np.testing.assert_array_equal(read_image(output), pixels(set_number, 0)[..., CHANNEL_ORDER])
        history = [e["message"] for e in queries.get_task(task["id"])["history"]]
        assert "stored 4 files" in history
