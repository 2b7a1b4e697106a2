"""The datastore as versions, in this process: every version's bytes kept once by content,
paths showing the current version, and inputs algorithms cannot change the datastore
through."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.engine import datastore
from pipeline.operations import facade, lineage, queries
from tests.support import InProcessWorker

DEFINITION = """
name: scribbling
description: An algorithm that writes into its inputs.
data_file_types:
  note: {location: "{unit}/in", pattern: "*.txt"}
  loud: {location: "{unit}/out", pattern: "*.out"}
nodes:
  - name: scribble
    algorithm: tests.algorithms:scribble
    inputs: [note]
    outputs: [loud]
"""


def objects(root: Path) -> dict[str, Path]:
    """The object store's files by name (their SHA-256)."""
    return {
        path.name: path for path in (root / datastore.OBJECTS_DIR).glob("??/*") if path.is_file()
    }


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def scribbling(home: Path, tmp_path: Path) -> Path:
    definition = tmp_path / "scribbling.yaml"
    definition.write_text(DEFINITION)
    facade.import_definitions([definition])
    root = home / "datastore"
    (root / "u1" / "in").mkdir(parents=True)
    for name in ("a", "b"):
        (root / "u1" / "in" / f"{name}.txt").write_text(f"note {name}")
    return root


def test_an_algorithm_writing_into_its_inputs_changes_no_stored_version(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    root = scribbling(home, tmp_path)
    first = facade.submit("scribbling")["id"]
    worker.drain()
    second = facade.submit("scribbling")["id"]
    worker.drain()

    for instance in (first, second):
        assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert (root / "u1" / "in" / "a.txt").read_text() == "note a", "the datastore unchanged"
    for row in lineage.files(unit="u1", history=True):
        kept = datastore.object_path(root, row["sha256"])
        assert sha256(kept) == row["sha256"], f"{row['path']}: bytes match the ledger"
        assert sha256(root / row["path"]) == row["sha256"] or not row["current"]
    outputs = sorted((root / "u1" / "out").iterdir())
    assert [p.read_text() for p in outputs] == ["NOTE A SCRIBBLED", "NOTE B SCRIBBLED"]
    [subtask] = [
        s for s in queries.list_subtasks(queries.list_tasks(second)[0]["id"]) if s["index"] == 0
    ]
    assert subtask["state"] == "COMPLETE"


def test_identical_bytes_are_stored_once_and_every_version_stays_readable(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    root = scribbling(home, tmp_path)
    facade.submit("scribbling")["id"]
    worker.drain()
    facade.submit("scribbling")["id"]
    worker.drain()
    (root / "u1" / "in" / "a.txt").write_text("note a, revised")  # by hand: found anew
    third = facade.submit("scribbling")["id"]
    worker.drain()

    history = lineage.files(unit="u1", history=True)
    stored = {row["sha256"] for row in history}
    assert len(history) == 2 + 2 + 2 + 1 + 2, "inputs found (2, then 1 revised), outputs x3"
    everything = {row["sha256"] for row in lineage.files(history=True, limit=None)}
    assert stored <= everything
    assert set(objects(root)) == everything, "one object per distinct content, no more"
    revised = [r for r in history if r["path"] == "u1/out/a.out"]
    assert [r["current"] for r in revised] == [False, False, True]
    assert revised[-1]["instance_id"] == third
    old = datastore.object_path(root, revised[0]["sha256"])
    assert old.read_text() == "NOTE A SCRIBBLED", "the superseded version is still kept"
    assert (root / "u1" / "out" / "a.out").read_text() == "NOTE A, REVISED SCRIBBLED"
    assert not os.access(old, os.W_OK) or os.geteuid() == 0
    assert old.stat().st_mode & 0o777 == datastore.OBJECT_MODE
