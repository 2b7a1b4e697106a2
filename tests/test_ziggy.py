"""A Ziggy team's pipeline, as its files are: a ``ziggy.d`` of XML definitions and Python
steps that take Ziggy's inputs dict, imported and run here in process, and written back.

The files are this suite's own, written in Ziggy 0.11's formats (not Ziggy's sample): a
pipeline ``spectra`` whose ``calibrate`` step pairs each science frame with its dark frame
by their regexp group, and whose ``stack`` step takes a single subtask of every calibrated
frame of a night."""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from pipeline.operations import events, facade, queries
from pipeline.settings import API_PREFIX
from tests.support import InProcessWorker, assert_one_line_error, run_cli

DEFINITIONS = """<?xml version="1.0" encoding="UTF-8"?>
<pipelineDefinition>
  <step name="calibrate" file="optics/steps.py" description="Dark-subtract frames"/>
  <step name="stack" file="optics/steps.py" description="Stack a night"/>
  <pipeline name="spectra" description="Spectra" rootNodeNames="calibrate">
    <parameterSet name="Calibration Settings"/>
    <node name="calibrate" childNodeNames="stack" maxWorkers="2" heapSizeGigabytes="3">
      <inputDataFileType name="science frame"/>
      <inputDataFileType name="dark frame"/>
      <outputDataFileType name="calibrated frame"/>
    </node>
    <node name="stack" singleSubtask="true">
      <parameterSet name="Stack Settings"/>
      <inputDataFileType name="calibrated frame"/>
      <outputDataFileType name="stacked night"/>
    </node>
  </pipeline>
</pipelineDefinition>
"""

DATASTORE = """<?xml version="1.0" encoding="UTF-8"?>
<pipelineDefinition>
  <parameterSet name="Calibration Settings">
    <parameter name="dark scale" value="1.5" type="double"/>
    <parameter name="frame ids" value="7" type="intarray"/>
    <parameter name="fail frame" value="" type="String"/>
  </parameterSet>
  <parameterSet name="Stack Settings">
    <parameter name="weights" value="1, 2, 3" type="floatarray"/>
  </parameterSet>
  <datastoreRegexp name="night" value="night-[0-9]+"/>
  <datastoreNode name="night" isRegexp="true" nodes="raw, cal, stack">
    <datastoreNode name="raw"/>
    <datastoreNode name="cal"/>
    <datastoreNode name="stack"/>
  </datastoreNode>
  <dataFileType name="science frame" location="night/raw" fileNameRegexp="frame-([0-9]+)\\.sci"/>
  <dataFileType name="dark frame" location="night/raw" fileNameRegexp="frame-([0-9]+)\\.dark"/>
  <dataFileType name="calibrated frame" location="night/cal" fileNameRegexp="frame-([0-9]+)\\.cal"/>
  <dataFileType name="stacked night" location="night/stack" fileNameRegexp="stacked\\.txt"/>
  <remoteEnvironment name="cluster" batchSystem="pbs" costUnit="SBU" description="A PBS cluster"
                     queueTimeMetricsClass="gov.example.QueueTimes">
    <architecture name="ivy" description="Ivy Bridge" cores="20" ramGigabytes="64" cost="0.5"
                  bandwidthGbps="10"/>
    <queue name="long" maxWallTimeHours="24"/>
    <queue name="ours" description="Ours" maxNodes="4" autoSelectable="false" reserved="true"/>
  </remoteEnvironment>
</pipelineDefinition>
"""

#: The steps, written against Ziggy's Python interface: one dict in, files out in the
#: working directory, an exception for a failure.
STEPS = """
import json
import os


def calibrate(inputs):
    settings = inputs["algorithmParameters"]["Calibration_Settings"]
    science, dark = inputs["dataFilenames"]
    if settings["fail_frame"] and settings["fail_frame"] in science:
        raise ValueError("frame refused on purpose")
    with open(science) as s, open(dark) as d:
        value = float(s.read()) - settings["dark_scale"] * float(d.read())
    with open(science.replace(".sci", ".cal"), "w") as out:
        out.write(str(value))
    with open("seen.json", "w") as seen:
        json.dump({"cwd": os.path.basename(os.getcwd()), "inputs": inputs}, seen)


def stack(inputs):
    names = inputs["dataFilenames"]
    total = sum(float(open(name).read()) for name in names)
    weights = inputs["algorithmParameters"]["Stack_Settings"]["weights"]
    with open("stacked.txt", "w") as out:
        out.write(json.dumps({"names": list(names), "total": total, "weights": list(weights)}))
"""


@pytest.fixture
def ziggy_d(tmp_path: Path) -> Path:
    """A pipeline's ``etc/ziggy.d`` (two files) and its steps under ``src/``."""
    etc = tmp_path / "etc" / "ziggy.d"
    etc.mkdir(parents=True)
    (etc / "spectra-pipeline.xml").write_text(DEFINITIONS)
    (etc / "spectra-datastore.xml").write_text(DATASTORE)
    (tmp_path / "src" / "optics").mkdir(parents=True)
    (tmp_path / "src" / "optics" / "steps.py").write_text(STEPS)
    return etc


def deliver_by_hand(datastore: Path) -> None:
    """Night 1: frames 1 and 2 with their darks, frame 3 without one; night-x is no unit."""
    raw = datastore / "night-1" / "raw"
    raw.mkdir(parents=True)
    for frame, (science, dark) in {1: (10, 2), 2: (20, 4)}.items():
        (raw / f"frame-{frame}.sci").write_text(str(science))
        (raw / f"frame-{frame}.dark").write_text(str(dark))
    (raw / "frame-3.sci").write_text("30")
    (datastore / "night-x" / "raw").mkdir(parents=True)
    (datastore / "night-x" / "raw" / "frame-1.sci").write_text("1")


def import_ziggy(capsys: pytest.CaptureFixture[str], etc: Path) -> Any:
    """``definitions import`` of a ``ziggy.d``, its steps under the ``src`` beside ``etc``."""
    return run_cli(
        capsys, "definitions", "import", etc, "--algorithm-path", etc.parent.parent / "src"
    )


def exported_and_imported_back(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, etc: Path, name: str
) -> str:
    """Pipeline ``name`` of a ``ziggy.d`` imported, exported as Ziggy XML, and that XML
    imported back to the same definition: the XML."""
    source = etc.parent.parent / "src"
    facade.import_definitions([etc], [source])
    result = run_cli(capsys, "definitions", "export", name, "--format", "ziggy")
    assert result.returncode == 0, result.stderr
    exported = tmp_path / "exported" / f"{name}.xml"
    exported.parent.mkdir()
    exported.write_text(result.stdout)
    again = run_cli(capsys, "definitions", "import", exported, "--algorithm-path", source)
    assert again.returncode == 0, again.stderr
    assert f"{name} version 1 (unchanged)" in again.stdout
    return result.stdout


def test_a_ziggy_d_imports_runs_its_steps_unchanged_and_completes(
    home: Path, ziggy_d: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    result = import_ziggy(capsys, ziggy_d)
    assert result.returncode == 0, result.stderr
    assert "spectra version 1 (imported)" in result.stdout
    assert result.stderr.splitlines() == [
        "warning: remoteEnvironment 'cluster': <remoteEnvironment name='cluster'>:"
        " queueTimeMetricsClass names a Java class estimating queue waits: not used here (the"
        " jobs' waits are measured)"
    ]
    [cluster] = json.loads(run_cli(capsys, "environments", "--json").stdout)
    assert (cluster["name"], cluster["batch_system"], cluster["implemented"]) == (
        "cluster",
        "pbs",
        False,
    )
    assert cluster["architectures"] == [
        {
            "name": "ivy",
            "description": "Ivy Bridge",
            "cores": 20,
            "ram_gigabytes": 64.0,
            "cost": 0.5,
            "bandwidth_gbps": 10.0,
        }
    ]
    assert [(q["name"], q["max_nodes"], q["reserved"]) for q in cluster["queues"]] == [
        ("long", None, False),
        ("ours", 4, True),
    ]
    deliver_by_hand(home / "datastore")
    remote = ["--set=calibrate:executor=slurm", "--set=calibrate:batch.environment=cluster"]
    refused = run_cli(
        capsys, "submit", "spectra", *remote, "--set=calibrate:batch.architecture=ivy"
    )
    assert_one_line_error(
        refused,
        "remote environment 'cluster' runs on batch system 'pbs': only slurm is implemented here",
    )
    assert queries.list_instances() == []

    instance = facade.submit("spectra")["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    tasks = {(t["node"], t["unit_of_work"]): t for t in queries.list_tasks(instance)}
    assert set(tasks) == {("calibrate", "night-1"), ("stack", "night-1")}, "night-x is no unit"
    assert tasks["calibrate", "night-1"]["counts"] == "2/2 (0)", "frame 3 has no dark frame"
    calibrated = home / "datastore" / "night-1" / "cal"
    assert sorted(p.name for p in calibrated.iterdir()) == ["frame-1.cal", "frame-2.cal"]
    assert float((calibrated / "frame-2.cal").read_text()) == 20 - 1.5 * 4
    stacked = json.loads((home / "datastore" / "night-1" / "stack" / "stacked.txt").read_text())
    assert stacked == {
        "names": ["frame-1.cal", "frame-2.cal"],
        "total": (10 - 3) + (20 - 6),
        "weights": [1.0, 2.0, 3.0],
    }
    task_dir = Path(queries.get_task(tasks["calibrate", "night-1"]["id"])["task_dir"])
    seen = json.loads((task_dir / "st-1" / "seen.json").read_text())
    assert seen == {
        "cwd": "st-1",
        "inputs": {
            "dataFilenames": ["frame-2.sci", "frame-2.dark"],
            "modelFilenames": [],
            "algorithmParameters": {
                "Calibration_Settings": {"dark_scale": 1.5, "frame_ids": 7, "fail_frame": ""}
            },
        },
    }, "Ziggy's names, nesting, and its reader's one-item arrays given as the item"


def test_a_failing_ziggy_step_fails_its_subtask_with_its_exception(
    home: Path, ziggy_d: Path, worker: InProcessWorker
) -> None:
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    facade.set_parameters("Calibration Settings", {"fail frame": "frame-1"})
    deliver_by_hand(home / "datastore")

    instance = facade.submit("spectra")["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"
    [task] = queries.list_tasks(instance)
    assert task["counts"] == "1/2 (1)"
    failed = [s for s in queries.list_subtasks(task["id"]) if s["state"] == "FAILED"]
    assert [s["error"] for s in failed] == ["ValueError: frame refused on purpose"]


#: A step in another language, as Ziggy runs one: in its subtask directory, judged by its
#: exit status. Its calibration is a copy (the stack step reads a number either way).
DESPIKE = """#!/bin/sh
for science in frame-*.sci; do cp "$science" "${science%.sci}.cal"; done
"""


def executable_step(ziggy_d: Path, bin_dir: Path) -> None:
    """The calibrate step as an executable named by the step (no ``file``: Ziggy runs the
    step's name), written to ``bin_dir``."""
    pipeline = ziggy_d / "spectra-pipeline.xml"
    pipeline.write_text(
        pipeline.read_text().replace(
            '<step name="calibrate" file="optics/steps.py"', '<step name="calibrate"'
        )
    )
    bin_dir.mkdir(parents=True, exist_ok=True)
    (bin_dir / "calibrate").write_text(DESPIKE)
    (bin_dir / "calibrate").chmod(0o755)


def test_a_ziggy_executable_step_is_found_on_the_bin_path_and_runs(
    home: Path,
    ziggy_d: Path,
    tmp_path: Path,
    worker: InProcessWorker,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ziggy's ``ziggy.pipeline.binPath``: colon-separated directories searched in order."""
    executable_step(ziggy_d, tmp_path / "opt" / "bin")
    monkeypatch.setenv("PIPELINE_BIN_PATH", f"{tmp_path / 'empty'}:{tmp_path / 'opt' / 'bin'}")
    result = run_cli(
        capsys, "definitions", "import", ziggy_d, "--algorithm-path", ziggy_d.parent.parent / "src"
    )
    assert result.returncode == 0, result.stderr
    shown = json.loads(run_cli(capsys, "definitions", "show", "spectra", "--json").stdout)
    calibrate = next(node for node in shown["nodes"] if node["name"] == "calibrate")
    assert calibrate["algorithm"]["executable"] == str(tmp_path / "opt" / "bin" / "calibrate")
    deliver_by_hand(home / "datastore")

    instance = facade.submit("spectra")["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    calibrated = home / "datastore" / "night-1" / "cal"
    assert sorted(p.name for p in calibrated.iterdir()) == ["frame-1.cal", "frame-2.cal"]
    stacked = json.loads((home / "datastore" / "night-1" / "stack" / "stacked.txt").read_text())
    assert stacked["total"] == 10 + 20


def test_a_ziggy_step_on_no_directory_of_the_bin_path_is_refused_naming_them(
    home: Path,
    ziggy_d: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    executable_step(ziggy_d, tmp_path / "elsewhere")
    monkeypatch.setenv("PIPELINE_BIN_PATH", str(tmp_path / "opt" / "bin"))
    result = run_cli(
        capsys, "definitions", "import", ziggy_d, "--algorithm-path", ziggy_d.parent.parent / "src"
    )
    assert_one_line_error(
        result,
        f"step 'calibrate': executable 'calibrate' not found (or not executable) under"
        f" {ziggy_d.parent.parent / 'src'}, on the bin path ({tmp_path / 'opt' / 'bin'})",
    )
    listed = json.loads(run_cli(capsys, "definitions", "list", "--json").stdout)
    assert "spectra" not in [d["name"] for d in listed], "nothing imported"


def test_export_writes_ziggy_xml_that_imports_back_to_the_same_definition(
    home: Path, ziggy_d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = exported_and_imported_back(capsys, tmp_path, ziggy_d, "spectra")

    assert (
        '<queue name="ours" description="Ours" maxNodes="4" autoSelectable="false"'
        ' reserved="true"/>'
    ) in exported
    shown = json.loads(run_cli(capsys, "definitions", "show", "spectra", "--json").stdout)
    calibrate = shown["nodes"][0]
    assert (calibrate["max_workers"], calibrate["heap_size_gigabytes"]) == (2, 3)
    assert calibrate["parameter_sets"] == ["Calibration Settings"]
    assert shown["nodes"][1]["parameter_sets"] == ["Calibration Settings", "Stack Settings"]


@pytest.mark.parametrize(
    ("change", "fragments"),
    [
        (
            ("<remoteEnvironment", "<unitOfWork/><remoteEnvironment"),
            ("spectra-datastore.xml", "<unitOfWork>: not an element of Ziggy 0.11's"),
        ),
        (
            ('singleSubtask="true"', 'singleSubtask="true" speed="fast"'),
            ("<node name='stack'>: attribute 'speed' is not in Ziggy's schema",),
        ),
        (
            ('file="optics/steps.py" description="Stack', 'uowGenerator="x.Y" description="Stack'),
            ("<step name='stack'>: uowGenerator names a Java unit-of-work generator",),
        ),
        (
            ('file="optics/steps.py" description="Dark', 'file="optics/lost.py" description="Dark'),
            ("step 'calibrate': file 'optics/lost.py' not found under", "--algorithm-path"),
        ),
        (
            ('location="night/cal"', 'location="night/calibrated"'),
            ("dataFileType 'calibrated frame': location part 'calibrated' is not among the nodes",),
        ),
        (
            ('childNodeNames="stack" maxWorkers', 'childNodeNames="stacker" maxWorkers'),
            ("node 'calibrate': unknown child 'stacker'",),
        ),
        (
            ('type="intarray"', 'type="complex"'),
            ("parameter 'frame ids': type 'complex' is not one of Ziggy's parameter types",),
        ),
        (
            ('fileNameRegexp="stacked\\.txt"', 'fileNameRegexp="stacked(\\.txt"'),
            ("data_file_types.stacked night.regexp", "not a regular expression"),
        ),
        (("</pipelineDefinition>", "</pipelineDefinitio>"), ("not well-formed XML",)),
        (
            ('<queue name="long"', '<queue name="long" priority="high"'),
            ("<queue name='long'>: attribute 'priority' is not in Ziggy's schema",),
        ),
        (
            ('cores="20" ', ""),
            ("<architecture name='ivy'>: attribute 'cores' is required",),
        ),
        (
            ('ramGigabytes="64"', 'ramGigabytes="lots"'),
            ("remote_environments.cluster.architectures.ivy.ram_gigabytes",),
        ),
    ],
)
def test_what_ziggy_files_hold_is_mapped_or_refused_in_one_line_and_nothing_imported(
    database: Path,
    ziggy_d: Path,
    capsys: pytest.CaptureFixture[str],
    change: tuple[str, str],
    fragments: tuple[str, ...],
) -> None:
    for file in ziggy_d.iterdir():
        text = file.read_text()
        if change[0] in text:
            file.write_text(text.replace(change[0], change[1], 1))
            break
    else:
        raise AssertionError(f"{change[0]!r} is in neither file")

    assert_one_line_error(import_ziggy(capsys, ziggy_d), *fragments)
    assert json.loads(run_cli(capsys, "definitions", "list", "--json").stdout) == []
    assert json.loads(run_cli(capsys, "params", "list", "--json").stdout) == []


def deliver_with_manifest(
    delivery: Path, capsys: pytest.CaptureFixture[str], dataset_id: int, checksum: str = "SHA1"
) -> None:
    """Night 2's frames in a delivery laid out as the datastore, with a Ziggy manifest
    written by ``pipeline datastore manifest``."""
    raw = delivery / "night-2" / "raw"
    raw.mkdir(parents=True)
    (raw / "frame-1.sci").write_text("11")
    (raw / "frame-1.dark").write_text("1")
    result = run_cli(
        capsys,
        "datastore",
        "manifest",
        delivery,
        "--dataset-id",
        dataset_id,
        "--checksum",
        checksum,
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("checksum", ["SHA1", "SHA256", "MD5"])
def test_a_delivery_with_a_ziggy_manifest_is_received_acknowledged_and_cleared(
    home: Path, ziggy_d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], checksum: str
) -> None:
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    delivery = tmp_path / "delivery"
    deliver_with_manifest(delivery, capsys, 7, checksum)

    result = run_cli(capsys, "datastore", "import", delivery)

    assert result.returncode == 0, result.stderr
    assert "received 2 files" in result.stdout
    assert "dark frame: night-2; science frame: night-2" in result.stdout
    assert (home / "datastore" / "night-2" / "raw" / "frame-1.sci").read_text() == "11"
    assert list(delivery.iterdir()) == [], "what was received is removed from the delivery"
    [kept] = (home / "manifests").iterdir()
    assert sorted(p.name for p in kept.iterdir()) == [
        "delivery-manifest-ack.xml",
        "delivery-manifest.xml",
    ]
    ack = (kept / "delivery-manifest-ack.xml").read_text()
    assert f'<acknowledgement datasetId="7" checksumType="{checksum}" fileCount="2"' in ack
    assert ack.count('transferStatus="present" validationStatus="valid"') == 2


def test_a_ziggy_manifest_that_disagrees_or_a_dataset_id_used_again_is_refused(
    home: Path, ziggy_d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    first = tmp_path / "first"
    deliver_with_manifest(first, capsys, 7)
    assert run_cli(capsys, "datastore", "import", first).returncode == 0

    again = tmp_path / "again"
    deliver_with_manifest(again, capsys, 7)
    result = run_cli(capsys, "datastore", "import", again)
    assert_one_line_error(result, "again-manifest.xml: datasetId 7 was received already")
    assert len(list((again / "night-2" / "raw").iterdir())) == 2, "nothing taken"

    changed = tmp_path / "changed"
    deliver_with_manifest(changed, capsys, 8)
    (changed / "night-2" / "raw" / "frame-1.sci").write_text("12")
    result = run_cli(capsys, "datastore", "import", changed)
    assert_one_line_error(result, "night-2/raw/frame-1.sci: SHA1 checksum differs")

    shorter = tmp_path / "shorter"
    deliver_with_manifest(shorter, capsys, 9)
    (shorter / "night-2" / "raw" / "frame-1.sci").write_text("1")
    result = run_cli(capsys, "datastore", "import", shorter)
    assert_one_line_error(result, "night-2/raw/frame-1.sci: 1 bytes, the manifest says 2")

    files = json.loads(run_cli(capsys, "files", "--unit", "night-2", "--json").stdout)
    assert {f["path"]: f["size"] for f in files} == {
        "night-2/raw/frame-1.dark": 1,
        "night-2/raw/frame-1.sci": 2,
    }, "only the first delivery is in"
    assert len(list((home / "manifests").iterdir())) == 1


OVERRIDES = """<?xml version="1.0" encoding="UTF-8" standalone="yes"?>
<pipelineDefinition>
  <parameterSet name="Calibration Settings" partial="true">
    <parameter name="fail frame" value="frame-2" type="String"/>
  </parameterSet>
</pipelineDefinition>
"""


def values_of(capsys: pytest.CaptureFixture[str], name: str) -> dict[str, object]:
    shown = json.loads(run_cli(capsys, "params", "show", name, "--json").stdout)
    return {p["name"]: p["value"] for p in shown["parameters"]}


def test_a_partial_parameter_library_overrides_only_what_it_names_once_confirmed(
    home: Path, ziggy_d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    library = tmp_path / "pl-overrides.xml"
    library.write_text(OVERRIDES)

    preview = run_cli(capsys, "params", "import", library)
    assert_one_line_error(preview, "nothing imported: run again with --yes")
    assert "Calibration Settings: updated fail frame=frame-2" in preview.stdout
    assert values_of(capsys, "Calibration Settings")["fail frame"] == "", (
        "a preview changes nothing"
    )

    assert run_cli(capsys, "params", "import", library, "--yes").returncode == 0
    assert values_of(capsys, "Calibration Settings") == {
        "dark scale": 1.5,
        "frame ids": [7],
        "fail frame": "frame-2",
    }

    exported = run_cli(capsys, "params", "export", "Calibration Settings").stdout
    assert '<parameter name="frame ids" value="7" type="intarray"/>' in exported
    assert '<parameter name="fail frame" value="frame-2" type="String"/>' in exported

    library.write_text(OVERRIDES.replace('name="fail frame"', 'name="fail frames"'))
    result = run_cli(capsys, "params", "import", library, "--yes")
    assert_one_line_error(result, "parameterSet 'Calibration Settings': no parameter 'fail frames'")


def test_parameter_libraries_and_ziggy_exports_over_http_as_the_cli_does(
    home: Path,
    ziggy_d: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``POST /parameter-sets/imports`` previews, then applies with ``apply``; the exports
    answer the CLI's XML; the errors are the CLI's lines, an unknown thing 404."""
    from tests.test_api import AUTH, app

    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    with TestClient(app(), base_url=f"http://api{API_PREFIX}", headers=AUTH) as http:
        over_http(http, tmp_path, capsys)


def over_http(http: TestClient, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    library = tmp_path / "pl-overrides.xml"
    library.write_text(OVERRIDES)
    said = [
        {"name": "Calibration Settings", "action": "updated", "changes": {"fail frame": "frame-2"}}
    ]

    preview = http.post("/parameter-sets/imports", json={"file": str(library)})
    assert (preview.status_code, preview.json()) == (200, said)
    assert values_of(capsys, "Calibration Settings")["fail frame"] == "", (
        "a preview changes nothing"
    )
    applied = http.post("/parameter-sets/imports", json={"file": str(library), "apply": True})
    assert (applied.status_code, applied.json()) == (200, said)
    assert values_of(capsys, "Calibration Settings")["fail frame"] == "frame-2"

    exported = http.get("/parameter-sets/export", params={"name": "Calibration Settings"})
    assert exported.status_code == 200
    assert exported.headers["content-type"].startswith("application/xml")
    assert exported.text == run_cli(capsys, "params", "export", "Calibration Settings").stdout
    everything = http.get("/parameter-sets/export")
    assert everything.text == run_cli(capsys, "params", "export").stdout
    definition = http.get("/pipelines/spectra/export", params={"format": "ziggy"})
    assert definition.status_code == 200
    assert definition.text == run_cli(capsys, "definitions", "export", "spectra").stdout
    assert '<pipeline name="spectra"' in definition.text

    library.write_text(OVERRIDES.replace('name="fail frame"', 'name="fail frames"'))
    missing = str(tmp_path / "none.xml")
    for request, status, line in [
        ({"file": str(library), "apply": True}, 422, "no parameter 'fail frames' to override"),
        ({"file": missing}, 404, f"{missing!r}: no such file"),
        ({"file": str(tmp_path)}, 422, f"{tmp_path}: not a file"),
        ({"file": "a\x00b"}, 404, "'a\\x00b': no such file"),
    ]:  # fmt: skip
        answer = http.post("/parameter-sets/imports", json=request)
        assert answer.status_code == status, answer.text
        assert line in answer.json()["detail"]
        assert "\n" not in answer.json()["detail"]
    assert values_of(capsys, "Calibration Settings")["fail frame"] == "frame-2", "nothing changed"
    cli = run_cli(capsys, "params", "import", library, "--yes")
    assert_one_line_error(cli, "parameterSet 'Calibration Settings': no parameter 'fail frames'")
    for url, line in [
        ("/parameter-sets/export?name=nope", "unknown parameter set 'nope'"),
        ("/pipelines/nope/export", "unknown pipeline 'nope'"),
    ]:
        answer = http.get(url)
        assert (answer.status_code, answer.json()["detail"][: len(line)]) == (404, line)


def with_data_receipt(ziggy_d: Path) -> None:
    """The spectra pipeline started by Ziggy's built-in data receipt node."""
    pipeline = ziggy_d / "spectra-pipeline.xml"
    pipeline.write_text(
        pipeline.read_text()
        .replace('rootNodeNames="calibrate"', 'rootNodeNames="data-receipt"')
        .replace(
            '    <node name="calibrate"',
            '    <node name="data-receipt" childNodeNames="calibrate">\n'
            '      <inputDataFileType name="science frame"/>\n'
            '      <inputDataFileType name="dark frame"/>\n'
            "    </node>\n"
            '    <node name="calibrate"',
        )
    )


def delivery(directory: Path, night: int, capsys: pytest.CaptureFixture[str], dataset: int) -> None:
    """Frames 1 and 2 of a night with their darks, and a Ziggy manifest."""
    raw = directory / f"night-{night}" / "raw"
    raw.mkdir(parents=True)
    for frame in (1, 2):
        (raw / f"frame-{frame}.sci").write_text(str(10 * frame + night))
        (raw / f"frame-{frame}.dark").write_text("1")
    made = run_cli(capsys, "datastore", "manifest", directory, "--dataset-id", dataset)
    assert made.returncode == 0, made.stderr


def test_a_data_receipt_node_receives_each_delivery_waiting_as_a_task_of_the_instance(
    home: Path,
    ziggy_d: Path,
    worker: InProcessWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    with_data_receipt(ziggy_d)
    result = run_cli(
        capsys, "definitions", "import", ziggy_d, "--algorithm-path", ziggy_d.parent.parent / "src"
    )
    assert result.returncode == 0, result.stderr
    assert "data-receipt" not in result.stderr, "the built-in node is acted on: no warning"
    receipt = home / "receipt"
    delivery(receipt / "first", 1, capsys, 11)
    delivery(receipt / "second", 2, capsys, 12)
    delivery(receipt / "broken", 3, capsys, 13)
    (receipt / "broken" / "night-3" / "raw" / "frame-1.sci").write_text("99")
    (receipt / "no-manifest").mkdir()  # Ziggy's rule: a subdirectory without one is none

    planned = run_cli(capsys, "submit", "spectra", "--dry-run").stdout
    assert "data-receipt: 3 tasks (broken, first, second)" in planned, planned
    instance = json.loads(run_cli(capsys, "submit", "spectra", "--json").stdout)["id"]
    worker.drain()

    tasks = {
        t["unit_of_work"]: t for t in queries.list_tasks(instance) if t["node"] == "data-receipt"
    }
    assert [(u, t["state"]) for u, t in sorted(tasks.items())] == [
        ("broken", "ERROR - MARSHALING"),
        ("first", "COMPLETE"),
        ("second", "COMPLETE"),
    ]
    assert "night-3/raw/frame-1.sci: SHA1 checksum differs" in tasks["broken"]["error_message"]
    assert sorted(p.name for p in receipt.iterdir()) == ["broken", "no-manifest"], (
        "what was received is gone, what failed is left"
    )
    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"

    # The sender corrects the delivery; the failed receipt is run again.
    (receipt / "broken" / "night-3" / "raw" / "frame-1.sci").write_text("13")
    restarted = run_cli(
        capsys, "restart", tasks["broken"]["id"], "--mode", "restart-from-beginning"
    )
    assert restarted.returncode == 0, restarted.stderr
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    ran = sorted((t["node"], t["unit_of_work"]) for t in queries.list_tasks(instance))
    assert [r for r in ran if r[0] != "data-receipt"] == [
        ("calibrate", f"night-{n}") for n in (1, 2, 3)
    ] + [("stack", f"night-{n}") for n in (1, 2, 3)]
    assert [p.name for p in receipt.iterdir()] == ["no-manifest"]
    files = json.loads(run_cli(capsys, "files", "--unit", "night-2", "--json").stdout)
    received = [f for f in files if f["origin"] == "received"]
    assert {(f["node"], f["instance_id"], f["task_id"]) for f in received} == {
        ("data-receipt", instance, tasks["second"]["id"])
    }, "the delivery is in the lineage, received by its task"
    assert len(received) == 4
    lineage = run_cli(capsys, "lineage", "night-2/cal/frame-1.cal").stdout
    assert f"task {tasks['second']['id']}" in lineage, lineage


def test_files_and_a_manifest_at_the_top_of_the_receipt_directory_are_one_delivery(
    home: Path, ziggy_d: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    with_data_receipt(ziggy_d)
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    receipt = home / "receipt"
    delivery(receipt, 1, capsys, 0)

    instance = facade.submit("spectra")["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    [received] = [t for t in queries.list_tasks(instance) if t["node"] == "data-receipt"]
    assert received["unit_of_work"] == "receipt"
    assert list(receipt.iterdir()) == [], "nothing left in the receipt directory"
    again = run_cli(capsys, "submit", "spectra")
    assert_one_line_error(again, "node 'data-receipt' finds no delivery waiting in")

    exported = receipt.parent / "exported" / "spectra.xml"
    exported.parent.mkdir()
    exported.write_text(facade.export_definition("spectra"))
    assert '<node name="data-receipt" childNodeNames="calibrate">' in exported.read_text()
    back = facade.import_definitions([exported], [ziggy_d.parent.parent / "src"])
    assert back == [{"name": "spectra", "version": 1, "new": False}], "imports back the same"


def with_dark_model(ziggy_d: Path) -> None:
    """The spectra pipeline's data receipt, and a model type its calibrate node uses."""
    with_data_receipt(ziggy_d)
    datastore_xml = ziggy_d / "spectra-datastore.xml"
    datastore_xml.write_text(
        datastore_xml.read_text().replace(
            "<remoteEnvironment",
            '<modelType type="dark model" fileNameRegex="dark-([0-9]+)-([0-9]{8})\\.txt"'
            ' versionNumberGroup="1" timestampGroup="2"/>\n  <remoteEnvironment',
        )
    )
    pipeline = ziggy_d / "spectra-pipeline.xml"
    pipeline.write_text(
        pipeline.read_text().replace(
            '<outputDataFileType name="calibrated frame"/>',
            '<outputDataFileType name="calibrated frame"/>\n      <modelType name="dark model"/>',
        )
    )
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])


def seen_by_calibrate(instance: int) -> dict[str, Any]:
    """What the first calibrate subtask of ``instance`` was given (its step wrote it)."""
    calibrate = next(t for t in queries.list_tasks(instance) if t["node"] == "calibrate")
    task_dir = Path(queries.get_task(calibrate["id"])["task_dir"])
    return json.loads((task_dir / "st-0" / "seen.json").read_text())


def test_a_ziggy_model_type_arrives_with_the_delivery_and_is_pinned_once_received(
    home: Path, ziggy_d: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ziggy's rule: an instance that runs data receipt uses the models it received; the
    model type's version and timestamp groups give the version and time."""
    with_dark_model(ziggy_d)
    receipt = home / "receipt"
    (receipt / "models").mkdir(parents=True)
    (receipt / "models" / "dark-3-20240102.txt").write_text("dark, version 3")
    delivery(receipt, 1, capsys, 5)

    instance = facade.submit("spectra")["id"]  # no model received yet: the delivery has it
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert queries.get_instance(instance)["models"] == {"dark model": "3"}
    [model] = json.loads(run_cli(capsys, "models", "--json").stdout)
    assert (model["model_type"], model["version"], model["timestamp"]) == (
        "dark model",
        "3",
        "20240102",
    )
    seen = seen_by_calibrate(instance)
    assert seen["inputs"]["modelFilenames"] == "dark-3-20240102.txt", "Ziggy's one-item array"


def test_a_model_version_chosen_at_submit_stands_after_the_receipt_brings_a_newer(
    home: Path, ziggy_d: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--model TYPE=VERSION`` is the operator's word: the data receipt node takes the
    newest of the types left to it (Ziggy's rule), never over a version chosen."""
    with_dark_model(ziggy_d)
    older = home / "dark-3-20240102.txt"
    older.write_text("dark, version 3")
    imported = run_cli(capsys, "models", "import", older, "--type", "dark model")
    assert imported.returncode == 0, imported.stderr
    receipt = home / "receipt"
    for night, version in ((1, 4), (2, 5)):
        models = receipt / f"night-{night}" / "models"
        models.mkdir(parents=True)
        (models / f"dark-{version}-2024010{version}.txt").write_text(f"dark, version {version}")

    delivery(receipt / "night-1", 1, capsys, 31)
    chosen = facade.submit("spectra", models=["dark model=3"])["id"]
    worker.drain()
    assert queries.get_instance(chosen)["state"] == "COMPLETED"
    assert queries.get_instance(chosen)["models"] == {"dark model": "3"}, "the choice stands"
    assert seen_by_calibrate(chosen)["inputs"]["modelFilenames"] == "dark-3-20240102.txt"

    delivery(receipt / "night-2", 2, capsys, 32)
    newest = facade.submit("spectra")["id"]
    worker.drain()
    assert queries.get_instance(newest)["models"] == {"dark model": "5"}, "Ziggy's: the newest"
    assert seen_by_calibrate(newest)["inputs"]["modelFilenames"] == "dark-5-20240105.txt"


def with_event_handler(ziggy_d: Path) -> None:
    """Ziggy's data-receipt event handler on its receipt directory, declared as its
    manual declares it, for the spectra pipeline started by its data receipt node."""
    with_data_receipt(ziggy_d)
    (ziggy_d / "spectra-events.xml").write_text(
        '<?xml version="1.0" encoding="UTF-8"?>\n<pipelineDefinition>\n'
        '  <pipelineEvent name="data-receipt" pipelineName="spectra"\n'
        '                 enableOnClusterStart="true"\n'
        '                 directory="${ziggy.pipeline.data.receipt.dir}"/>\n'
        "</pipelineDefinition>\n"
    )


def test_a_ziggy_pipeline_event_starts_its_pipeline_for_the_units_that_arrived_once(
    home: Path, ziggy_d: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ziggy's ready files: any event name, grouped by it; each label a subdirectory of the
    watched directory; a delivery whose ready files are not all there is left alone."""
    with_event_handler(ziggy_d)
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    [handler] = events.list_handlers()
    receipt = home / "receipt"
    assert (handler["name"], handler["pipeline"], handler["enabled"]) == (
        "data-receipt",
        "spectra",
        True,
    )
    assert Path(handler["directory"]) == receipt
    delivery(receipt / "sample-1", 1, capsys, 21)
    delivery(receipt / "sample-2", 2, capsys, 22)
    delivery(receipt / "sample-3", 3, capsys, 23)
    (receipt / "sample-1.READY.nightly.2").touch()
    (receipt / "sample-3.READY.late.2").touch()  # its second delivery is still on the way
    assert events.scan() == {"submitted": 0, "failed": 0}, "one of two ready files: no event"
    (receipt / "sample-2.READY.nightly.2").touch()

    assert events.scan() == {"submitted": 1, "failed": 0}
    assert events.scan() == {"submitted": 0, "failed": 0}, "once"
    [instance] = queries.list_instances()
    assert instance["units"] == ["night-1", "night-2"]
    assert instance["event"] == "event 1 of data-receipt (labels sample-1, sample-2)"
    assert sorted(p.name for p in receipt.iterdir()) == [
        "sample-1",
        "sample-2",
        "sample-3",
        "sample-3.READY.late.2",
    ], "the event's ready files are removed, the other event's wait"
    assert [p for p in receipt.rglob("*") if p.is_file() and "sample-3" not in str(p)] == []
    worker.drain()

    assert queries.get_instance(instance["id"])["state"] == "COMPLETED"
    ran = sorted((t["node"], t["unit_of_work"]) for t in queries.list_tasks(instance["id"]))
    assert ran == [
        ("calibrate", "night-1"),
        ("calibrate", "night-2"),
        ("stack", "night-1"),
        ("stack", "night-2"),
    ], "the handler received the deliveries: its instance skips the data-receipt node"
    assert (home / "datastore" / "night-2" / "stack" / "stacked.txt").exists()
    assert seen_by_calibrate(instance["id"])["inputs"]["algorithmParameters"][
        "ZiggyEventLabels"
    ] == {
        "eventHandlerName": "data-receipt",
        "eventName": "nightly",
        "eventLabels": ["sample-1", "sample-2"],
    }, "Ziggy's event parameter set, every label to every subtask"

    again = [receipt / "sample-1.READY.nightly.2", receipt / "sample-2.READY.nightly.2"]
    for path in again:  # ready files written again once the deliveries are received
        path.touch()
    assert events.scan() == {"submitted": 0, "failed": 1}
    assert len(queries.list_instances()) == 1, "nothing left to receive: nothing submitted"
    assert any("sample-1: no manifest" in a["message"] for a in queries.list_alerts())
    for path in again:  # what the alert asks of a person
        path.unlink()

    delivery(receipt / "sample-1", 4, capsys, 24)  # the next night, under the same label
    (receipt / "sample-1.READY.nightly.1").touch()
    assert events.scan() == {"submitted": 1, "failed": 0}, "another manifest: another event"
    newest = max(queries.list_instances(), key=lambda i: i["id"])
    assert newest["units"] == ["night-4"]


def test_a_ziggy_ready_file_without_a_label_receives_the_delivery_at_the_top(
    home: Path, ziggy_d: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ziggy's ``READY.NAME.1``: no label, the delivery is the watched directory's own
    files and manifest; a label-less event of more ready files, or a label naming a
    directory outside the watched one, is no event."""
    with_event_handler(ziggy_d)
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    receipt = home / "receipt"
    delivery(receipt, 1, capsys, 41)
    (receipt / "READY.morning.2").touch()
    (receipt / "...READY.evening.1").touch()
    assert events.scan() == {"submitted": 0, "failed": 0}, "no event among them"
    (receipt / "READY.nightly.1").touch()

    assert events.scan() == {"submitted": 1, "failed": 0}
    [instance] = queries.list_instances()
    assert instance["units"] == ["night-1"]
    assert sorted(p.name for p in receipt.iterdir()) == ["...READY.evening.1", "READY.morning.2"]
    worker.drain()

    assert queries.get_instance(instance["id"])["state"] == "COMPLETED"
    assert (home / "datastore" / "night-1" / "stack" / "stacked.txt").exists()
    assert seen_by_calibrate(instance["id"])["inputs"]["algorithmParameters"][
        "ZiggyEventLabels"
    ] == {"eventHandlerName": "data-receipt", "eventName": "nightly", "eventLabels": []}


#: A calibrate step that maps more memory for frame 2 than its node gives a subtask.
GREEDY = STEPS.replace(
    '    science, dark = inputs["dataFilenames"]\n',
    '    science, dark = inputs["dataFilenames"]\n'
    '    if science == "frame-2.sci":\n'
    "        bytearray(2 * 2**30)\n",
)


@pytest.mark.parametrize("kind", ["python", "executable"])
def test_heap_size_gigabytes_limits_the_memory_of_each_subtask(
    home: Path, ziggy_d: Path, worker: InProcessWorker, kind: str
) -> None:
    """Ziggy divides a node's heap among its workers: ``heapSizeGigabytes="3"`` with
    ``maxWorkers="2"`` lets each subtask map 1.5 GiB; one that asks for 2 GiB fails with
    its memory error, the other completes."""
    assert GREEDY != STEPS
    if kind == "python":
        (ziggy_d.parent.parent / "src" / "optics" / "steps.py").write_text(GREEDY)
    else:
        executable_step(ziggy_d, home / "bin")
        (home / "bin" / "calibrate").write_text(
            "#!/bin/sh\n"
            'for science in frame-*.sci; do cp "$science" "${science%.sci}.cal"; done\n'
            f'[ "$(ls frame-*.sci)" = frame-2.sci ] && exec {sys.executable} -c'
            " 'bytearray(2 * 2**30)'\n"
            "exit 0\n"
        )
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    deliver_by_hand(home / "datastore")

    instance = facade.submit("spectra")["id"]
    worker.drain()

    task = next(t for t in queries.list_tasks(instance) if t["node"] == "calibrate")
    assert task["counts"] == "1/2 (1)"
    [failed] = [s for s in queries.list_subtasks(task["id"]) if s["state"] == "FAILED"]
    assert failed["index"] == 1
    assert "MemoryError" in failed["error"], failed["error"]
    if kind == "python":
        assert "heap_size_gigabytes 3 over max_workers 2: 1.5 GiB a subtask" in failed["error"]


def test_an_executable_step_started_by_an_event_finds_it_in_its_environment(
    home: Path, ziggy_d: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    """What a Ziggy step reads in ``ZiggyEventLabels``, an executable reads in
    ``PIPELINE_EVENT_HANDLER``, ``PIPELINE_EVENT_NAME`` and ``PIPELINE_EVENT_LABELS``."""
    with_event_handler(ziggy_d)
    executable_step(ziggy_d, home / "bin")
    with (home / "bin" / "calibrate").open("a") as script:
        script.write("env | grep ^PIPELINE_EVENT_ | sort > event.txt\n")
    facade.import_definitions([ziggy_d], [ziggy_d.parent.parent / "src"])
    receipt = home / "receipt"
    delivery(receipt / "sample-1", 1, capsys, 51)
    (receipt / "sample-1.READY.nightly.1").touch()

    assert events.scan() == {"submitted": 1, "failed": 0}
    [instance] = queries.list_instances()
    worker.drain()

    assert queries.get_instance(instance["id"])["state"] == "COMPLETED"
    calibrate = next(t for t in queries.list_tasks(instance["id"]) if t["node"] == "calibrate")
    task_dir = Path(queries.get_task(calibrate["id"])["task_dir"])
    assert (task_dir / "st-0" / "event.txt").read_text().splitlines() == [
        "PIPELINE_EVENT_HANDLER=data-receipt",
        "PIPELINE_EVENT_LABELS=sample-1",
        "PIPELINE_EVENT_NAME=nightly",
    ]


#: A survey whose units of work are two regexp levels, a sector and one of its cameras.
SURVEY = """<?xml version="1.0" encoding="UTF-8"?>
<pipelineDefinition>
  <step name="reduce" file="survey/steps.py"/>
  <step name="summarize" file="survey/steps.py"/>
  <pipeline name="survey" rootNodeNames="reduce">
    <node name="reduce" childNodeNames="summarize">
      <inputDataFileType name="pixels"/>
      <outputDataFileType name="reduced pixels"/>
    </node>
    <node name="summarize" singleSubtask="true">
      <inputDataFileType name="reduced pixels"/>
      <outputDataFileType name="summary"/>
    </node>
  </pipeline>
  <datastoreRegexp name="sector" value="sector-[0-9]+"/>
  <datastoreRegexp name="camera" value="camera-[1-4]"/>
  <datastoreNode name="sector" isRegexp="true" nodes="camera">
    <datastoreNode name="camera" isRegexp="true" nodes="L0, L1, L2">
      <datastoreNode name="L0"/>
      <datastoreNode name="L1"/>
      <datastoreNode name="L2"/>
    </datastoreNode>
  </datastoreNode>
  <dataFileType name="pixels" location="sector/camera/L0" fileNameRegexp="pixels-([0-9]+)\\.txt"/>
  <dataFileType name="reduced pixels" location="sector/camera/L1"
                fileNameRegexp="pixels-([0-9]+)\\.red"/>
  <dataFileType name="summary" location="sector/camera/L2" fileNameRegexp="summary\\.txt"/>
</pipelineDefinition>
"""

SURVEY_STEPS = """
def reduce(inputs):
    name = inputs["dataFilenames"]
    with open(name) as given, open(name.replace(".txt", ".red"), "w") as out:
        out.write(str(10 * int(given.read())))


def summarize(inputs):
    total = sum(int(open(name).read()) for name in inputs["dataFilenames"])
    with open("summary.txt", "w") as out:
        out.write(str(total))
"""


@pytest.fixture
def survey_d(tmp_path: Path) -> Path:
    """The survey's ``etc/ziggy.d`` and its steps under ``src/``."""
    etc = tmp_path / "survey" / "etc" / "ziggy.d"
    etc.mkdir(parents=True)
    (etc / "survey.xml").write_text(SURVEY)
    (tmp_path / "survey" / "src" / "survey").mkdir(parents=True)
    (tmp_path / "survey" / "src" / "survey" / "steps.py").write_text(SURVEY_STEPS)
    return etc


def pixel(sector: int, camera: int, number: int) -> int:
    return 100 * sector + 10 * camera + number


def test_a_location_of_two_regexp_levels_runs_a_task_per_sector_and_camera(
    home: Path,
    survey_d: Path,
    tmp_path: Path,
    worker: InProcessWorker,
    capsys: pytest.CaptureFixture[str],
) -> None:
    imported = import_ziggy(capsys, survey_d)
    assert imported.returncode == 0, imported.stderr
    shown = json.loads(run_cli(capsys, "definitions", "show", "survey", "--json").stdout)
    assert shown["data_file_types"]["pixels"]["location"] == "{sector}/{camera}/L0"
    assert shown["data_file_types"]["pixels"]["unit_regexp"] == {
        "sector": "sector-[0-9]+",
        "camera": "camera-[1-4]",
    }
    delivery = tmp_path / "delivery"
    for sector, camera, number in itertools.product((1, 2), (1, 2), (1, 2)):
        level = delivery / f"sector-{sector}" / f"camera-{camera}" / "L0"
        level.mkdir(parents=True, exist_ok=True)
        (level / f"pixels-{number}.txt").write_text(str(pixel(sector, camera, number)))
    manifest = run_cli(capsys, "datastore", "manifest", delivery, "--dataset-id", 3)
    assert manifest.returncode == 0, manifest.stderr
    received = run_cli(capsys, "datastore", "import", delivery)
    assert received.returncode == 0, received.stderr
    assert "received 8 files" in received.stdout
    units = [f"sector-{s}/camera-{c}" for s, c in itertools.product((1, 2), (1, 2))]
    assert f"pixels: {', '.join(units)}" in " ".join(received.stdout.split())
    datastore = home / "datastore"
    for outside in ("sector-x/camera-1", "sector-1/camera-9"):  # no unit: a level's regexp
        (datastore / outside / "L0").mkdir(parents=True)
        (datastore / outside / "L0" / "pixels-1.txt").write_text("1")

    instance = facade.submit("survey")["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    tasks = sorted((t["node"], t["unit_of_work"]) for t in queries.list_tasks(instance))
    assert tasks == sorted((node, unit) for node in ("reduce", "summarize") for unit in units)
    for sector, camera in itertools.product((1, 2), (1, 2)):
        unit = datastore / f"sector-{sector}" / f"camera-{camera}"
        reduced = {p.name: int(p.read_text()) for p in (unit / "L1").iterdir()}
        assert reduced == {f"pixels-{n}.red": 10 * pixel(sector, camera, n) for n in (1, 2)}
        summary = int((unit / "L2" / "summary.txt").read_text())
        assert summary == sum(10 * pixel(sector, camera, n) for n in (1, 2))
    listed = run_cli(capsys, "files", "--unit", "sector-1/camera-2", "--json")
    assert sorted(f["path"] for f in json.loads(listed.stdout)) == [
        f"sector-1/camera-2/{level}/{name}"
        for level, name in (
            ("L0", "pixels-1.txt"),
            ("L0", "pixels-2.txt"),
            ("L1", "pixels-1.red"),
            ("L1", "pixels-2.red"),
            ("L2", "summary.txt"),
        )
    ], "the lineage by unit"

    chosen = facade.submit("survey", units="sector-1/.*")["id"]
    worker.drain()

    assert queries.get_instance(chosen)["state"] == "COMPLETED"
    reduced = [t["unit_of_work"] for t in queries.list_tasks(chosen) if t["node"] == "reduce"]
    assert sorted(reduced) == ["sector-1/camera-1", "sector-1/camera-2"]


def test_a_location_of_two_regexp_levels_exports_and_imports_back_unchanged(
    home: Path, survey_d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exported = exported_and_imported_back(capsys, tmp_path, survey_d, "survey")

    assert '<datastoreRegexp name="camera" value="camera-[1-4]"/>' in exported
    assert 'location="sector/camera/L0"' in exported


@pytest.mark.parametrize(
    ("changes", "fragments"),
    [
        (
            [('value="camera-[1-4]"', 'value="camera-[1-4"')],
            ("data_file_types.pixels.unit_regexp: camera: 'camera-[1-4' is not a regular",),
        ),
        (
            [
                ('nodes="camera"', 'nodes="camera, L3"'),
                (
                    '<datastoreNode name="camera"',
                    '<datastoreNode name="L3"/><datastoreNode name="camera"',
                ),
                ('location="sector/camera/L2"', 'location="sector/L3"'),
            ],
            (
                "node 'summarize': data file types 'reduced pixels' ({sector}/{camera}/L1) and"
                " 'summary' ({sector}/L3) disagree on the placeholders",
            ),
        ),
        (
            [(' isRegexp="true"', ""), (' isRegexp="true"', "")],
            ("dataFileType 'pixels': location 'sector/camera/L0' has no datastore regexp",),
        ),
    ],
)
def test_a_bad_level_of_a_unit_of_work_is_refused_in_one_line_and_nothing_imported(
    database: Path,
    survey_d: Path,
    capsys: pytest.CaptureFixture[str],
    changes: list[tuple[str, str]],
    fragments: tuple[str, ...],
) -> None:
    file = survey_d / "survey.xml"
    for old, new in changes:
        assert old in file.read_text()
        file.write_text(file.read_text().replace(old, new, 1))

    assert_one_line_error(import_ziggy(capsys, survey_d), *fragments)
    assert json.loads(run_cli(capsys, "definitions", "list", "--json").stdout) == []


def test_files_received_for_a_unit_of_two_levels_land_in_its_directory(
    home: Path, survey_d: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    facade.import_definitions([survey_d], [survey_d.parent.parent / "src"])
    delivery = tmp_path / "delivery"
    delivery.mkdir()
    (delivery / "pixels-1.txt").write_text("7")

    one_level = run_cli(
        capsys, "datastore", "import", delivery, "--type", "pixels", "--unit", "sector-3"
    )
    assert_one_line_error(
        one_level,
        "unit of work 'sector-3' must be 2 names joined by '/' ({sector}/{camera}/L0)",
    )
    received = run_cli(
        capsys, "datastore", "import", delivery, "--type", "pixels", "--unit", "sector-3/camera-1"
    )

    assert received.returncode == 0, received.stderr
    stored = home / "datastore" / "sector-3" / "camera-1" / "L0" / "pixels-1.txt"
    assert stored.read_text() == "7"
