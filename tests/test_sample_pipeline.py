"""The sample pipeline end to end on a real cluster, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from config.sample.algorithms import CHANNEL_ORDER
from config.sample.images import IMAGES_PER_SET, SETS, pixels

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


def read(path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def expected_outputs(set_number: int) -> dict[str, np.ndarray]:
    """Every output of one set, computed here independently of the pipeline."""
    outputs: dict[str, np.ndarray] = {}
    flipped = []
    for image in range(IMAGES_PER_SET):
        permuted = pixels(set_number, image)[..., CHANNEL_ORDER]
        stem = f"nasa-logo-file-{image}-perm"
        outputs[f"L1/{stem}.png"] = permuted
        outputs[f"L2/{stem}-lr.png"] = np.fliplr(permuted)
        outputs[f"L2/{stem}-ud.png"] = np.flipud(permuted)
        flipped += [np.fliplr(permuted), np.flipud(permuted)]
    outputs["L3/averaged-image.png"] = np.rint(np.mean(np.stack(flipped).astype(float), axis=0))
    return outputs


@pytest.mark.e2e
def test_clean_run_completes_with_right_pixels(cluster) -> None:
    instance = cluster.submit()
    result = cluster.wait(instance)
    assert result.returncode == 0, result.stdout + result.stderr

    [summary] = [i for i in cluster.json("instances") if i["id"] == instance]
    assert summary["state"] == "COMPLETED" and summary["pipeline"] == "sample"
    tasks = cluster.tasks(instance)
    assert all(set(task) >= TASK_FIELDS for task in tasks)
    by_node = {(t["node"], t["unit_of_work"]): t for t in tasks}
    assert set(by_node) == {(node, s) for node in ("permuter", "flip", "averaging") for s in SETS}
    for (node, _), task in by_node.items():
        subtasks = 1 if node == "averaging" else 4
        assert (task["p_state"], task["error"]) == ("COMPLETE", False)
        assert (task["total_subtasks"], task["completed_subtasks"], task["failed_subtasks"]) == (
            subtasks,
            subtasks,
            0,
        )

    for set_number, set_name in enumerate(SETS, start=1):
        expected = expected_outputs(set_number)
        stored = {
            str(path.relative_to(cluster.datastore / set_name))
            for level in ("L1", "L2", "L3")
            for path in (cluster.datastore / set_name / level).iterdir()
        }
        assert stored == set(expected), "exactly the outputs, no temporary files"
        for name, array in expected.items():
            np.testing.assert_array_equal(read(cluster.datastore / set_name / name), array)

    permuter = by_node[("permuter", "set-1")]
    subtasks = cluster.json("subtasks", permuter["id"])
    assert [(s["index"], s["state"], s["attempts"]) for s in subtasks] == [
        (i, "COMPLETE", 1) for i in range(4)
    ]
    history = cluster.json("task", permuter["id"])["history"]
    assert [e["p_state"] for e in history] == [
        "MARSHALING",
        "ALGORITHM_SUBMITTING",
        "ALGORITHM_QUEUED",
        "ALGORITHM_EXECUTING",
        "ALGORITHM_COMPLETE",
        "STORING",
        "COMPLETE",
    ]
    assert all(e["host"].startswith("worker1@") for e in history)

    # One message per marshal and per subtask: execute, monitor and store ran in the worker
    # that finished the step before each (beyond any message the monitor re-sent).
    log = (cluster.home / "logs" / "worker1.log").read_text()
    received = Counter(re.findall(r"Task pipeline\.stage\.(\w+)\[\S+\] received", log))
    resent = sum(int(n) for n in re.findall(r"'resent': (\d+)", log))
    assert received["subtask"] == 18 and received["marshal"] >= 6
    continued = received["execute"] + received["monitor"] + received["store"]
    assert received["marshal"] - 6 + continued <= resent, received


@pytest.mark.e2e
def test_exception_in_subtask_0_stalls_the_instance(cluster) -> None:
    cluster.cli("params", "set", "algorithm", "throw_exception_subtask_0=true")
    instance = cluster.submit()
    result = cluster.wait(instance)
    assert result.returncode == 1, result.stdout + result.stderr

    [summary] = [i for i in cluster.json("instances") if i["id"] == instance]
    assert summary["state"] == "ERRORS_STALLED"
    tasks = cluster.tasks(instance)
    assert {t["node"] for t in tasks} == {"permuter"}, "no child tasks after a failed node"
    for task in tasks:
        assert task["state"] == "ERROR - ALGORITHM_COMPLETE"
        assert task["counts"] == "3/4 (1)"
        subtasks = cluster.json("subtasks", task["id"])
        assert [s["state"] for s in subtasks] == ["FAILED", "COMPLETE", "COMPLETE", "COMPLETE"]
        assert "throw_exception_subtask_0" in subtasks[0]["error"]
        log = cluster.cli("logs", task["id"], "--subtask", 0).stdout
        assert "RuntimeError: subtask 0 failed on purpose" in log

    for set_name in SETS:
        stored = sorted(p.name for p in (cluster.datastore / set_name).glob("L1/*"))
        assert stored == [], "a task with the error flag stores nothing"
    table = cluster.cli("tasks", instance).stdout
    assert "ERROR - ALGORITHM_COMPLETE" in table and "3/4 (1)" in table


@pytest.mark.e2e
def test_parameters_are_frozen_at_submit(cluster) -> None:
    """An instance keeps the parameter and definition versions it started with."""
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=1")
    instance = cluster.submit("--end-node", "permuter")
    cluster.cli("params", "set", "algorithm", "throw_exception_subtask_0=true")
    assert cluster.wait(instance).returncode == 0
    shown = cluster.json("params", "show", "algorithm")
    assert shown["version"] == 2 and not shown["locked"]
    used = cluster.json("params", "show", "algorithm", "--version", 1)
    assert used["locked"]
    assert {t["node"] for t in cluster.tasks(instance)} == {"permuter"}


@pytest.mark.e2e
def test_start_node_runs_only_the_nodes_downstream(cluster, tmp_path) -> None:
    first = cluster.submit("--end-node", "permuter")
    assert cluster.wait(first).returncode == 0
    assert not list(cluster.datastore.glob("set-*/L2/*"))

    # A changed definition is a new version; the next instance runs it, the first kept its own.
    changed = tmp_path / "sample.yaml"
    changed.write_text(_sample_with_flip_priority(3))
    cluster.cli("definitions", "import", changed)
    second = cluster.submit("--start-node", "flip")
    assert cluster.wait(second).returncode == 0
    tasks = cluster.tasks(second)
    assert sorted({t["node"] for t in tasks}) == ["averaging", "flip"]
    assert all(t["state"] == "COMPLETE" for t in tasks)
    assert {t["execution"]["priority"] for t in tasks if t["node"] == "flip"} == {3}
    versions = {i["id"]: i["definition_version"] for i in cluster.json("instances")}
    assert versions == {first: 1, second: 2}
    assert len(list(cluster.datastore.glob("set-*/L3/averaged-image.png"))) == 2


def _sample_with_flip_priority(priority: int) -> str:
    from config.settings import PACKAGED_DEFINITIONS

    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    return text.replace(
        "    algorithm: config.sample.algorithms:flip\n",
        f"    algorithm: config.sample.algorithms:flip\n    execution: {{priority: {priority}}}\n",
    )
