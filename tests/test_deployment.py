"""docker-compose.yml, checked without a Docker engine: it parses, it is the topology that
docs/deployment.md's "Running on several hosts" describes, and every long-running service
is watched."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from pipeline.settings import CELERY_APP, Settings
from tests.support import REPO

#: Services that run once and exit.
ONE_SHOT = {"init"}
#: The topology of docs/deployment.md: central services, and the scalable workers.
TOPOLOGY = {"redis", "postgres", "init", "worker", "beat", "api", "flower"}


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


def command(service: dict[str, Any]) -> str:
    given = service.get("command", "")
    return given if isinstance(given, str) else " ".join(given)


def test_it_has_the_topology_of_the_deployment_page(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) >= TOPOLOGY
    assert command(services["worker"]) == "pipeline worker"
    assert "container_name" not in services["worker"] and "ports" not in services["worker"]
    assert command(services["api"]) == "pipeline api"
    assert " beat " in command(services["beat"])
    page = (REPO / "docs" / "deployment.md").read_text()
    assert "## Running on several hosts" in page
    assert "docker compose up -d --build --scale worker=4" in page


def test_every_long_running_service_has_a_health_check_and_a_restart_policy(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", name
            continue
        assert service.get("healthcheck", {}).get("test"), f"{name} has no health check"
        assert service.get("restart") == "unless-stopped", f"{name} has no restart policy"


def test_every_pipeline_setting_it_sets_exists(compose: dict[str, Any]) -> None:
    """A misspelt PIPELINE_* variable would be ignored silently by the settings."""
    known = {f"PIPELINE_{name.upper()}" for name in Settings.model_fields}
    for name, service in compose["services"].items():
        for variable in service.get("environment", {}):
            if variable.startswith("PIPELINE_"):
                assert variable in known, f"{name}: unknown setting {variable}"


def test_the_shared_mounts_are_at_the_same_paths_in_every_pipeline_service(
    compose: dict[str, Any],
) -> None:
    for name in ("init", "worker", "beat", "api"):
        environment = compose["services"][name]["environment"]
        assert environment["PIPELINE_DATASTORE_ROOT"] == "/data/datastore", name
        assert environment["PIPELINE_TASK_ROOT"] == "/data/tasks", name
        mounts = compose["services"][name]["volumes"]
        assert any(m.endswith(":/data/datastore") for m in mounts), name


def test_its_celery_commands_name_the_workers_app(compose: dict[str, Any]) -> None:
    """Beat and the operations worker run ``celery -A`` on the app ``cluster start`` uses."""
    for name in ("beat", "operations"):
        assert f"celery -A {CELERY_APP} " in command(compose["services"][name]), name
    for name in ("worker", "operations"):
        probe = " ".join(compose["services"][name]["healthcheck"]["test"])
        assert f"celery -A {CELERY_APP} inspect ping" in probe, name


def test_the_image_holds_every_package_it_installs() -> None:
    """The Dockerfile copies each top-level package that pyproject.toml installs."""
    import tomllib

    packages = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    dockerfile = (REPO / "Dockerfile").read_text()
    for pattern in packages["packages"]["find"]["include"]:
        package = pattern.rstrip("*")
        assert f"COPY {package}/ {package}/" in dockerfile, package


def test_its_workers_would_accept_its_broker_and_database(
    compose: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pipeline worker`` refuses a broker or database on another host without a
    password: the containers reach theirs by name, with one."""
    from pipeline.deploy.worker_command import require_safe_network

    environment = compose["services"]["worker"]["environment"]
    for variable, value in environment.items():
        # ${NAME:-default} as compose fills it in with nothing set in the shell
        filled = re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", str(value))
        monkeypatch.setenv(variable, filled)
    require_safe_network(Settings())


def test_a_homes_ports_are_chosen_below_the_ephemeral_range() -> None:
    """A port chosen at `init` stays the home's: one in the kernel's ephemeral range could
    be taken as the local port of any outgoing connection before the service starts."""
    from pipeline.deploy import cluster

    first_ephemeral = cluster._first_ephemeral_port()
    chosen = {cluster.free_port() for _ in range(20)}
    assert all(cluster.LOWEST_CHOSEN_PORT <= port < first_ephemeral for port in chosen)
    assert len(chosen) > 1, "chosen at random, so two homes rarely meet"


def test_the_worker_hosts_systemd_unit_is_sound(tmp_path: Path) -> None:
    """The worker's unit of docs/deployment.md: its command is one `pipeline` accepts, it
    restarts the worker when it dies and stops it with Celery's warm shutdown; and, where
    systemd is installed, `systemd-analyze verify` finds nothing wrong with it."""
    settings = verified_unit("pipeline-worker.service", tmp_path)
    assert (settings["Restart"], settings["KillSignal"]) == ("on-failure", "SIGTERM")


def test_the_central_hosts_systemd_unit_is_sound(tmp_path: Path) -> None:
    """The cluster's unit: `cluster start` at start and reload (it starts only what is
    missing), `cluster stop` at stop, staying active once started; each command one that
    `pipeline` accepts, and the unit verified by systemd where it is installed."""
    settings = verified_unit("pipeline-cluster.service", tmp_path)
    assert (settings["Type"], settings["RemainAfterExit"]) == ("oneshot", "yes")
    assert settings["ExecStart"].endswith("pipeline cluster start")
    assert settings["ExecReload"] == settings["ExecStart"]
    assert settings["ExecStop"].endswith("pipeline cluster stop")


def verified_unit(name: str, tmp_path: Path) -> dict[str, str]:
    """The unit ``name`` as docs/deployment.md shows it, by setting, each ``Exec`` command
    one `pipeline` accepts; verified by `systemd-analyze` where systemd is installed."""
    import shlex
    import shutil
    import subprocess

    from tests.test_docs import cli_accepts

    page = (REPO / "docs" / "deployment.md").read_text()
    [unit] = re.findall(rf"```ini file={re.escape(name)}\n(.*?)```", page, re.S)
    settings = dict(
        line.split("=", 1) for line in unit.splitlines() if "=" in line and not line.startswith("#")
    )
    for key in ("ExecStart", "ExecReload", "ExecStop"):
        if key in settings:
            command = shlex.split(settings[key])
            assert command[0].endswith("/pipeline") and cli_accepts(command[1:]) is None, key
    if shutil.which("systemd-analyze") is None:
        return settings
    # The unit as a host would have it, its program and environment file made to exist.
    program = tmp_path / "pipeline"
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    (tmp_path / "worker.env").write_text("PIPELINE_HOME=/srv/pipeline\n")
    local = (
        unit.replace("/opt/pipeline/.venv/bin/pipeline", str(program))
        .replace("/etc/pipeline/worker.env", str(tmp_path / "worker.env"))
        .replace("User=pipeline\nGroup=pipeline\n", "")
    )
    path = tmp_path / name
    path.write_text(local)
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    problems = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if name in line and "not running as PID 1" not in line
    ]
    assert not problems, problems
    return settings
