"""`pipeline cluster`: start only what is missing, stop only what it started, homes side by
side. One home serves the module, its tests in order."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator

import pytest

from tests.support import Cluster, make_cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("cluster")]


def by_name(cluster: Cluster) -> dict[str, dict]:
    return {row["name"]: row for row in cluster.json("cluster", "status")}


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """An initialised home; the tests start and stop it."""
    made = make_cluster("sqlite", None)
    try:
        yield made
    finally:
        made.stop()
        shutil.rmtree(made.home, ignore_errors=True)


def test_start_starts_what_is_missing(cluster: Cluster) -> None:
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


def test_two_homes_side_by_side(cluster: Cluster, new_cluster: Callable[..., Cluster]) -> None:
    second = new_cluster(PIPELINE_CLUSTER_SERVICES="")  # Redis, a worker and beat
    second.start()
    assert {row["name"] for row in second.json("cluster", "status")} == {
        "redis",
        "worker1",
        "beat",
    }
    assert len({by_name(c)["redis"]["url"] for c in (cluster, second)}) == 2
    for url in ("api_url", "flower_url"):
        chosen = {c.json("cluster", "credentials")[url] for c in (cluster, second)}
        assert len(chosen) == 2, f"each home has its own {url} port"
    # The second home runs an instance with its own broker, database and datastore while
    # the first runs on (which runs instances in the other tests).
    instance = second.submit("--end-node", "permuter")
    second.wait(instance)
    assert {t["state"] for t in second.tasks(instance)} == {"COMPLETE"}
    assert len(list(second.datastore.glob("set-*/L1/*-perm.png"))) == 8
    assert cluster.json("instances") == [], "nothing reached the first home"
    assert all(row["alive"] for row in by_name(cluster).values())


def test_stop_stops_only_what_start_started(cluster: Cluster) -> None:
    started = by_name(cluster)
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
    for row in started.values():
        wait_for(
            lambda pid=row["pid"]: not os.path.exists(f"/proc/{pid}"), what="the process to go"
        )
