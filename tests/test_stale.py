"""Stale results, in this process: a task stored again with other bytes leaves what
consumed its earlier outputs stale, the instance is STALE rather than COMPLETED, and
``restart --downstream`` runs the stale chain again in order."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.operations import facade, lineage, queries, receipt
from pipeline.sample.algorithms import CHANNEL_ORDER
from pipeline.sample.images import pixels
from tests.support import InProcessWorker, read_image, run_cli
from tests.test_lineage import deliver, task_of


def average(images: list[np.ndarray]) -> np.ndarray:
    """The sample's average of the flips of these raw images."""
    flipped = []
    for image in images:
        permuted = image[..., CHANNEL_ORDER]
        flipped += [np.fliplr(permuted), np.flipud(permuted)]
    return np.rint(np.mean(np.stack(flipped).astype(float), axis=0))


@pytest.fixture
def restarted(home: Path, worker: InProcessWorker, tmp_path: Path) -> dict[str, Any]:
    """The README's walkthrough (subtask 0 fails, resume-current-step completes the
    instance on images 1 to 3), then a changed image 1 of set-1 received and set-1's
    permuter task restarted from the beginning, one failed subtask tolerated."""
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample")["id"]
    worker.drain()
    facade.restart_failed(instance, "resume-current-step")
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    receipt.receive(
        deliver(tmp_path, "changed", {"nasa-logo-file-1.png": pixels(8, 1)}), "raw_image", "set-1"
    )
    permuter = task_of(instance, "permuter", "set-1")
    flip, averaging = task_of(instance, "flip", "set-1"), task_of(instance, "averaging", "set-1")
    settings = {"max_failed_subtasks": 1}
    [preview] = facade.restart(
        [permuter["id"]], "restart-from-beginning", settings, dry_run=True
    ).as_dicts()
    assert preview["downstream"] == sorted([flip["id"], averaging["id"]])
    facade.restart([permuter["id"]], "restart-from-beginning", settings)
    worker.drain()
    return {"instance": instance, "permuter": permuter, "flip": flip, "averaging": averaging}


def test_a_restarted_task_storing_other_bytes_leaves_its_consumers_stale(
    restarted: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    instance = restarted["instance"]
    assert queries.get_instance(instance)["state"] == "STALE"
    flip, averaging = restarted["flip"]["id"], restarted["averaging"]["id"]
    for task_id in (flip, averaging):
        task = queries.get_task(task_id)
        assert (task["state"], task["stale"]) == ("STALE - COMPLETE", True)
    assert queries.get_task(flip)["stale_reason"] == (
        f"task {restarted['permuter']['id']} (permuter) stored other versions of its inputs"
    )
    assert not queries.get_task(task_of(instance, "flip", "set-2")["id"])["stale"]
    [alert] = [a for a in queries.list_alerts() if "stale" in a["message"]]
    assert f"tasks {flip}, {averaging} stale" in alert["message"]
    assert f"'pipeline restart {flip} --downstream'" in alert["message"]

    waited = run_cli(capsys, "wait", instance)
    assert waited.returncode == 4
    assert f"instance {instance} STALE" in waited.stdout
    [average_file] = [f for f in lineage.files(path="set-1/L3/averaged-image.png") if f["current"]]
    assert average_file["stale"], "the stale average is not shown as simply current"
    listed = run_cli(capsys, "files", "--path", "set-1/L3/averaged-image.png")
    assert "stale" in listed.stdout


def test_restart_downstream_runs_the_stale_chain_again_in_order(
    restarted: dict[str, Any], worker: InProcessWorker, home: Path
) -> None:
    instance, flip, averaging = (
        restarted["instance"],
        restarted["flip"]["id"],
        restarted["averaging"]["id"],
    )
    [outcome] = facade.restart([flip], "restart-from-beginning", downstream=True).as_dicts()
    assert outcome["ok"] and outcome["downstream"] == [averaging]
    assert queries.get_task(averaging)["rerun"], "waits for the flip to store"
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    for task_id in (flip, averaging):
        task = queries.get_task(task_id)
        assert (task["state"], task["stale"], task["rerun"]) == ("COMPLETE", False, False)
        assert task["attempt"] == 2
    history = [e["message"] for e in queries.get_task(averaging)["history"]]
    assert history.index(f"waits to run again after task {flip}") < len(history) - 1
    stored = read_image(home / "datastore" / "set-1" / "L3" / "averaged-image.png")
    expected = average([pixels(8, 1), pixels(1, 2), pixels(1, 3)])
    np.testing.assert_array_equal(stored, expected)
    chain = lineage.lineage("set-1/L3/averaged-image.png")
    assert all(step["file"]["current"] for step in chain["steps"])


def test_stale_tasks_restarted_together_run_in_order(
    restarted: dict[str, Any], worker: InProcessWorker
) -> None:
    instance, flip, averaging = (
        restarted["instance"],
        restarted["flip"]["id"],
        restarted["averaging"]["id"],
    )
    report = facade.restart([averaging, flip], "restart-from-beginning").as_dicts()
    by_task = {o["task_id"]: o for o in report}
    assert by_task[averaging]["message"] == (
        f"runs again once task {restarted['flip']['id']} above it are current"
    )
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert queries.get_task(averaging)["attempt"] == 2
