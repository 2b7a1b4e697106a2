"""Bad input: one line naming what was wrong, a non-zero exit, no traceback, nothing changed."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import replace

import pytest

from tests.conftest import Cluster, free_port, make_cluster


def assert_one_line_error(result, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr + result.stdout
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def initialised() -> Iterator[Cluster]:
    """An initialised cluster whose processes are never started."""
    cluster = make_cluster("sqlite", None)
    yield cluster
    shutil.rmtree(cluster.home, ignore_errors=True)


@pytest.fixture
def home(initialised: Cluster) -> Cluster:
    """The initialised cluster with an environment this test may change."""
    return replace(initialised, env=dict(initialised.env))


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["submit", "nosuch"], ["unknown pipeline 'nosuch' (known: sample)"]),
        (
            ["submit", "sample", "--start-node", "nosuch"],
            ["pipeline 'sample' has no node 'nosuch'"],
        ),
        (["submit", "sample", "--end-node", "nosuch"], ["pipeline 'sample' has no node 'nosuch'"]),
        (
            ["submit", "sample", "--start-node", "averaging", "--end-node", "permuter"],
            ["node 'permuter' is not downstream of node 'averaging'"],
        ),
        (["submit", "sample", "--priority", "12"], ["priority 12 is out of range"]),
        (
            ["params", "set", "algorithm", "nosuch=1"],
            ["parameter set 'algorithm' has no parameter 'nosuch'"],
        ),
        (
            ["params", "set", "algorithm", "throw_exception_subtask_0=maybe"],
            ["algorithm.throw_exception_subtask_0: 'maybe' is not a bool"],
        ),
        (
            ["params", "set", "algorithm", "execution_pause_seconds=soon"],
            ["algorithm.execution_pause_seconds: 'soon' is not an int"],
        ),
        (["params", "set", "algorithm", "justtext"], ["'justtext' is not key=value"]),
        (["params", "set", "nosuch", "a=1"], ["unknown parameter set 'nosuch'"]),
        (
            ["params", "show", "algorithm", "--version", "7"],
            ["unknown parameter set 'algorithm version 7'"],
        ),
        (["definitions", "show", "nosuch"], ["unknown pipeline 'nosuch'"]),
        (["tasks", "999"], ["unknown instance 999"]),
        (["task", "999"], ["unknown task 999"]),
        (["subtasks", "999"], ["unknown task 999"]),
        (["logs", "999"], ["unknown task 999"]),
        (["wait", "999"], ["unknown instance 999"]),
        (
            ["definitions", "import", "/nonexistent/pipeline.yaml"],
            ["/nonexistent/pipeline.yaml: cannot read"],
        ),
    ],
)
def test_bad_input_names_the_problem(home, args, fragments) -> None:
    before = home.json("params", "show", "algorithm")
    assert_one_line_error(home.cli(*args, check=False), *fragments)
    assert home.json("params", "show", "algorithm") == before
    assert home.json("instances") == []


def test_broker_unreachable_names_url_and_changes_nothing(home) -> None:
    port = free_port()
    home.env["PIPELINE_BROKER_URL"] = f"redis://:secret@127.0.0.1:{port}/0"
    result = home.cli("submit", "sample", check=False)
    assert_one_line_error(result, f"broker unreachable at redis://:***@127.0.0.1:{port}/0")
    assert "secret" not in result.stderr
    assert home.json("instances") == []
    assert not home.json("params", "show", "algorithm")["locked"]


def test_private_broker_not_started(home) -> None:
    assert_one_line_error(
        home.cli("submit", "sample", check=False), "broker unreachable at redis://"
    )


def test_database_unreachable_names_url_without_password(home) -> None:
    port = free_port()
    home.env["PIPELINE_DATABASE_URL"] = f"postgresql+psycopg://pipeline:secret@127.0.0.1:{port}/db"
    result = home.cli("instances", check=False)
    assert_one_line_error(
        result, f"database unreachable at postgresql+psycopg://pipeline:***@127.0.0.1:{port}/db"
    )
    assert "secret" not in result.stderr


def test_missing_datastore(home) -> None:
    home.env["PIPELINE_DATASTORE_ROOT"] = "/nonexistent/datastore"
    result = home.cli("submit", "sample", check=False)
    assert_one_line_error(result, "datastore /nonexistent/datastore does not exist")


def test_empty_datastore_has_no_units_of_work(home) -> None:
    empty = home.home / "empty"
    empty.mkdir()
    home.env["PIPELINE_DATASTORE_ROOT"] = str(empty)
    result = home.cli("submit", "sample", check=False)
    assert_one_line_error(result, "node 'permuter' finds no raw_image files ({dataset}/L0/*.png)")
    assert home.json("instances") == []


def test_uninitialised_home(tmp_path, home) -> None:
    home.env["PIPELINE_HOME"] = str(tmp_path / "fresh")
    assert_one_line_error(home.cli("instances", check=False), "run `pipeline cluster init`")
    assert_one_line_error(home.cli("cluster", "start", check=False), "no cluster under")
    assert_one_line_error(home.cli("api", check=False), "no api_token for", "cluster init")


def test_bad_definition_file_names_file_and_key(home, tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata_file_types: {}\nnodes:\n  - name: a\n    algorithm: x\n")
    before = home.json("definitions", "list")
    result = home.cli("definitions", "import", bad, check=False)
    assert_one_line_error(result, f"{bad}: nodes.0.algorithm: ")
    assert home.json("definitions", "list") == before


def test_bad_setting_and_bad_settings_file(home, tmp_path) -> None:
    home.env["PIPELINE_WORKERS"] = "many"
    assert_one_line_error(home.cli("instances", check=False), "setting workers: ")
    del home.env["PIPELINE_WORKERS"]
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "settings.toml").write_text("redis_port = = 1\n")
    home.env["PIPELINE_HOME"] = str(fresh)
    assert_one_line_error(home.cli("instances", check=False), "settings file is not valid TOML")


def test_status_and_stop_of_an_uninitialised_home_touch_nothing(home, tmp_path) -> None:
    home.env["PIPELINE_HOME"] = str(tmp_path / "nothing-here")
    status = home.json("cluster", "status")
    assert [(row["name"], row["alive"]) for row in status] == [
        ("redis", False),
        ("worker1", False),
        ("beat", False),
        ("operations", False),
        ("api", False),
        ("flower", False),
    ]
    assert "nothing was running" in home.cli("cluster", "stop").stdout
    assert not (tmp_path / "nothing-here" / "pipeline.db").exists()
