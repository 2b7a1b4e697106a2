"""`pipeline cluster`: start only what is missing, stop only what it started, side by side homes."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import pytest

from tests.conftest import wait_for


def by_name(cluster) -> dict[str, dict]:
    return {row["name"]: row for row in cluster.json("cluster", "status")}


@pytest.mark.e2e
def test_start_status_restart_missing_and_stop(new_cluster) -> None:
    cluster = new_cluster()
    cluster.start(workers=2)
    status = by_name(cluster)
    assert set(status) == {"redis", "worker1", "worker2", "beat", "operations", "api", "flower"}
    assert all(row["alive"] and row["pid"] for row in status.values())
    assert status["redis"]["url"].startswith("redis://127.0.0.1:")
    credentials = cluster.json("cluster", "credentials")
    assert status["api"]["url"] == credentials["api_url"]
    assert status["flower"]["url"] == credentials["flower_url"]
    assert all(set(row) >= {"name", "pid", "alive", "url"} for row in status.values())

    cluster.start(workers=2)
    assert by_name(cluster) == status, "a second start starts nothing"

    os.kill(status["worker2"]["pid"], signal.SIGKILL)
    wait_for(lambda: not by_name(cluster)["worker2"]["alive"], what="status to see worker2 dead")
    cluster.start(workers=2)
    again = by_name(cluster)
    assert again["worker2"]["alive"] and again["worker2"]["pid"] != status["worker2"]["pid"]
    others = ("redis", "worker1", "beat", "operations", "api", "flower")
    assert {n: again[n]["pid"] for n in others} == {n: status[n]["pid"] for n in others}

    # A pid file naming a process the cluster did not start (a recycled pid) is not signalled.
    stranger = subprocess.Popen(["sleep", "300"])
    try:
        (cluster.home / "run" / "worker3.pid").write_text(
            json.dumps({"pid": stranger.pid, "match": [str(cluster.home / "logs" / "worker3.log")]})
        )
        cluster.cli("cluster", "stop")
        assert stranger.poll() is None, "an unrelated process was killed"
    finally:
        stranger.kill()
        stranger.wait()
    assert not any(row["alive"] for row in by_name(cluster).values())
    for row in again.values():
        wait_for(
            lambda pid=row["pid"]: not os.path.exists(f"/proc/{pid}"), what="the process to go"
        )


@pytest.mark.e2e
def test_two_homes_side_by_side(new_cluster) -> None:
    first, second = new_cluster(), new_cluster()
    first.start()
    second.start()
    for service in ("redis", "api"):
        urls = {by_name(c)[service]["url"] for c in (first, second)}
        assert len(urls) == 2, f"each home has its own {service} port"
    instances = [c.submit() for c in (first, second)]
    for cluster, instance in zip((first, second), instances, strict=True):
        assert cluster.wait(instance).returncode == 0
        assert {t["state"] for t in cluster.tasks(instance)} == {"COMPLETE"}
        assert len(list(cluster.datastore.glob("set-*/L3/averaged-image.png"))) == 2
