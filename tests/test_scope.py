"""Where a node's inputs come from, in this process: this instance's parents' outputs or
every current version in the unit, an aggregate downstream of ``reprocess: new`` made to
say which, and the units of a node with several parents."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.operations import facade, lineage, queries
from tests.support import InProcessWorker, assert_one_line_error, run_cli

COUNTING = """
name: counting
description: New files copied, then a summary of the unit.
data_file_types:
  raw: {location: "{unit}/in", pattern: "*.txt"}
  copied: {location: "{unit}/mid", pattern: "*.out"}
  summary: {location: "{unit}/sum", pattern: "summary.txt"}
nodes:
  - name: copy
    algorithm: tests.algorithms:scribble
    inputs: [raw]
    outputs: [copied]
    reprocess: new
  - name: summarise
    after: [copy]
    algorithm: tests.algorithms:count_inputs
    inputs: [copied]
    outputs: [summary]
    subtasks: single
"""


def counting(home: Path, tmp_path: Path, scope: str | None) -> Path:
    text = COUNTING + (f"    inputs_from: {scope}\n" if scope else "")
    definition = tmp_path / "counting.yaml"
    definition.write_text(text)
    facade.import_definitions([definition])
    root = home / "datastore"
    (root / "u1" / "in").mkdir(parents=True)
    for name in ("a", "b", "c"):
        (root / "u1" / "in" / f"{name}.txt").write_text(name)
    return root


def test_an_aggregate_after_reprocess_new_must_say_where_its_inputs_come_from(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    definition = tmp_path / "counting.yaml"
    definition.write_text(COUNTING)
    assert_one_line_error(
        run_cli(capsys, "definitions", "import", definition),
        "nodes.1.inputs_from: node 'summarise' aggregates its unit downstream of 'copy'"
        " (reprocess: new): say 'inputs_from: parents'",
    )
    assert not [p for p in queries.list_definitions() if p["name"] == "counting"]


def test_inputs_from_unit_aggregates_every_current_file_of_the_unit(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    root = counting(home, tmp_path, "unit")
    facade.submit("counting")
    worker.drain()
    assert (root / "u1" / "sum" / "summary.txt").read_text() == "count=3 a.out b.out c.out"
    (root / "u1" / "in" / "d.txt").write_text("d")  # one more file arrives
    second = facade.submit("counting")["id"]
    worker.drain()

    copy = [t for t in queries.list_tasks(second) if t["node"] == "copy"][0]
    assert copy["counts"] == "1/1 (0)", "only the new file is copied"
    summary = (root / "u1" / "sum" / "summary.txt").read_text()
    assert summary == "count=4 a.out b.out c.out d.out", "the whole unit, not the new file"
    assert not [a for a in queries.list_alerts() if "supersedes" in a["message"]]


def test_inputs_from_parents_aggregates_what_is_new_and_the_narrower_result_is_alerted(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    root = counting(home, tmp_path, "parents")
    facade.submit("counting")
    worker.drain()
    (root / "u1" / "in" / "d.txt").write_text("d")
    facade.submit("counting")
    worker.drain()

    assert (root / "u1" / "sum" / "summary.txt").read_text() == "count=1 d.out"
    [old, new] = lineage.files(path="u1/sum/summary.txt", history=True)
    [alert] = [a for a in queries.list_alerts() if "supersedes" in a["message"]]
    assert alert["severity"] == "warning"
    assert alert["message"] == (
        f"u1/sum/summary.txt: version {new['id']} from 1 input supersedes version"
        f" {old['id']} from 3 (node 'summarise' takes inputs_from: parents)"
    )


JOINING = """
name: joining
description: Two branches joined per unit.
data_file_types:
  left: {location: "{unit}/left", pattern: "*.txt"}
  right: {location: "{unit}/right", pattern: "*.txt"}
  left_out: {location: "{unit}/left-out", pattern: "*.out"}
  right_out: {location: "{unit}/right-out", pattern: "*.out"}
  joined: {location: "{unit}/joined", pattern: "summary.txt"}
nodes:
  - name: alpha
    algorithm: tests.algorithms:scribble
    inputs: [left]
    outputs: [left_out]
  - name: beta
    algorithm: tests.algorithms:scribble
    inputs: [right]
    outputs: [right_out]
  - name: join
    after: [alpha, beta]
    algorithm: tests.algorithms:count_inputs
    inputs: [left_out, right_out]
    outputs: [joined]
    subtasks: single
"""


@pytest.mark.parametrize("units", ["intersection", "union"])
def test_a_node_with_two_parents_runs_for_the_units_both_have(
    home: Path, worker: InProcessWorker, tmp_path: Path, units: str
) -> None:
    definition = tmp_path / "joining.yaml"
    text = JOINING + ("    units: union\n" if units == "union" else "")
    definition.write_text(text)
    facade.import_definitions([definition])
    root = home / "datastore"
    for side, unit_names in (("left", ("u1", "u2", "u3")), ("right", ("u1", "u2"))):
        for unit in unit_names:
            (root / unit / side).mkdir(parents=True, exist_ok=True)
            (root / unit / side / "x.txt").write_text(f"{side} {unit}")
    instance = facade.submit("joining")["id"]
    worker.drain()

    joins = {t["unit_of_work"]: t for t in queries.list_tasks(instance) if t["node"] == "join"}
    if units == "union":
        assert sorted(joins) == ["u1", "u2", "u3"]
        return
    assert sorted(joins) == ["u1", "u2"], "u3 has no beta task"
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    history = [e["message"] for e in queries.get_task(joins["u1"]["id"])["history"]]
    assert "units skipped: u3 (no task of 'beta')" in history
    assert (root / "u1" / "joined" / "summary.txt").read_text() == "count=2 x.out x.out"
