"""Definition files: validation naming file, key and reason; all-or-nothing import; versions."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pipeline.database import transaction
from pipeline.domain import definitions
from pipeline.errors import InvalidInput
from pipeline.operations import queries
from pipeline.settings import PACKAGED_DEFINITIONS
from tests.support import assert_one_line_error, run_cli

SAMPLE = PACKAGED_DEFINITIONS / "sample.yaml"


def sample_spec() -> dict:
    return yaml.safe_load(SAMPLE.read_text())


def write(tmp_path: Path, name: str, spec: dict) -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return path


def import_files(*paths: Path) -> list[tuple[str, int, bool]]:
    with transaction() as session:
        return [
            (d.name, d.version, new) for d, new in definitions.import_files(session, list(paths))
        ]


def test_sample_imports_and_reimport_is_unchanged(database: Path) -> None:
    assert import_files(SAMPLE) == [("sample", 1, True)]
    assert import_files(SAMPLE) == [("sample", 1, False)]
    listed = queries.list_definitions()
    assert [(d["name"], d["version"], d["nodes"]) for d in listed] == [
        ("sample", 1, ["permuter", "flip", "averaging"])
    ]


def test_changed_definition_becomes_a_new_version(database: Path, tmp_path: Path) -> None:
    import_files(SAMPLE)
    spec = sample_spec()
    spec["nodes"][0]["execution"] = {"subtask_timeout": 5}
    assert import_files(write(tmp_path, "sample.yaml", spec)) == [("sample", 2, True)]
    shown = queries.show_definition("sample")
    assert shown["version"] == 2 and shown["nodes"][0]["execution"]["subtask_timeout"] == 5


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (lambda s: s["nodes"][0].update(after=["averaging"]), "nodes: cycle through"),
        (
            lambda s: s["nodes"][0].update(algorithm="pipeline.sample.algorithms:no_such"),
            "nodes.0.algorithm: cannot import 'pipeline.sample.algorithms:no_such'",
        ),
        (
            lambda s: s["nodes"][0].update(algorithm="no_such_package.module:run"),
            "nodes.0.algorithm: cannot import 'no_such_package.module:run'",
        ),
        (
            lambda s: s["nodes"][1].update(algorithm={"executable": "./no-such-program"}),
            "nodes.1.algorithm: executable './no-such-program' not found",
        ),
        (
            lambda s: s["nodes"][2].update(parameter_sets=["no_such_set"]),
            "nodes.2.parameter_sets: unknown parameter set 'no_such_set'",
        ),
        (lambda s: s["nodes"][1].update(after=["nobody"]), "nodes.1.after: unknown node 'nobody'"),
        (
            lambda s: s["nodes"][1].update(inputs=["no_such_type"]),
            "nodes.1.inputs: unknown data file type 'no_such_type'",
        ),
        (
            lambda s: s["nodes"][0].update(execution={"max_failed_subtasks": -1}),
            "nodes.0.execution.max_failed_subtasks: Input should be greater than or equal to 0",
        ),
        (
            lambda s: s["nodes"][0].update(colour="blue"),
            "nodes.0.colour: Extra inputs are not permitted",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(location="/abs/{dataset}/L0"),
            "data_file_types.raw_image.location: '/abs/{dataset}/L0' is absolute: a location is"
            " a path inside the datastore",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(location="{dataset}/../../etc"),
            "data_file_types.raw_image.location: '{dataset}/../../etc' contains '..': it would"
            " reach outside the datastore",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(location="L0"),
            "data_file_types.raw_image.location: must be a relative path with at least one",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(
                location="{sector}/{camera}/L0",
                unit_regexp={"sector": "sector-[0-9]", "camera": "camera-[0-9"},
            ),
            "data_file_types.raw_image.unit_regexp: camera: 'camera-[0-9' is not a regular"
            " expression",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(
                location="{sector}/{camera}/L0", unit_regexp="sector-[0-9]"
            ),
            "data_file_types.raw_image: location '{sector}/{camera}/L0' has 2 placeholders: give"
            " unit_regexp a regexp for each, e.g. {sector: ..., camera: ...}",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(
                location="{sector}/{camera}/L0", unit_regexp={"detector": "d-[0-9]"}
            ),
            "data_file_types.raw_image: unit_regexp: 'detector' is no placeholder of location"
            " '{sector}/{camera}/L0'",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(location="{a}/L0/{a}"),
            "data_file_types.raw_image.location: placeholder {a} appears twice",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(location="{sector}/{camera}/L0"),
            "nodes.0: node 'permuter': data file types 'raw_image' ({sector}/{camera}/L0) and"
            " 'permuted_image' ({dataset}/L1) disagree on the placeholders of the unit of work",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(
                pattern="../../../../../../../etc/pass*"
            ),
            "data_file_types.raw_image.pattern: '../../../../../../../etc/pass*' contains '..':"
            " it would reach outside its location",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(pattern="*/../*.png"),
            "data_file_types.raw_image.pattern: '*/../*.png' contains '..'",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(pattern="/etc/pass*"),
            "data_file_types.raw_image.pattern: '/etc/pass*' is absolute: a pattern matches"
            " files inside its location",
        ),
        (
            lambda s: s["data_file_types"]["raw_image"].update(pattern=""),
            "data_file_types.raw_image.pattern: empty: give a file-name pattern, e.g. '*.png'",
        ),
        (
            lambda s: s["parameter_sets"]["algorithm"].update(dummy_array_parameter=[]),
            "parameter_sets.algorithm.dummy_array_parameter: an empty array needs an explicit type",
        ),
        (lambda s: s.pop("nodes"), "nodes: Field required"),
    ],
)
def test_bad_definition_is_rejected_naming_file_key_and_reason(
    database: Path, tmp_path: Path, change, expected: str
) -> None:
    spec = sample_spec()
    change(spec)
    path = write(tmp_path, "bad.yaml", spec)
    with pytest.raises(InvalidInput) as raised:
        import_files(path)
    assert str(raised.value).startswith(f"{path}: ")
    assert expected in str(raised.value)
    assert "\n" not in str(raised.value)
    assert queries.list_definitions() == []


def test_import_is_all_or_nothing(database: Path, tmp_path: Path) -> None:
    import_files(SAMPLE)
    good = sample_spec()
    good["name"] = "other"
    changed = sample_spec()
    changed["description"] = "changed"
    bad = sample_spec()
    bad["name"] = "broken"
    bad["nodes"][0]["after"] = ["averaging"]
    files = [
        write(tmp_path, "a.yaml", good),
        write(tmp_path, "b.yaml", changed),
        write(tmp_path, "c.yaml", bad),
    ]
    with pytest.raises(InvalidInput, match="c.yaml: nodes: cycle"):
        import_files(*files)
    assert [(d["name"], d["version"]) for d in queries.list_definitions()] == [("sample", 1)]


def test_invalid_yaml_and_missing_file(database: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: [unclosed\n")
    with pytest.raises(InvalidInput, match="broken.yaml: not valid YAML"):
        import_files(broken)
    with pytest.raises(InvalidInput, match="missing.yaml: cannot read"):
        import_files(tmp_path / "missing.yaml")


def test_several_roots_and_children_are_allowed(database: Path, tmp_path: Path) -> None:
    spec = sample_spec()
    spec["name"] = "diamond"
    spec["nodes"].append({**spec["nodes"][0], "name": "second_root"})
    spec["nodes"][2]["after"] = ["flip", "second_root"]
    spec["nodes"].append({**spec["nodes"][1], "name": "other_child", "after": ["permuter"]})
    assert import_files(write(tmp_path, "diamond.yaml", spec)) == [("diamond", 1, True)]
    shown = queries.show_definition("diamond")
    definition = definitions.parse(
        {k: v for k, v in shown.items() if k not in ("version", "source")}
    )
    assert sorted(definition.children("permuter")) == ["flip", "other_child"]


def test_executable_algorithm_path_is_resolved(database: Path, tmp_path: Path) -> None:
    program = tmp_path / "bin" / "tool.sh"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    spec = sample_spec()
    spec["nodes"][0]["algorithm"] = {"executable": "bin/tool.sh", "args": ["--fast"]}
    import_files(write(tmp_path, "sample.yaml", spec))
    shown = queries.show_definition("sample")
    assert shown["nodes"][0]["algorithm"] == {"executable": str(program), "args": ["--fast"]}


def test_an_executable_named_without_a_path_is_found_on_the_bin_path_first(
    database: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The bin path (setting ``bin_path``, by default ``bin/`` under the home) is searched
    before ``PATH``, as Ziggy searches its ``binPath``; a name on neither is refused."""
    program = database / "bin" / "tool-on-the-bin-path"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\nexit 0\n")
    program.chmod(0o755)
    spec = sample_spec()
    spec["nodes"][0]["algorithm"] = {"executable": program.name}
    result = run_cli(capsys, "definitions", "import", write(tmp_path, "sample.yaml", spec))
    assert result.returncode == 0, result.stderr
    shown = queries.show_definition("sample")
    assert shown["nodes"][0]["algorithm"] == {"executable": str(program), "args": []}

    spec["nodes"][0]["algorithm"] = {"executable": "no-such-tool"}
    result = run_cli(capsys, "definitions", "import", write(tmp_path, "sample.yaml", spec))
    assert_one_line_error(
        result,
        f"nodes.0.algorithm: executable 'no-such-tool' not found on the bin path"
        f" ({database / 'bin'}) or PATH, or not executable",
    )
    assert queries.show_definition("sample")["version"] == 1, "nothing imported"


def test_a_bad_pattern_is_refused_by_the_command_in_one_line(
    home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    spec = sample_spec()
    spec["data_file_types"]["raw_image"]["pattern"] = "/etc/pass*"
    path = write(tmp_path, "sample.yaml", spec)
    before = queries.list_definitions()
    result = run_cli(capsys, "definitions", "import", path)
    assert_one_line_error(result, f"{path}: data_file_types.raw_image.pattern: '/etc/pass*'")
    assert queries.list_definitions() == before


def test_a_stored_definition_no_longer_valid_is_refused_at_submit_in_one_line(
    home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A definition stored before patterns were checked (or edited by hand) cannot copy a
    file from outside the datastore: the submit is refused, in one line (CLI) or a 422."""
    from fastapi.testclient import TestClient

    from pipeline.domain.models import PipelineDefinition
    from pipeline.interfaces.api import create_app

    with transaction() as session:
        stored = session.query(PipelineDefinition).one()
        spec = dict(stored.spec)
        spec["data_file_types"] = {
            **spec["data_file_types"],
            "raw_image": {"location": "{dataset}/L0", "pattern": "../../../../etc/pass*"},
        }
        stored.spec = spec
    expected = (
        "pipeline 'sample' version 1 is no longer valid: data_file_types.raw_image.pattern:"
        " '../../../../etc/pass*' contains '..'"
    )
    assert_one_line_error(run_cli(capsys, "submit", "sample"), expected)
    http = TestClient(create_app("t"), headers={"Authorization": "Bearer t"})
    answer = http.post("/api/v1/instances", json={"pipeline": "sample"})
    assert answer.status_code == 422 and answer.json()["detail"].startswith(expected)
    assert queries.list_instances() == []


def user_module(directory: Path, module: str, body: str = "def run(ctx):\n    pass\n") -> None:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{module}.py").write_text(body)


def one_node(name: str, algorithm: str, **extra: object) -> dict:
    return {
        "name": name,
        **extra,
        "data_file_types": {"raw": {"location": "{unit}/in", "pattern": "*"}},
        "nodes": [{"name": "one", "algorithm": algorithm, "inputs": ["raw"]}],
    }


def test_python_path_is_recorded_absolute_relative_to_the_file(
    database: Path, tmp_path: Path
) -> None:
    user_module(tmp_path / "defs", "beside")
    user_module(tmp_path / "defs" / "src", "deeper")
    import_files(write(tmp_path / "defs", "a.yaml", one_node("a", "beside:run")))
    import_files(
        write(tmp_path / "defs", "b.yaml", one_node("b", "deeper:run", python_path=["src"]))
    )
    assert queries.show_definition("a")["python_path"] == [str(tmp_path / "defs")]
    assert queries.show_definition("b")["python_path"] == [str(tmp_path / "defs" / "src")]


def test_two_definitions_may_each_have_a_module_of_the_same_name(
    database: Path, tmp_path: Path
) -> None:
    """The check forgets the modules it imported: the second file's own module is looked
    at, not the first one's left in this process."""
    user_module(tmp_path / "one", "steps", "def first(ctx):\n    pass\n")
    user_module(tmp_path / "two", "steps", "def second(ctx):\n    pass\n")
    import_files(
        write(tmp_path / "one", "one.yaml", one_node("one", "steps:first")),
        write(tmp_path / "two", "two.yaml", one_node("two", "steps:second")),
    )
    assert [n["name"] for n in queries.list_definitions()] == ["one", "two"]


def test_a_module_shadowed_by_the_workers_own_is_refused(database: Path, tmp_path: Path) -> None:
    user_module(tmp_path, "pipeline")  # the workers import their own ``pipeline`` first
    with pytest.raises(InvalidInput, match=r"module 'pipeline' .* is shadowed .* rename yours"):
        import_files(write(tmp_path, "c.yaml", one_node("c", "pipeline:run")))


@pytest.mark.parametrize("module", ["config", "settings"])
def test_a_user_module_named_like_a_generic_package_is_accepted(
    database: Path, tmp_path: Path, module: str
) -> None:
    """The product installs no top-level ``config`` or ``settings``: a user's own imports."""
    user_module(tmp_path, module)
    assert import_files(write(tmp_path, "c.yaml", one_node("c", f"{module}:run"))) == [
        ("c", 1, True)
    ]


def test_a_location_of_several_placeholders_names_a_unit_by_their_values(
    database: Path, tmp_path: Path
) -> None:
    spec = sample_spec()
    for kind in spec["data_file_types"].values():
        kind["location"] = kind["location"].replace("{dataset}", "{sector}/{camera}")
    spec["data_file_types"]["raw_image"]["unit_regexp"] = {"camera": "camera-[0-9]"}
    assert import_files(write(tmp_path, "sample.yaml", spec)) == [("sample", 1, True)]
    with transaction() as session:
        stored = definitions.get(session, "sample").spec
    raw = definitions.parse(stored).data_file_types["raw_image"]

    assert raw.placeholders == ["sector", "camera"]
    assert raw.directory("sector-1/camera-2") == "sector-1/camera-2/L0"
    assert raw.unit_in("sector-1/camera-2/L0") == "sector-1/camera-2"
    assert raw.unit_in("sector-1/camera-x/L0") is None, "camera's regexp"
    assert raw.unit_in("sector-1/L0") is None
    with pytest.raises(InvalidInput) as raised:
        raw.directory("sector-1")
    assert "location '{sector}/{camera}/L0' has 2 placeholders" in str(raised.value)
