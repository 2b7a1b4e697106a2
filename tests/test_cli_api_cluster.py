"""The read commands of a started cluster whose HTTP API runs: the ``pipeline`` program reads
through the API (its access log shows each read) and prints what it prints reading the
database itself; with the API gone, or another setting in the shell, it reads in process.

The cluster is shared with the other modules of xdist group ``full-cluster``; the tests
run in file order.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support import STOPPED_WITH_ERRORS, Cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("full-cluster")]

#: An environment variable that changes no setting the reads use, but makes this shell's
#: settings another than the API's: the CLI reads in process.
OTHER_SETTINGS = {"PIPELINE_WORKERS": "1"}


def api_reads(cluster: Cluster, path: str) -> int:
    """Reads of ``path`` in the access log of the cluster's API."""
    log = cluster.home / "logs" / "api.out"
    return log.read_text(errors="replace").count(f'"GET /api/v1{path} HTTP')


def run(cluster: Cluster, *args: Any, **env: str) -> tuple[int, str, str]:
    """``pipeline ARGS`` in the cluster's shell (with ``env`` added): status and output."""
    saved = cluster.env
    cluster.env = {**saved, **env}
    try:
        result = cluster.cli(*args, check=False)
    finally:
        cluster.env = saved
    return result.returncode, result.stdout, result.stderr


@pytest.fixture(scope="module")
def failed(full_cluster: Cluster) -> dict[str, Any]:
    """An instance of the sample's permuter whose subtask 0 failed, and one of its tasks."""
    full_cluster.set_parameters(throw_exception_subtask_0=True, execution_pause_seconds=0)
    try:
        instance = full_cluster.submit("--end-node", "permuter")
        full_cluster.wait(instance, expect=STOPPED_WITH_ERRORS)
    finally:
        full_cluster.set_parameters(throw_exception_subtask_0=False)
    task = full_cluster.tasks(instance)[0]["id"]
    return {"instance": instance, "task": task}


def test_the_reads_go_through_the_api_and_print_what_the_database_gives(
    full_cluster: Cluster, failed: dict[str, Any]
) -> None:
    instance, task = failed["instance"], failed["task"]
    reads = [
        (["instances"], "/instances"),
        (["instances", "--json", "--limit", "1"], "/instances"),
        (["tasks", instance], f"/instances/{instance}/tasks"),
        (["tasks", instance, "--json"], f"/instances/{instance}/tasks"),
        (["subtasks", task, "--limit", "2"], f"/tasks/{task}/subtasks"),
        (["subtasks", task, "--json"], f"/tasks/{task}/subtasks"),
        (["task", task], f"/tasks/{task}"),
        (["task", task, "--json"], f"/tasks/{task}"),
        (["task", 999_999], "/tasks/999999"),
    ]
    for args, path in reads:
        before = api_reads(full_cluster, path)
        through_api = run(full_cluster, *args)
        wait_for(
            lambda path=path, before=before: api_reads(full_cluster, path) > before,
            timeout=30,
            what=f"the API to log pipeline {' '.join(map(str, args))}",
        )
        assert through_api == run(full_cluster, *args, **OTHER_SETTINGS), args
    assert through_api == (1, "", "error: unknown task 999999\n")
    assert (
        "showing 2 of 4 subtasks (--all for every one)"
        in run(full_cluster, "subtasks", task, "--limit", 2)[1]
    )


def test_a_read_through_the_api_loads_no_database_library(
    full_cluster: Cluster, failed: dict[str, Any]
) -> None:
    """What keeps a read within 0.35 s: through the API, the program imports neither
    SQLAlchemy nor the settings (pydantic) nor the facade, and for ``--json`` not Rich."""
    instance = failed["instance"]
    path = f"/instances/{instance}/tasks"
    before = api_reads(full_cluster, path)
    result = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", "tasks", str(instance), "--json"],
        env=full_cluster.env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    wait_for(lambda: api_reads(full_cluster, path) > before, timeout=30, what="the API's answer")
    imported = {
        line.rsplit("|", 1)[1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert "pipeline.interfaces.client" in imported, "read through the HTTP client"
    heavy = {"sqlalchemy", "pydantic", "pipeline.settings", "pipeline.operations.facade", "rich"}
    assert heavy & imported == set()
    assert json.loads(result.stdout) == full_cluster.json("tasks", instance)


def test_a_run_file_left_by_an_api_that_died_is_passed_over(
    full_cluster: Cluster, failed: dict[str, Any], tmp_path: Path
) -> None:
    """The API killed (SIGKILL: its run file stays): reads are read in process, at once,
    and the same; ``cluster start`` starts the API again, and reads go through it."""
    instance = failed["instance"]
    expected = run(full_cluster, "tasks", instance, **OTHER_SETTINGS)
    run_file = full_cluster.home / "run" / "api.json"
    full_cluster.kill("api")
    assert run_file.exists(), "left behind"
    assert run(full_cluster, "tasks", instance) == expected

    full_cluster.start()
    wait_for(lambda: json.loads(run_file.read_text())["pid"] == full_cluster.pid("api"),
             what="the new API to name itself")  # fmt: skip
    before = api_reads(full_cluster, f"/instances/{instance}/tasks")
    assert run(full_cluster, "tasks", instance) == expected
    wait_for(lambda: api_reads(full_cluster, f"/instances/{instance}/tasks") > before,
             what="the new API to answer")  # fmt: skip


def test_cluster_stop_removes_the_run_file(full_cluster: Cluster) -> None:
    """Stopped by `cluster stop` (SIGTERM), the API removes its run file (and the cluster
    is started again for the modules after this one)."""
    run_file = full_cluster.home / "run" / "api.json"
    assert run_file.exists()
    full_cluster.stop()
    try:
        assert not run_file.exists()
    finally:
        full_cluster.start()
