"""The versioned datastore on a real cluster, driven through the installed command as an
operator would: an aggregate over a unit downstream of ``reprocess: new``, a stale chain
run again in order, and an algorithm that writes into its inputs. (Concurrent instances
are in test_api_cluster, a store killed halfway in test_lost_work; the rules themselves
in test_versions, test_stale, test_scope and test_lineage.)

The cluster is shared with the other modules of xdist group ``full-cluster``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from tests.support import Cluster
from tests.test_scope import COUNTING
from tests.test_versions import DEFINITION as SCRIBBLING

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("full-cluster")]

#: ``pipeline wait`` exits: COMPLETED, STALE.
COMPLETED, STALE = 0, 4


def wait(cluster: Cluster, instance: int, expect: int) -> str:
    result = cluster.cli("wait", instance, "--timeout", 180, check=False, timeout=240)
    assert result.returncode == expect, result.stdout + result.stderr
    return result.stdout


def submit(cluster: Cluster, pipeline: str) -> int:
    return int(cluster.json("submit", pipeline)["id"])


def test_an_aggregate_over_the_unit_counts_every_file_after_new_ones_arrive(
    full_cluster: Cluster, tmp_path: Path
) -> None:
    definition = tmp_path / "counting.yaml"
    definition.write_text(COUNTING + "    inputs_from: unit\n")
    full_cluster.cli("definitions", "import", definition)
    notes = full_cluster.datastore / "cu1" / "in"
    notes.mkdir(parents=True)
    for name in ("a", "b", "c"):
        (notes / f"{name}.txt").write_text(name)
    wait(full_cluster, submit(full_cluster, "counting"), COMPLETED)
    (notes / "d.txt").write_text("d")
    second = submit(full_cluster, "counting")
    wait(full_cluster, second, COMPLETED)

    copy = [t for t in full_cluster.tasks(second) if t["node"] == "copy"]
    assert [t["completed_subtasks"] for t in copy] == [1], "only the new file copied"
    summary = full_cluster.datastore / "cu1" / "sum" / "summary.txt"
    assert summary.read_text() == "count=4 a.out b.out c.out d.out"


def test_a_restart_over_changed_data_leaves_a_stale_chain_run_again_in_order(
    full_cluster: Cluster, tmp_path: Path
) -> None:
    from PIL import Image

    from pipeline.sample.images import pixels

    full_cluster.set_parameters(throw_exception_subtask_0=True, execution_pause_seconds=0)
    instance = int(full_cluster.json("submit", "sample")["id"])
    wait(full_cluster, instance, 1)
    full_cluster.restart("--instance", instance, "--mode", "resume-current-step")
    wait(full_cluster, instance, COMPLETED)
    delivery = tmp_path / "changed"
    delivery.mkdir()
    Image.fromarray(pixels(8, 1)).save(delivery / "nasa-logo-file-1.png")
    full_cluster.cli("datastore", "import", delivery, "--type", "raw_image", "--unit", "set-1")
    tasks = {(t["node"], t["unit_of_work"]): t for t in full_cluster.tasks(instance)}
    permuter, flip = tasks[("permuter", "set-1")], tasks[("flip", "set-1")]
    averaging = tasks[("averaging", "set-1")]
    [preview] = full_cluster.restart(
        permuter["id"], "--mode", "restart-from-beginning", "--max-failed-subtasks", 1,
        "--dry-run",
    )  # fmt: skip
    assert preview["downstream"] == [flip["id"], averaging["id"]]
    full_cluster.restart(
        permuter["id"], "--mode", "restart-from-beginning", "--max-failed-subtasks", 1
    )

    shown = wait(full_cluster, instance, STALE)
    assert f"instance {instance} STALE" in shown
    states = {t["id"]: t["state"] for t in full_cluster.tasks(instance)}
    assert states[flip["id"]] == states[averaging["id"]] == "STALE - COMPLETE"
    files = full_cluster.json("files", "--path", "set-1/L3/averaged-image.png")
    assert [f["stale"] for f in files] == [True]

    full_cluster.restart(flip["id"], "--mode", "restart-from-beginning", "--downstream")
    wait(full_cluster, instance, COMPLETED)
    states = {t["id"]: t["state"] for t in full_cluster.tasks(instance)}
    assert states[flip["id"]] == states[averaging["id"]] == "COMPLETE"
    chain = full_cluster.json("lineage", "set-1/L3/averaged-image.png")
    assert all(step["file"]["current"] for step in chain["steps"])
    assert any(
        step["file"]["path"] == "set-1/L0/nasa-logo-file-1.png" for step in chain["steps"]
    ), "the new image is behind the new average"
    full_cluster.set_parameters(throw_exception_subtask_0=False)


def test_an_algorithm_writing_into_its_inputs_changes_no_stored_version(
    full_cluster: Cluster, tmp_path: Path
) -> None:
    definition = tmp_path / "scribbling.yaml"
    definition.write_text(SCRIBBLING.replace("{unit}/in", "{unit}/scribbled-in").replace(
        "{unit}/out", "{unit}/scribbled-out"))  # fmt: skip
    full_cluster.cli("definitions", "import", definition)
    notes = full_cluster.datastore / "su1" / "scribbled-in"
    notes.mkdir(parents=True)
    (notes / "a.txt").write_text("note a")
    for _ in range(2):
        wait(full_cluster, submit(full_cluster, "scribbling"), COMPLETED)

    assert (notes / "a.txt").read_text() == "note a"
    for row in full_cluster.json("files", "--unit", "su1", "--history"):
        kept = full_cluster.datastore / ".pipeline-objects" / row["sha256"][:2] / row["sha256"]
        assert hashlib.sha256(kept.read_bytes()).hexdigest() == row["sha256"], row["path"]
    out = full_cluster.datastore / "su1" / "scribbled-out" / "a.out"
    assert out.read_text() == "NOTE A SCRIBBLED", json.dumps(row)


def test_reprocess_new_runs_again_only_what_no_stored_subtask_consumed(
    full_cluster: Cluster, tmp_path: Path
) -> None:
    """The sample with `reprocess: new` (a pipeline of its own name): subtask 0 of each
    permuter task fails, resuming completes the instance; the next instance runs file 0
    again, and only file 0 (before, it ran all four: the consumption was counted for the
    marshal's attempt only)."""
    from pipeline.settings import PACKAGED_DEFINITIONS

    text = (
        (PACKAGED_DEFINITIONS / "sample.yaml")
        .read_text()
        .replace("name: sample", "name: sample-new", 1)
    )
    permuter = "    algorithm: pipeline.sample.algorithms:permuter\n"
    averaging = "    algorithm: pipeline.sample.algorithms:averaging\n"
    text = text.replace(permuter, permuter + "    reprocess: new\n")
    text = text.replace(averaging, averaging + "    inputs_from: parents\n")
    definition = tmp_path / "sample-new.yaml"
    definition.write_text(text)
    full_cluster.cli("definitions", "import", definition)
    full_cluster.set_parameters(throw_exception_subtask_0=True, execution_pause_seconds=0)
    first = int(full_cluster.json("submit", "sample-new", "--end-node", "permuter")["id"])
    wait(full_cluster, first, 1)
    full_cluster.restart("--instance", first, "--mode", "resume-current-step")
    wait(full_cluster, first, COMPLETED)
    full_cluster.set_parameters(throw_exception_subtask_0=False)
    second = int(full_cluster.json("submit", "sample-new", "--end-node", "permuter")["id"])
    wait(full_cluster, second, COMPLETED)

    for task in full_cluster.tasks(second):
        consumed = [s["consumed"] for s in full_cluster.json("subtasks", task["id"])]
        unit = task["unit_of_work"]
        assert consumed == [[f"{unit}/L0/nasa-logo-file-0.png"]], consumed


def test_files_lists_every_file_to_a_script(full_cluster: Cluster, tmp_path: Path) -> None:
    """1,200 files received: `pipeline files --json` lists all 1,200 (it stopped at 1,000,
    saying nothing); the table says how many it left out."""
    delivery = tmp_path / "many"
    delivery.mkdir()
    for number in range(1200):
        (delivery / f"m{number:04d}.txt").write_text(str(number))
    full_cluster.cli(
        "datastore", "import", delivery, "--type", "note", "--unit", "many",
        "--pipeline", "scribbling",
    )  # fmt: skip
    listed = full_cluster.json("files", "--unit", "many")
    assert len(listed) == 1200
    table = full_cluster.cli("files", "--unit", "many").stdout
    assert "showing 1,000 of 1,200 files (--limit N shows more)" in table
