"""One home per shell: the CLI finds the cluster a newcomer made (PIPELINE_HOME, else a
``.pipeline`` in the working directory or a parent, else ``~/.pipeline``), says which home
it uses, and an error about a missing home names where it looked and how to point
elsewhere."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from pipeline.home import find_home
from tests.support import PIPELINE, assert_one_line_error, clean_env


@pytest.fixture
def no_home_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No PIPELINE_HOME, and a user's home directory of the test's own; returns it."""
    user = tmp_path / "user"
    user.mkdir()
    monkeypatch.delenv("PIPELINE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(user))
    return user


def test_pipeline_home_wins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / ".pipeline").mkdir()
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path / "elsewhere"))
    found = find_home()
    assert found.path == tmp_path / "elsewhere"
    assert "PIPELINE_HOME" in found.reason


def test_a_pipeline_directory_here_or_above_is_found(
    no_home_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project = tmp_path / "project"
    (project / ".pipeline").mkdir(parents=True)
    (project / "analysis" / "deeper").mkdir(parents=True)
    monkeypatch.chdir(project / "analysis" / "deeper")
    found = find_home()
    assert found.path == project / ".pipeline"
    assert f".pipeline found in {project}" in found.reason


def test_else_the_users_own(
    no_home_set: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "nowhere").mkdir()
    monkeypatch.chdir(tmp_path / "nowhere")
    found = find_home()
    assert found.path == no_home_set / ".pipeline"
    assert str(tmp_path / "nowhere") in found.reason


def env_without_home(user: Path) -> dict[str, str]:
    env = clean_env(HOME=str(user))
    env.pop("PIPELINE_HOME", None)
    return env


@pytest.mark.e2e
def test_status_says_which_home_and_why(home: Path, no_home_set: Path, tmp_path: Path) -> None:
    """The home ``make demo`` leaves in the repository, found from a new shell below it."""
    project = tmp_path / "project"
    shutil.copytree(home, project / ".pipeline")
    (project / "src").mkdir()
    result = subprocess.run(
        [PIPELINE, "cluster", "status"],
        env=env_without_home(no_home_set),
        cwd=project / "src",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert f"home {project / '.pipeline'} (.pipeline found in {project})" in result.stdout


@pytest.mark.e2e
def test_a_missing_home_is_named_with_where_it_looked_and_how_to_point_elsewhere(
    no_home_set: Path, tmp_path: Path
) -> None:
    (tmp_path / "fresh").mkdir()
    result = subprocess.run(
        [PIPELINE, "instances"],
        env=env_without_home(no_home_set),
        cwd=tmp_path / "fresh",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert_one_line_error(
        result,
        f"no cluster at {no_home_set / '.pipeline'}",
        str(tmp_path / "fresh"),
        "pipeline cluster init",
        "PIPELINE_HOME",
    )
    assert not (no_home_set / ".pipeline").exists()


def test_the_example_settings_file_holds_only_real_settings_at_their_defaults(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``config/settings.example.toml`` is read as a home's settings file would be: every key
    it sets is a setting, at the default it documents."""
    import tomllib

    from pipeline.settings import Settings

    example = Path(__file__).parents[1] / "config" / "settings.example.toml"
    values = tomllib.loads(example.read_text())
    assert set(values) <= set(Settings.model_fields), set(values) - set(Settings.model_fields)
    shutil.copy(example, tmp_path / "settings.toml")
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    for key in list(os.environ):
        if key.startswith("PIPELINE_") and key != "PIPELINE_HOME":
            monkeypatch.delenv(key)
    read = Settings()
    for key, value in values.items():
        default = Settings.model_fields[key].get_default(call_default_factory=True)
        assert getattr(read, key) == value == default, key


def test_a_renamed_setting_is_still_read_by_its_former_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``reconcile_interval`` was ``monitor_interval``: a home's settings.toml or shell that
    still says so keeps its value, and the new name wins where both are given."""
    from pipeline.settings import Settings

    for key in list(os.environ):
        if key.startswith("PIPELINE_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    (tmp_path / "settings.toml").write_text("monitor_interval = 4.5\n")
    assert Settings().reconcile_interval == 4.5
    monkeypatch.setenv("PIPELINE_MONITOR_INTERVAL", "3")
    assert Settings().reconcile_interval == 3.0
    monkeypatch.setenv("PIPELINE_RECONCILE_INTERVAL", "2")
    assert Settings().reconcile_interval == 2.0
    monkeypatch.setenv("RECONCILE_INTERVAL", "7")  # unprefixed: not a setting
    assert Settings().reconcile_interval == 2.0
