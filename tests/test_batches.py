"""Batches: many subtasks per message, each subtask's outcome still its own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import dispatch
from pipeline.algorithms import LOG_NAME, SubtaskContext, run_many
from tests.conftest import wait_for
from tests.test_restart import algorithms_running_in, failing_instance, restart


def contexts(tmp_path: Path, count: int) -> list[SubtaskContext]:
    made = []
    for index in range(count):
        directory = tmp_path / f"st-{index}"
        directory.mkdir()
        made.append(SubtaskContext(directory, [], {}, index, "set-1", "node"))
    return made


def test_a_crash_or_hang_in_a_batch_fails_only_its_subtask(tmp_path: Path) -> None:
    batch = contexts(tmp_path, 6)
    outcomes = list(run_many("tests.algorithms:fail_by_index", batch, timeout=2))
    assert [o.ok for o in outcomes] == [True, False, False, False, True, True]
    assert outcomes[1].error.startswith("exit status 3")
    assert outcomes[2].timed_out
    assert outcomes[3].error == "ValueError: boom in subtask 3"
    for ctx in batch:  # each subtask's output in its own log
        assert (ctx.directory / LOG_NAME).read_text().startswith(f"subtask {ctx.index}\n")
    # Subtasks 0 and 4 ran in different children: the crash of 1 and the hang of 2 were
    # followed by new ones; 4 and 5 shared one.
    pids = [(ctx.directory / "done.txt").read_text() for ctx in (batch[0], batch[4], batch[5])]
    assert pids[0] != pids[1] == pids[2]


def test_small_tasks_keep_one_message_per_subtask_big_ones_batch() -> None:
    assert dispatch.batch_size({}, 4) == 1
    assert dispatch.batch_size({}, 10_000) == dispatch.AUTO_BATCH_MAX
    assert dispatch.batch_size({"batch_size": 3}, 4) == 3
    messages = dispatch.plan_messages(7, 2, [(0, 1), (1, 1), (2, 1)], 2)
    assert messages == [
        ("subtasks-7-2-0-1", [(0, 1), (1, 1)]),
        (dispatch.subtask_message_id(7, 2, 2, 1), [(2, 1)]),
    ]


@pytest.mark.e2e
def test_failed_subtask_of_a_batch_is_recorded_alone_and_resubmitted_alone(cluster) -> None:
    instance, tasks = failing_instance(cluster, "--end-node", "permuter")
    task = tasks[0]["id"]
    restart(cluster, task, "--mode", "restart-from-beginning", "--set", "batch_size=4")
    cluster.wait(instance)
    history = [e["message"] for e in cluster.json("task", task)["history"]]
    assert "4 subtasks queued in 1 messages" in history
    [done] = [t for t in cluster.tasks(instance) if t["id"] == task]
    assert (done["state"], done["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")
    subtasks = cluster.json("subtasks", task)
    assert [s["state"] for s in subtasks] == ["FAILED", "COMPLETE", "COMPLETE", "COMPLETE"]
    assert "subtask 0" in subtasks[0]["error"]

    restart(cluster, task, "--mode", "resubmit")
    cluster.wait(instance)
    # Marshaled again by restart-from-beginning, the subtasks had run once each.
    assert [s["attempts"] for s in cluster.json("subtasks", task)] == [2, 1, 1, 1]


@pytest.mark.e2e
def test_halt_revokes_a_running_batch_and_resubmit_finishes_it(cluster) -> None:
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=3")
    instance = cluster.submit("--end-node", "permuter")
    cluster.cli("halt", "--instance", instance)
    restart(
        cluster, "--instance", instance, "--mode", "restart-from-beginning", "--set", "batch_size=4"
    )
    wait_for(
        lambda: any(s["state"] == "RUNNING" for s in cluster.json("subtasks", 1)),
        what="a batch to run",
    )
    outcomes = json.loads(cluster.cli("halt", 1, "--json").stdout)
    assert outcomes[0]["ok"] and 3 in outcomes[0]["subtasks"]
    task_dir = Path(cluster.json("task", 1)["task_dir"])
    wait_for(lambda: not algorithms_running_in([task_dir]), what="the batch to be terminated")
    assert {s["state"] for s in cluster.json("subtasks", 1)} <= {"NEW", "COMPLETE"}

    restart(cluster, 1, "--mode", "resubmit")
    assert cluster.wait(instance).returncode == 0
    assert {s["state"] for s in cluster.json("subtasks", 1)} == {"COMPLETE"}
