"""`pipeline cluster`: start only what is missing, stop only what it started, homes side by
side. One home serves the module, its tests in order."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import suppress
from typing import Any

import pytest

from tests.support import (
    Cluster,
    assert_one_line_error,
    free_port,
    home_processes,
    make_cluster,
    session_leaders,
    wait_for,
)

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
    assert set(status) == {
        *("redis", "supervisor", "worker1", "worker2", "beat", "operations", "api", "flower")
    }
    assert all(row["alive"] and row["pid"] for row in status.values())
    assert status["redis"]["url"].startswith("redis://:***@127.0.0.1:"), "password hidden"
    credentials = cluster.json("cluster", "credentials")
    assert status["api"]["url"] == credentials["api_url"]
    assert status["flower"]["url"] == credentials["flower_url"]
    assert all(set(row) >= {"name", "pid", "alive", "url"} for row in status.values())

    cluster.start(workers=2)
    assert by_name(cluster) == status, "a second start starts nothing"

    # A worker killed is started again by the supervisor (a start would otherwise: see
    # test_supervision.py), and a start then starts nothing more.
    os.kill(status["worker2"]["pid"], signal.SIGKILL)
    wait_for(
        lambda: by_name(cluster)["worker2"]["pid"] != status["worker2"]["pid"],
        what="worker2 started again",
    )
    cluster.start(workers=2)
    again = by_name(cluster)
    assert again["worker2"]["alive"] and again["worker2"]["pid"] != status["worker2"]["pid"]
    others = ("redis", "supervisor", "worker1", "beat", "operations", "api", "flower")
    assert {n: again[n]["pid"] for n in others} == {n: status[n]["pid"] for n in others}


def test_two_homes_side_by_side(cluster: Cluster, new_cluster: Callable[..., Cluster]) -> None:
    second = new_cluster(PIPELINE_CLUSTER_SERVICES="")  # Redis, a worker and beat
    second.start()
    assert {row["name"] for row in second.json("cluster", "status")} == {
        "redis",
        "supervisor",
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


#: The services of a default home's ``cluster start`` with one worker.
DEFAULT_SERVICES = 7


def test_two_starts_at_once_start_each_service_once(
    new_cluster: Callable[..., Cluster], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two operators (or two scripts) start the same home at the same moment. Both are
    held at their first look for a running service until the other arrives (or 2 s pass,
    when one of them waits on the home's lock): the second must then find everything
    running and start nothing, and stop must leave no process of the home behind."""
    from pipeline.deploy import cluster as deploy

    home = new_cluster()
    home.activate(monkeypatch)
    together = threading.Barrier(2, timeout=2)
    looked = threading.local()
    running_pid = deploy._running_pid

    def look_together(settings: Any, name: str) -> int | None:
        if not getattr(looked, "once", False):
            looked.once = True
            with suppress(threading.BrokenBarrierError):
                together.wait()
        return running_pid(settings, name)

    monkeypatch.setattr(deploy, "_running_pid", look_together)
    errors: list[BaseException] = []

    def start() -> None:
        try:
            deploy.start()
        except BaseException as exc:
            errors.append(exc)

    starts = [threading.Thread(target=start) for _ in range(2)]
    for thread in starts:
        thread.start()
    for thread in starts:
        thread.join(timeout=300)
    assert errors == []
    leaders = session_leaders(home.home)
    assert len(leaders) == DEFAULT_SERVICES, "\n".join(leaders)
    assert all(row["alive"] for row in by_name(home).values())

    home.cli("cluster", "stop")
    assert home_processes(home.home) == {}, "no process of the home survives stop"


def test_a_failed_start_stops_what_it_started(new_cluster: Callable[..., Cluster]) -> None:
    """The API's port is taken by someone else: the start fails with one line and leaves
    nothing of the home running (not Redis, not the workers it had started)."""
    home = new_cluster()
    api_port = int(home.json("cluster", "credentials")["api_url"].rsplit(":", 1)[1])
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", api_port))
        squatter.listen()
        result = home.cli("cluster", "start", check=False)
    assert_one_line_error(result, "api")
    assert home_processes(home.home) == {}
    assert not any(row["alive"] for row in by_name(home).values())


def test_a_start_with_an_unreachable_broker_starts_nothing(
    new_cluster: Callable[..., Cluster],
) -> None:
    """The broker is elsewhere and nobody answers there: the start says so within the
    broker's deadline, before starting anything."""
    closed = free_port()
    home = new_cluster(PIPELINE_BROKER_URL=f"redis://127.0.0.1:{closed}/0")
    result = home.cli("cluster", "start", check=False, timeout=60)
    assert_one_line_error(result, "broker", str(closed))
    assert home_processes(home.home) == {}
