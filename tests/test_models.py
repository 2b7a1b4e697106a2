"""The model registry, in this process: models received and kept by version, pinned by an
instance at submit (the newest, or the one asked for), given to the algorithm under their
original names, used again by a restart even after a newer one arrives, and named in the
lineage with the code version of every step."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline.engine.datastore import object_path
from pipeline.errors import InvalidInput, NotFound
from pipeline.operations import facade, lineage, models, queries
from pipeline.settings import PACKAGED_DEFINITIONS
from tests.support import InProcessWorker, run_cli

#: The sample with a model type, its averaging node given the newest dark frame.
WITH_MODEL = """
model_types:
  dark: {pattern: 'dark-(?P<version>[0-9]+)\\.txt'}
"""


def sample_with_model(directory: Path) -> Path:
    """The sample's definition with a model type ``dark`` that averaging uses (and notes)."""
    text = variant_with_model((PACKAGED_DEFINITIONS / "sample.yaml").read_text())
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "sample.yaml"
    path.write_text(text)
    facade.import_definitions([path])
    return path


def variant_with_model(text: str) -> str:
    """The sample's definition text with the model type and the node that uses it."""
    text = text.replace("nodes:\n", WITH_MODEL + "\nnodes:\n", 1)
    text = text.replace(
        "    algorithm: pipeline.sample.algorithms:averaging\n"
        "    inputs: [flipped_image]\n"
        "    outputs: [averaged_image]\n",
        "    algorithm: tests.algorithms:averaging_with_dark\n"
        "    inputs: [flipped_image]\n"
        "    outputs: [averaged_image, dark_note]\n"
        "    models: [dark]\n",
    )
    text = text.replace(
        "  averaged_image:",
        '  dark_note: {location: "{dataset}/L3", pattern: "dark-used.txt"}\n  averaged_image:',
    )
    return text


def dark(directory: Path, version: int, text: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"dark-{version}.txt"
    path.write_text(text)
    return path


def note_of(home: Path, unit: str) -> str:
    return (home / "datastore" / unit / "L3" / "dark-used.txt").read_text()


def test_a_model_is_received_by_version_listed_and_kept_by_its_bytes(
    home: Path, tmp_path: Path
) -> None:
    sample_with_model(tmp_path / "defs")
    first = models.import_model(dark(tmp_path / "in", 1, "dark one\n"), "dark")
    assert first["new"] and first["model"]["version"] == "1"
    again = models.import_model(tmp_path / "in" / "dark-1.txt", "dark")
    assert not again["new"], "the same bytes as the same version are the same model"
    models.import_model(dark(tmp_path / "in", 2, "dark two\n"), "dark")
    listed = models.list_models()
    assert [(m["model_type"], m["version"], m["name"]) for m in listed] == [
        ("dark", "1", "dark-1.txt"),
        ("dark", "2", "dark-2.txt"),
    ]
    assert object_path(home / "datastore", listed[0]["sha256"]).read_text() == "dark one\n"

    (tmp_path / "in" / "dark-1.txt").write_text("other bytes\n")
    with pytest.raises(InvalidInput, match="version '1' was received already, with other bytes"):
        models.import_model(tmp_path / "in" / "dark-1.txt", "dark")
    with pytest.raises(InvalidInput, match="does not match model type 'dark'"):
        models.import_model(dark(tmp_path / "in", 3, "x").rename(tmp_path / "in" / "x.txt"), "dark")
    with pytest.raises(NotFound, match="no model type 'bias'"):
        models.import_model(tmp_path / "in" / "dark-2.txt", "bias")
    assert len(models.list_models()) == 2, "a refused model changes nothing"


def test_a_node_whose_model_was_never_received_is_refused_at_submit(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    sample_with_model(tmp_path / "defs")
    with pytest.raises(InvalidInput, match="node 'averaging' uses model type 'dark', and no"):
        facade.submit("sample")
    assert queries.list_instances() == []


def test_an_instance_pins_its_models_and_a_restart_uses_them_after_a_newer_arrives(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    sample_with_model(tmp_path / "defs")
    models.import_model(dark(tmp_path / "in", 1, "dark one"), "dark")
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    first = facade.submit("sample")
    assert first["models"] == {"dark": "1"}
    worker.drain()
    assert queries.get_instance(first["id"])["state"] == "ERRORS_STALLED"

    models.import_model(dark(tmp_path / "in", 2, "dark two"), "dark")  # after submit
    facade.restart_failed(first["id"], "resume-current-step")
    worker.drain()
    assert queries.get_instance(first["id"])["state"] == "COMPLETED"
    assert note_of(home, "set-1").startswith("dark-1.txt True dark one"), "the pinned model"

    facade.set_parameters("algorithm", ["throw_exception_subtask_0=false"])
    second = facade.submit("sample")
    assert second["models"] == {"dark": "2"}, "the next instance pins the newest"
    worker.drain()
    assert note_of(home, "set-1").startswith("dark-2.txt True dark two")

    older = facade.submit("sample", models=["dark=1"])  # an older model, on purpose
    assert older["models"] == {"dark": "1"}
    worker.drain()
    assert note_of(home, "set-2").startswith("dark-1.txt True dark one")
    averaging = [t for t in queries.list_tasks(older["id"]) if t["node"] == "averaging"][0]
    [ran] = queries.get_task(averaging["id"])["attempts"]
    assert ran["models"] == {"dark": "1"}

    with pytest.raises(NotFound, match="model type 'dark' has no version '7'"):
        facade.submit("sample", models=["dark=7"])
    with pytest.raises(NotFound, match="no node this instance runs uses that model type"):
        facade.submit("sample", models=["flat=1"])
    with pytest.raises(InvalidInput, match="expected TYPE=VERSION"):
        facade.submit("sample", models=["dark"])
    assert len(queries.list_instances()) == 3, "a refused submit changes nothing"


def test_lineage_names_the_model_and_code_versions_of_every_step(
    home: Path, tmp_path: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    sample_with_model(tmp_path / "defs")
    model = models.import_model(dark(tmp_path / "in", 1, "dark one"), "dark")["model"]
    instance = facade.submit("sample")["id"]
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"

    chain = lineage.lineage("set-1/L3/averaged-image.png")
    produced = [step for step in chain["steps"] if step["file"]["origin"] == "task"]
    assert {step["file"]["node"] for step in produced} == {"permuter", "flip", "averaging"}
    for step in produced:
        code = step["code_version"]
        assert code is not None and code["module"].startswith(("pipeline.sample", "tests."))
        assert code["product"] and ("git_commit" in code or "version" in code), code
    [averaged] = [s for s in produced if s["file"]["node"] == "averaging"]
    assert averaged["models"] == [
        {"model_type": "dark", "version": "1", "sha256": model["sha256"], "name": "dark-1.txt"}
    ]
    assert all(s["models"] == [] for s in produced if s["file"]["node"] != "averaging")

    shown = run_cli(capsys, "lineage", "set-1/L3/averaged-image.png")
    assert shown.returncode == 0, shown.stderr
    assert f"model dark v1 ({model['sha256'][:12]})" in shown.stdout
    made = [line for line in shown.stdout.splitlines() if "<- instance" in line]
    assert made and all(", code " in line for line in made), shown.stdout
    as_json = json.loads(run_cli(capsys, "lineage", "set-1/L3/averaged-image.png", "--json").stdout)
    assert as_json["steps"][0]["models"][0]["version"] == "1"
    assert as_json["steps"][0]["code_version"]["module"] == "tests.algorithms"


def test_the_cli_lists_and_imports_models_and_submits_with_one(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    sample_with_model(tmp_path / "defs")
    imported = run_cli(capsys, "models", "import", dark(tmp_path / "in", 4, "d"), "--type", "dark")
    assert imported.returncode == 0, imported.stderr
    assert "model dark version 4 (dark-4.txt" in imported.stdout
    listed = json.loads(run_cli(capsys, "models", "--json").stdout)
    assert [m["version"] for m in listed] == ["4"]
    planned = run_cli(capsys, "submit", "sample", "--model", "dark=4", "--dry-run")
    assert "model dark version 4" in planned.stdout, planned.stdout
    refused = run_cli(capsys, "models", "import", tmp_path / "in" / "dark-4.txt", "--type", "nope")
    assert refused.returncode == 1 and "no model type 'nope'" in refused.stderr


def test_retention_never_removes_a_models_bytes(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.operations import retention

    sample_with_model(tmp_path / "defs")
    model = models.import_model(dark(tmp_path / "in", 1, "kept forever"), "dark")["model"]
    stray = dark(tmp_path / "in", 9, "no version names these bytes")
    from pipeline.engine import datastore

    left = datastore.keep(home / "datastore", stray, link=False)
    monkeypatch.setattr(retention, "LEFT_BEHIND_AFTER", -60.0)  # everything counts as old
    facade.prune_datastore(keep_last=1, keep_since="0d")
    assert object_path(home / "datastore", model["sha256"]).read_text() == "kept forever"
    assert not Path(left.path).exists(), "bytes nothing names are removed, as before"
