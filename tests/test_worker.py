"""``pipeline worker``: started from settings alone, or stopped at once with one line."""

from __future__ import annotations

import os
import signal
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.support import (
    PIPELINE,
    Cluster,
    assert_one_line_error,
    clean_env,
    free_port,
    redis_server,
    wait_for,
)

pytestmark = pytest.mark.e2e


def worker(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [PIPELINE, "worker", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_without_a_broker_and_database_it_says_which_settings_are_missing() -> None:
    with tempfile.TemporaryDirectory() as home:
        result = worker(clean_env(PIPELINE_HOME=home))
    assert_one_line_error(
        result, "PIPELINE_BROKER_URL and PIPELINE_DATABASE_URL not set", "settings.toml"
    )


@pytest.mark.parametrize(
    ("setting", "value", "fragment"),
    [
        ("PIPELINE_BROKER_URL", "redis://:secret@127.0.0.1:{port}/0", "broker unreachable at"),
        (
            "PIPELINE_DATABASE_URL",
            "postgresql+psycopg://pipeline:secret@127.0.0.1:{port}/db",
            "database unreachable at",
        ),
        ("PIPELINE_DATASTORE_ROOT", "/nonexistent/datastore", "datastore /nonexistent/datastore"),
    ],
)
def test_an_unreachable_service_stops_it_with_one_line(
    new_cluster: Callable[..., Cluster], setting: str, value: str, fragment: str
) -> None:
    cluster = new_cluster()
    env = {**cluster.env, setting: value.format(port=free_port())}
    result = worker(env, "--queues", "default")
    assert_one_line_error(result, fragment)
    assert "secret" not in result.stderr


def test_a_bad_queue_name_is_refused(new_cluster: Callable[..., Cluster]) -> None:
    result = worker(new_cluster().env, "--queues", "good,not good")
    assert_one_line_error(result, "queue 'not good' is not a valid queue name")


def test_it_consumes_every_queue_the_definitions_name_by_default(
    new_cluster: Callable[..., Cluster], tmp_path: Path
) -> None:
    cluster = new_cluster()
    routed = tmp_path / "routed.yaml"
    routed.write_text(
        "name: routed\ndata_file_types:\n  raw: {location: '{set}/L0'}\nnodes:\n"
        "  - {name: one, algorithm: 'tests.algorithms:noop', inputs: [raw],"
        " execution: {queue: gpu}}\n"
    )
    cluster.cli("definitions", "import", routed)
    log = tmp_path / "extra-worker.log"
    with redis_server() as broker, log.open("w") as output:
        process = subprocess.Popen(
            [PIPELINE, "worker", "--hostname", "extra", "--concurrency", "1"],
            env={**cluster.env, "PIPELINE_BROKER_URL": broker},
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        _banner_lists_every_queue(log, process)


def _banner_lists_every_queue(log: Path, process: subprocess.Popen[bytes]) -> None:
    try:
        wait_for(lambda: "ready." in log.read_text() or process.poll() is not None, what="ready")
        banner = log.read_text()
        assert process.poll() is None, banner
        assert "worker@extra ready." in banner
        for queue in ("default", "gpu"):
            assert f".> {queue} " in banner, banner
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_the_worker_queues_setting_is_comma_separated(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.settings import Settings

    monkeypatch.setenv("PIPELINE_HOME", str(tmp_path))
    monkeypatch.setenv("PIPELINE_WORKER_QUEUES", "gpu, default")
    assert Settings().worker_queues == ["gpu", "default"]
