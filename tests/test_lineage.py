"""The datastore as a ledger, in this process: every stored file has a producer, every
subtask records what it consumed, inputs never come from another instance, a subtask that
stores nothing is reported, data comes in by receipt, and lineage answers "who made this?"."""

from __future__ import annotations

import hashlib
import json
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.operations import facade, lineage, queries, receipt
from pipeline.operations.receipt import MANIFEST_FORMAT
from pipeline.sample.algorithms import CHANNEL_ORDER
from pipeline.sample.images import IMAGES_PER_SET, SETS, pixels
from pipeline.settings import PACKAGED_DEFINITIONS
from tests.support import InProcessWorker, assert_one_line_error, read_image, run_cli

#: The stored outputs of one clean sample run: 8 permuted, 16 flipped, 2 averaged images.
SAMPLE_OUTPUTS = 26


def consumed(task_id: int) -> list[list[str]]:
    """Each subtask's input paths as the ledger recorded them at marshal."""
    return [sorted(s["consumed"]) for s in queries.list_subtasks(task_id)]


def task_of(instance: int, node: str, unit: str) -> dict[str, Any]:
    [task] = [
        t for t in queries.list_tasks(instance) if (t["node"], t["unit_of_work"]) == (node, unit)
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

    assert queries.get_instance(instance)["state"] == "COMPLETED"
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
        chain = lineage.lineage(f"{unit}/L3/averaged-image.png")
        producers = {(f["instance_id"], f["node"], f["origin"]) for f in _walk(chain)}
        assert producers == {
            (instance, "averaging", "task"),
            (instance, "flip", "task"),
            (instance, "permuter", "task"),
            (None, "", "received"),
        }, "every file behind the average is this instance's, back to the data received"
        assert not [f for f in _walk(chain) if "file-0" in f["path"]]
        # The earlier instance's file is still on disk, still its own, and was not consumed.
        [stale] = lineage.files(path=f"{unit}/L1/nasa-logo-file-0-perm.png")
        assert (stale["instance_id"], stale["current"]) == (1, True)


def test_a_subtask_that_stores_nothing_is_reported_and_nothing_stale_replaces_it(
    completed: Path, worker: InProcessWorker
) -> None:
    facade.set_parameters("algorithm", ["produce_output_subtask_1=false"])
    instance = facade.submit("sample")["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    for unit in SETS:
        permuter = task_of(instance, "permuter", unit)
        assert permuter["counts"] == "4/4 (0)"
        subtasks = queries.list_subtasks(permuter["id"])
        assert [s["outputs"] for s in subtasks] == [1, 0, 1, 1]
        history = [e["message"] for e in queries.get_task(permuter["id"])["history"]]
        assert "subtask 1 produced no output" in history
        assert task_of(instance, "flip", unit)["counts"] == "3/3 (0)"
        alert = f"task {permuter['id']} subtask 1 produced no output"
        assert alert in [
            (a["message"]) for a in queries.list_alerts() if a["severity"] == "warning"
        ]


def test_require_outputs_fails_a_subtask_that_stores_nothing(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    facade.set_parameters("algorithm", ["produce_output_subtask_1=false"])
    strict = tmp_path / "sample.yaml"
    permuter = "    algorithm: pipeline.sample.algorithms:permuter\n"
    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    strict.write_text(text.replace(permuter, permuter + "    execution: {require_outputs: true}\n"))
    facade.import_definitions([strict])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()

    for task in queries.list_tasks(instance):
        assert (task["state"], task["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")
        subtasks = queries.list_subtasks(task["id"])
        assert [(s["state"], s["outputs"]) for s in subtasks][1] == ("FAILED", 0)
        assert subtasks[1]["error"] == "produced no output (require_outputs = true)"

    # Changed with a restart, like any execution setting: the outputs are optional again.
    facade.restart_failed(instance, "resubmit", {"require_outputs": False})
    worker.drain()
    assert {t["counts"] for t in queries.list_tasks(instance)} == {"4/4 (0)"}


def test_every_stored_file_records_its_producer_and_a_later_store_supersedes_it(
    completed: Path, worker: InProcessWorker
) -> None:
    first = lineage.files(instance=1)
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

    history = lineage.files(path="set-1/L1/nasa-logo-file-2-perm.png", history=True)
    assert [(f["instance_id"], f["current"]) for f in history] == [(1, False), (second, True)]
    assert history[1]["parameter_versions"] == {"algorithm": 2}
    assert len(lineage.files(instance=1)) == SAMPLE_OUTPUTS, "history is never lost"


def test_received_files_are_the_roots_of_lineage(completed: Path) -> None:
    chain = lineage.lineage("set-1/L3/averaged-image.png")
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


# -- reprocess: new ---------------------------------------------------------------------------


def import_variant(tmp_path: Path, node: str, line: str, **more: str) -> None:
    """Import the sample with ``line`` added to ``node``'s entry (and each of ``more``'s
    lines to its node's): a new version. A ``reprocess`` line has the averaging say
    where its inputs come from (this instance's parents), as it must."""
    variant = tmp_path / "sample.yaml"
    if "reprocess" in line:
        more.setdefault("averaging", "    inputs_from: parents\n")
    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    for name, added in {node: line, **more}.items():
        algorithm = f"    algorithm: pipeline.sample.algorithms:{name}\n"
        text = text.replace(algorithm, algorithm + added)
    variant.write_text(text)
    facade.import_definitions([variant])


def deliver(tmp_path: Path, name: str, images: dict[str, np.ndarray]) -> Path:
    """A directory of new images, as a data provider delivers them."""
    from PIL import Image

    directory = tmp_path / name
    directory.mkdir()
    for file_name, array in images.items():
        Image.fromarray(array).save(directory / file_name)
    return directory


def test_reprocess_new_runs_only_files_the_node_has_not_consumed(
    any_database: str, home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    import_variant(tmp_path, "permuter", "    reprocess: new\n")
    first = facade.submit("sample")["id"]
    worker.drain()
    assert {t["counts"] for t in queries.list_tasks(first) if t["node"] == "permuter"} == {
        "4/4 (0)"
    }

    second = facade.submit("sample")["id"]
    worker.drain()
    assert queries.get_instance(second)["state"] == "COMPLETED"
    assert {(t["node"], t["counts"]) for t in queries.list_tasks(second)} == {
        ("permuter", "0/0 (0)"),
        ("flip", "0/0 (0)"),
        ("averaging", "0/0 (0)"),
    }
    permuter = task_of(second, "permuter", "set-1")
    history = [e["message"] for e in queries.get_task(permuter["id"])["history"]]
    assert "0 subtasks: no new inputs: node 'permuter' consumed all 4 before" in history
    flip = task_of(second, "flip", "set-1")
    history = [e["message"] for e in queries.get_task(flip["id"])["history"]]
    assert "0 subtasks: no inputs: this instance's permuter tasks stored none" in history

    # A new file in set-1, and a changed one (same name, new bytes) in set-2.
    new_image = pixels(7, 0)
    receipt.receive(deliver(tmp_path, "new", {"extra.png": new_image}), "raw_image", "set-1")
    changed = deliver(tmp_path, "changed", {"nasa-logo-file-2.png": pixels(8, 1)})
    receipt.receive(changed, "raw_image", "set-2")
    third = facade.submit("sample")["id"]
    worker.drain()

    assert consumed(task_of(third, "permuter", "set-1")["id"]) == [["set-1/L0/extra.png"]]
    assert consumed(task_of(third, "permuter", "set-2")["id"]) == [
        ["set-2/L0/nasa-logo-file-2.png"]
    ]
    assert consumed(task_of(third, "averaging", "set-1")["id"]) == [
        ["set-1/L2/extra-perm-lr.png", "set-1/L2/extra-perm-ud.png"]
    ]


@pytest.mark.parametrize("mode", ["resume-current-step", "resubmit"])
def test_reprocess_new_counts_what_was_stored_whichever_attempt_ran_it(
    home: Path, worker: InProcessWorker, tmp_path: Path, mode: str
) -> None:
    """Subtask 0 of each permuter task fails (a resubmit fails it again); resuming the
    current step completes the instance, with attempts and no new marshal: the next
    instance runs again exactly the inputs no completed and stored subtask consumed."""
    import_variant(tmp_path, "permuter", "    reprocess: new\n")
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    first = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    if mode == "resubmit":
        facade.restart_failed(first, mode)
        worker.drain()
    facade.restart_failed(first, "resume-current-step")
    worker.drain()
    assert queries.get_instance(first)["state"] == "COMPLETED"

    facade.set_parameters("algorithm", ["throw_exception_subtask_0=false"])
    second = facade.submit("sample", None, "permuter")["id"]
    worker.drain()

    for unit in SETS:
        again = consumed(task_of(second, "permuter", unit)["id"])
        assert again == [[f"{unit}/L0/nasa-logo-file-0.png"]], "only the failed one"


def test_an_input_overwritten_by_another_instance_is_consumed_as_this_instance_stored_it(
    completed: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    """Instance 1's permuter stored set-1's permuted images; before its flip marshals, a
    changed raw image arrives and instance 2's permuter stores those paths again with other
    bytes: instance 1 still consumes, and averages, the versions it stored itself."""
    from pipeline.engine.transitions import advance
    from tests.support import roll_back_to_permuter_done

    roll_back_to_permuter_done(1)
    receipt.receive(
        deliver(tmp_path, "changed", {"nasa-logo-file-0.png": pixels(8, 1)}), "raw_image", "set-1"
    )
    facade.submit("sample", None, "permuter")
    worker.drain()
    advance(1)
    worker.drain()

    assert queries.get_instance(1)["state"] == "COMPLETED"
    mine = {f["id"] for f in lineage.files(instance=1) if f["node"] == "permuter"}
    for task in [t for t in queries.list_tasks(1) if t["node"] == "flip"]:
        assert task["state"] == "COMPLETE", task["error_message"]
        consumed_ids = [f["id"] for f in lineage.files(instance=1) if f["task_id"] == task["id"]]
        assert consumed_ids, "flip stored its outputs"
    averaged = [f for f in lineage.files(instance=1) if f["node"] == "averaging"]
    for row in averaged:
        chain = lineage.lineage(row["path"], version=row["id"])
        permuted = [s["file"] for s in chain["steps"] if s["file"]["node"] == "permuter"]
        assert {f["id"] for f in permuted} <= mine, "only instance 1's permuted images"
        assert {s["file"]["instance_id"] for s in chain["steps"] if s["file"]["instance_id"]} == {1}
    set_1 = completed / "datastore" / "set-1" / "L3"
    [average] = [row for row in averaged if row["unit_of_work"] == "set-1"]
    stored = read_image(set_1 / Path(average["path"]).name)
    assert np.array_equal(stored, average_of(1, tuple(range(IMAGES_PER_SET))))


# -- data receipt --------------------------------------------------------------------------------


def manifest_for(directory: Path, name: str = "delivery.sha256") -> Path:
    manifest = directory / name
    manifest.write_text(
        "".join(
            f"{hashlib.sha256(f.read_bytes()).hexdigest()}  {f.name}\n"
            for f in sorted(directory.iterdir())
            if f.is_file()
        )
    )
    return manifest


def test_received_files_are_recorded_and_acknowledged(home: Path, tmp_path: Path) -> None:
    delivery = deliver(tmp_path, "delivery", {f"new-{i}.png": pixels(9, i) for i in range(3)})
    manifest = manifest_for(delivery)

    received = receipt.receive(delivery, "raw_image", "set-3", manifest)

    datastore = home / "datastore"
    assert sorted(p.name for p in (datastore / "set-3" / "L0").iterdir()) == [
        "new-0.png",
        "new-1.png",
        "new-2.png",
    ]
    rows = lineage.files(unit="set-3")
    assert [(r["path"], r["origin"], r["receipt"]) for r in rows] == [
        (f"set-3/L0/new-{i}.png", "received", f"delivery.sha256 ({delivery.resolve()})")
        for i in range(3)
    ]
    acknowledgement = Path(received["acknowledgement"])
    assert acknowledgement == delivery / "delivery.sha256.ack"
    assert acknowledgement.read_text() == manifest.read_text()


def corrupt(delivery: Path, manifest: Path) -> str:
    (delivery / "new-1.png").write_bytes(b"not the bytes the manifest names")
    return "new-1.png: checksum differs from the manifest's"


def missing(delivery: Path, manifest: Path) -> str:
    (delivery / "new-2.png").unlink()
    return "new-2.png: in the manifest but not in the directory"


def extra(delivery: Path, manifest: Path) -> str:
    (delivery / "new-3.png").write_bytes(b"unlisted")
    return "new-3.png: in the directory but not in the manifest"


def traversal(delivery: Path, manifest: Path) -> str:
    manifest.write_text(manifest.read_text() + f"{'0' * 64}  ../outside.png\n")
    return "../outside.png: names a file outside the directory"


def symlink_out(delivery: Path, manifest: Path) -> str:
    (delivery / "link.png").symlink_to("/etc/hostname")
    return "link.png: a symbolic link out of"


def subdirectory(delivery: Path, manifest: Path) -> str:
    (delivery / "sub").mkdir()
    return "sub: not a file (an import takes one directory's files)"


def wrong_pattern(delivery: Path, manifest: Path) -> str:
    (delivery / "notes.txt").write_text("x")
    return "notes.txt: does not match raw_image's pattern '*.png'"


def bad_line(delivery: Path, manifest: Path) -> str:
    manifest.write_text("d41d8cd98f00b204e9800998ecf8427e  new-0.png\n")
    return f"delivery.sha256:1: {MANIFEST_FORMAT}"


def listed_twice(delivery: Path, manifest: Path) -> str:
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join([*lines, lines[0].replace(lines[0][:64], "0" * 64)]) + "\n")
    return "delivery.sha256:4: new-0.png: listed twice"


def other_normalisation(delivery: Path, manifest: Path) -> str:
    nfd = unicodedata.normalize("NFD", "café.png")
    (delivery / nfd).write_bytes(b"x")
    nfc = unicodedata.normalize("NFC", "café.png")
    manifest.write_text(manifest.read_text() + f"{hashlib.sha256(b'x').hexdigest()}  {nfc}\n")
    return "differs only in its Unicode normalisation, NFC or NFD"


@pytest.mark.parametrize(
    "spoil",
    [
        corrupt,
        missing,
        extra,
        traversal,
        symlink_out,
        subdirectory,
        wrong_pattern,
        bad_line,
        listed_twice,
        other_normalisation,
    ],
)
def test_a_receipt_with_anything_wrong_imports_nothing(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], spoil: Any
) -> None:
    delivery = deliver(tmp_path, "delivery", {f"new-{i}.png": pixels(9, i) for i in range(3)})
    manifest = manifest_for(delivery)
    expected = spoil(delivery, manifest)
    before = lineage.files(history=True)

    result = run_cli(
        capsys, "datastore", "import", delivery, "--type", "raw_image", "--unit", "set-3",
        "--manifest", manifest,
    )  # fmt: skip

    assert_one_line_error(result, expected)
    assert not (home / "datastore" / "set-3").exists(), "nothing placed, no directory made"
    assert lineage.files(history=True) == before, "nothing recorded"
    assert not (delivery / "delivery.sha256.ack").exists()


def test_a_sha256sum_escaped_line_for_a_name_with_a_backslash_is_read(
    home: Path, tmp_path: Path
) -> None:
    delivery = deliver(tmp_path, "delivery", {"back\\slash.png": pixels(9, 0)})
    name = "back\\slash.png"
    checksum = hashlib.sha256((delivery / name).read_bytes()).hexdigest()
    manifest = tmp_path / "delivery.sha256"
    manifest.write_text(f"\\{checksum}  back\\\\slash.png\n")  # as sha256sum writes it
    received = receipt.receive(delivery, "raw_image", "set-3", manifest)
    assert [f["path"] for f in received["files"]] == ["set-3/L0/back\\slash.png"]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--type", "no_such_type", "--unit", "set-3"], "no data file type 'no_such_type'"),
        (["--type", "raw_image", "--unit", "../set-3"], "unit of work '../set-3' must be one"),
        (["--type", "raw_image", "--unit", "set-3", "--pipeline", "nope"], "unknown pipeline"),
    ],
)
def test_a_receipt_for_an_unknown_type_or_a_bad_unit_is_refused(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], expected: str
) -> None:
    delivery = deliver(tmp_path, "delivery", {"new-0.png": pixels(9, 0)})
    assert_one_line_error(run_cli(capsys, "datastore", "import", delivery, *args), expected)
    assert lineage.files(unit="set-3") == []


# -- the commands --------------------------------------------------------------------------------


def test_files_and_lineage_answer_who_produced_a_file(
    completed: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    listed = run_cli(capsys, "files", "--instance", 1, "--unit", "set-2", "--json")
    assert listed.returncode == 0
    [averaged] = [f for f in json.loads(listed.stdout) if f["data_file_type"] == "averaged_image"]
    assert (averaged["path"], averaged["node"], averaged["subtask_index"]) == (
        "set-2/L3/averaged-image.png",
        "averaging",
        0,
    )
    assert run_cli(capsys, "files").returncode == 0, "the table"

    tree = run_cli(capsys, "lineage", "set-2/L3/averaged-image.png")
    assert tree.returncode == 0
    lines = tree.stdout.splitlines()
    assert "set-2/L3/averaged-image.png" in lines[0] and "definition v1" in lines[0]
    assert "throw_exception_subtask_0=False" in lines[0]
    assert any(
        "set-2/L0/nasa-logo-file-3.png" in line and "received set-2.sha256" in line
        for line in lines
    )

    assert_one_line_error(run_cli(capsys, "lineage", "set-9/none.png"), "no file 'set-9/none.png'")


def test_lineage_answers_for_any_version_and_marks_superseded_inputs(
    completed: Path, worker: InProcessWorker, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A raw image received anew after instance 1: the average instance 1 stored is no
    longer current, and neither is one of the raw images behind it."""
    receipt.receive(
        deliver(tmp_path, "changed", {"nasa-logo-file-3.png": pixels(8, 1)}), "raw_image", "set-2"
    )
    facade.submit("sample")
    worker.drain()
    path = "set-2/L3/averaged-image.png"
    [old, new] = lineage.files(path=path, history=True)

    by_id = run_cli(capsys, "lineage", path, "--version", old["id"])
    by_sha = run_cli(capsys, "lineage", path, "--version", old["sha256"][:8])
    assert by_id.returncode == by_sha.returncode == 0
    assert by_id.stdout == by_sha.stdout
    lines = by_id.stdout.splitlines()
    assert lines[0].startswith(f"{path}  (superseded)  sha256 {old['sha256'][:12]}")
    assert "<- instance 1 " in lines[0]
    raw = [line for line in lines if "set-2/L0/nasa-logo-file-3.png" in line]
    assert raw and all("(superseded)" in line for line in raw)
    current = run_cli(capsys, "lineage", path).stdout.splitlines()
    assert current[0].startswith(f"{path}  sha256 {new['sha256'][:12]}")
    assert not [line for line in current if "(superseded)" in line]

    assert_one_line_error(
        run_cli(capsys, "lineage", path, "--version", "xyz"),
        "version 'xyz': give a ledger id or at least 6 hex digits of a SHA-256",
    )
    assert_one_line_error(
        run_cli(capsys, "lineage", path, "--version", "999999"),
        f"no version '999999' of '{path}'",
    )


def test_two_instances_storing_the_same_files_on_either_database(
    any_database: str, worker: InProcessWorker
) -> None:
    """Bulk rows with their ids, the directory locks and superseding, as each database does
    them (on PostgreSQL the raw images were not received: they are recorded as found)."""
    first = facade.submit("sample", None, "permuter")["id"]
    second = facade.submit("sample", None, "permuter")["id"]
    worker.drain()

    stores = [t for i in (first, second) for t in queries.list_tasks(i) if t["state"] == "COMPLETE"]
    assert len(stores) == 4
    current = lineage.files(unit="set-1")
    permuted = [f for f in current if f["data_file_type"] == "permuted_image"]
    assert len(permuted) == IMAGES_PER_SET, "one current row per path"
    history = lineage.files(unit="set-1", history=True)
    stored = [f for f in history if f["data_file_type"] == "permuted_image"]
    assert len(stored) == 8
    # Every value of a stored row reads back as written (the rows go in by the driver).
    for row in stored:
        assert (row["origin"], row["node"], row["unit_of_work"]) == ("task", "permuter", "set-1")
        assert row["instance_id"] in (first, second) and row["attempt"] == 1
        assert row["parameter_versions"] == {"algorithm": 1} and row["definition_version"] == 1
        assert row["stored_at"] and row["size"] > 0 and len(row["sha256"]) == 64
        assert row["current"] == (row["instance_id"] == second)
    raw = consumed(task_of(first, "permuter", "set-1")["id"])
    assert raw == [[f"set-1/L0/nasa-logo-file-{i}.png"] for i in range(IMAGES_PER_SET)]


def test_an_input_replaced_while_its_task_marshals_is_consumed_as_chosen(
    home: Path, worker: InProcessWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between choosing the inputs and recording them, an operator receives a new version
    of one: the task consumes the version it chose, whose bytes it was given, and records
    that version; the next instance consumes the new one."""
    from pipeline.engine import stages, taskdir

    prepare = taskdir.prepare
    redelivery = deliver(tmp_path, "again", {"nasa-logo-file-0.png": pixels(5, 5)})

    def marshal_meanwhile(task_dir: Path, names: list[list[str]], models: Any = ()) -> None:
        task_id = int(task_dir.name.split("-")[1])
        if queries.get_task(task_id)["unit_of_work"] == "set-1":
            receipt.receive(redelivery, "raw_image", "set-1")
        prepare(task_dir, names, models)

    monkeypatch.setattr(stages.taskdir, "prepare", marshal_meanwhile)
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()

    task = task_of(instance, "permuter", "set-1")
    assert task["counts"] == "4/4 (0)", task["error_message"]
    [first, second] = lineage.files(path="set-1/L0/nasa-logo-file-0.png", history=True)
    [subtask] = [s for s in queries.list_subtasks(task["id"]) if s["index"] == 0]
    permuted = lineage.lineage("set-1/L1/nasa-logo-file-0-perm.png")
    assert permuted["steps"][0]["inputs"] == [first["id"]], "the version chosen"
    assert first["superseded_at"] is not None and second["superseded_at"] is None
    stored = read_image(home / "datastore" / "set-1" / "L1" / "nasa-logo-file-0-perm.png")
    assert np.array_equal(stored, pixels(1, 0)[..., CHANNEL_ORDER])
    assert subtask["consumed"] == ["set-1/L0/nasa-logo-file-0.png"]


def test_the_current_versions_of_paths_are_looked_up_in_an_index_of_current_rows(
    any_database: str,
) -> None:
    """A marshal looks up the current version of every file on disk by its path: the
    database reads an index of current rows (one entry a path), not every version of each
    path (a hundred, for a file recorded a hundred times)."""
    from sqlalchemy import event, text

    from pipeline.database import get_engine, transaction
    from pipeline.engine import datastore_ledger

    statements: list[tuple[str, Any]] = []

    def seen(connection: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        statements.append((statement, parameters))

    engine = get_engine()
    with transaction() as session:
        session.execute(text("SELECT 1"))  # connected: only the lookup is seen below
        event.listen(engine, "before_cursor_execute", seen)
        try:
            datastore_ledger.current_rows(
                session, ["u/a.in", "u/b.in"], datastore_ledger.FINGERPRINT
            )
        finally:
            event.remove(engine, "before_cursor_execute", seen)
        [(statement, parameters)] = statements
        cursor = session.connection().connection.cursor()
        if any_database == "postgres":
            cursor.execute("SET LOCAL enable_seqscan = off")  # a small table is read whole
            cursor.execute(f"EXPLAIN {statement}", parameters)
        else:
            cursor.execute(f"EXPLAIN QUERY PLAN {statement}", parameters)
        plan = " ".join(str(row) for row in cursor.fetchall())
    assert "ix_datastore_files_current" in plan, plan
