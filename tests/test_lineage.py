"""The datastore as a ledger, in this process: every stored file has a producer, every
subtask records what it consumed, inputs never come from another instance, a subtask that
stores nothing is reported, data comes in by receipt, and lineage answers "who made this?"."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np

from config.sample.algorithms import CHANNEL_ORDER
from config.sample.images import IMAGES_PER_SET, SETS, pixels
from config.settings import PACKAGED_DEFINITIONS
from pipeline.operations import facade
from tests.support import InProcessWorker, read_image

#: The stored outputs of one clean sample run: 8 permuted, 16 flipped, 2 averaged images.
SAMPLE_OUTPUTS = 26


def consumed(task_id: int) -> list[list[str]]:
    """Each subtask's input paths as the ledger recorded them at marshal."""
    return [sorted(s["consumed"]) for s in facade.list_subtasks(task_id)]


def task_of(instance: int, node: str, unit: str) -> dict[str, Any]:
    [task] = [
        t for t in facade.list_tasks(instance) if (t["node"], t["unit_of_work"]) == (node, unit)
    ]
    return task


def average_of(set_number: int, images: tuple[int, ...]) -> np.ndarray:
    """The sample's averaged image of the flips of ``images`` alone."""
    flipped = []
    for image in images:
        permuted = pixels(set_number, image)[..., CHANNEL_ORDER]
        flipped += [np.fliplr(permuted), np.flipud(permuted)]
    return np.rint(np.mean(np.stack(flipped).astype(float), axis=0))


def test_resume_current_step_over_an_earlier_run_consumes_only_this_instances_files(
    completed: Path, worker: InProcessWorker
) -> None:
    """The README's walkthrough with history in the datastore: the earlier instance stored
    every permuted image, this one three per set; flip must not pick up the fourth."""
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample")["id"]
    worker.drain()
    facade.restart_failed(instance, "resume-current-step")
    worker.drain()

    assert facade.get_instance(instance)["state"] == "COMPLETED"
    datastore = completed / "datastore"
    for set_number, unit in enumerate(SETS, start=1):
        flip = task_of(instance, "flip", unit)
        assert flip["counts"] == "3/3 (0)", "three permuted images per set"
        assert consumed(flip["id"]) == [
            [f"{unit}/L1/nasa-logo-file-{i}-perm.png"] for i in (1, 2, 3)
        ]
        averaging = task_of(instance, "averaging", unit)
        [inputs] = consumed(averaging["id"])
        assert inputs == sorted(
            f"{unit}/L2/nasa-logo-file-{i}-perm-{way}.png"
            for i in (1, 2, 3)
            for way in ("lr", "ud")
        )
        averaged = read_image(datastore / unit / "L3" / "averaged-image.png")
        np.testing.assert_array_equal(averaged, average_of(set_number, (1, 2, 3)))
        # The earlier instance's file is still on disk, still its own, and was not consumed.
        [stale] = facade.files(path=f"{unit}/L1/nasa-logo-file-0-perm.png")
        assert (stale["instance_id"], stale["current"]) == (1, True)


def test_a_subtask_that_stores_nothing_is_reported_and_nothing_stale_replaces_it(
    completed: Path, worker: InProcessWorker
) -> None:
    facade.set_parameters("algorithm", ["produce_output_subtask_1=false"])
    instance = facade.submit("sample")["id"]
    worker.drain()

    assert facade.get_instance(instance)["state"] == "COMPLETED"
    for unit in SETS:
        permuter = task_of(instance, "permuter", unit)
        assert permuter["counts"] == "4/4 (0)"
        subtasks = facade.list_subtasks(permuter["id"])
        assert [s["outputs"] for s in subtasks] == [1, 0, 1, 1]
        history = [e["message"] for e in facade.get_task(permuter["id"])["history"]]
        assert "subtask 1 produced no output" in history
        assert task_of(instance, "flip", unit)["counts"] == "3/3 (0)"
        alert = f"task {permuter['id']} subtask 1 produced no output"
        assert alert in [(a["message"]) for a in facade.list_alerts() if a["severity"] == "warning"]


def test_require_outputs_fails_a_subtask_that_stores_nothing(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    facade.set_parameters("algorithm", ["produce_output_subtask_1=false"])
    strict = tmp_path / "sample.yaml"
    permuter = "    algorithm: config.sample.algorithms:permuter\n"
    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    strict.write_text(text.replace(permuter, permuter + "    execution: {require_outputs: true}\n"))
    facade.import_definitions([strict])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()

    for task in facade.list_tasks(instance):
        assert (task["state"], task["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")
        subtasks = facade.list_subtasks(task["id"])
        assert [(s["state"], s["outputs"]) for s in subtasks][1] == ("FAILED", 0)
        assert subtasks[1]["error"] == "produced no output (require_outputs = true)"

    # Changed with a restart, like any execution setting: the outputs are optional again.
    facade.restart_failed(instance, "resubmit", {"require_outputs": False})
    worker.drain()
    assert {t["counts"] for t in facade.list_tasks(instance)} == {"4/4 (0)"}


def test_every_stored_file_records_its_producer_and_a_later_store_supersedes_it(
    completed: Path, worker: InProcessWorker
) -> None:
    first = facade.files(instance=1)
    assert len(first) == SAMPLE_OUTPUTS and all(f["current"] for f in first)
    datastore = completed / "datastore"
    for row in first:
        data = (datastore / row["path"]).read_bytes()
        assert (row["size"], row["sha256"]) == (len(data), hashlib.sha256(data).hexdigest())
        assert row["parameter_versions"] == {"algorithm": 1}
        assert row["definition_version"] == 1 and row["origin"] == "task"
    flipped = [f for f in first if f["path"] == "set-2/L2/nasa-logo-file-3-perm-lr.png"]
    [row] = flipped
    flip = task_of(1, "flip", "set-2")
    assert (row["task_id"], row["node"], row["subtask_index"], row["attempt"]) == (
        flip["id"],
        "flip",
        3,
        1,
    )
    assert row["data_file_type"] == "flipped_image" and row["unit_of_work"] == "set-2"

    facade.set_parameters("algorithm", ["dummy_array_parameter=[4,5]"])
    second = facade.submit("sample", None, "permuter")["id"]
    worker.drain()

    history = facade.files(path="set-1/L1/nasa-logo-file-2-perm.png", history=True)
    assert [(f["instance_id"], f["current"]) for f in history] == [(1, False), (second, True)]
    assert history[1]["parameter_versions"] == {"algorithm": 2}
    assert len(facade.files(instance=1)) == SAMPLE_OUTPUTS, "history is never lost"


def test_received_files_are_the_roots_of_lineage(completed: Path) -> None:
    chain = facade.lineage("set-1/L3/averaged-image.png")
    producers = [(step["file"]["node"], step["file"]["origin"]) for step in chain["steps"]]
    assert producers[0] == ("averaging", "task")
    origins = {(f["node"], f["origin"]) for f in _walk(chain)}
    assert origins == {
        ("averaging", "task"),
        ("flip", "task"),
        ("permuter", "task"),
        ("", "received"),
    }
    averaging = chain["steps"][0]
    assert averaging["parameters"]["algorithm"]["version"] == 1
    assert averaging["parameters"]["algorithm"]["values"]["throw_exception_subtask_0"] is False
    assert averaging["definition_version"] == 1
    raw = [f for f in _walk(chain) if f["origin"] == "received"]
    assert sorted(f["path"] for f in raw) == [
        f"set-1/L0/nasa-logo-file-{i}.png" for i in range(IMAGES_PER_SET)
    ]


def _walk(chain: dict[str, Any]) -> list[dict[str, Any]]:
    return [step["file"] for step in chain["steps"]]
