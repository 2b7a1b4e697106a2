"""Services that come back by themselves: ``cluster start`` runs a supervisor that starts
again any service of the home that dies, with back-off when it keeps dying, each episode an
alert cleared once the service runs again; the supervisor killed is started again by beat
or a worker of the home, an alert too, and ``cluster start`` adopts what still runs rather
than start it twice; a worker that dies where nothing supervises it is an alert of its own
("worker W silent since T"), and one stopped cleanly is none.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from typing import Any

import pytest

from pipeline.deploy.cluster import alive
from tests.support import (
    Cluster,
    children_of,
    home_processes,
    session_leaders,
    started_cluster,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("supervision")]


def alerts_of(cluster: Cluster, fragment: str) -> list[dict[str, Any]]:
    return [a for a in cluster.json("alerts") if fragment in a["message"]]


def restarted(cluster: Cluster, name: str, old: int) -> int | None:
    row = cluster.process(name)
    return row["pid"] if row["alive"] and row["pid"] != old else None


def next_tries(cluster: Cluster) -> list[int]:
    """The seconds the supervisor said it waits before each next try of flower."""
    log = (cluster.home / "logs" / "supervisor.log").read_text()
    return [int(w) for w in re.findall(r"flower \(pid \d+\) .*; next try in (\d+) s", log)]


def bound(squatter: socket.socket, port: int) -> bool:
    try:
        squatter.bind(("127.0.0.1", port))
    except OSError:  # the killed one's socket is not closed yet
        return False
    return True


def kill_and_see_it_back(cluster: Cluster, name: str) -> str:
    """Kill ``name`` with its children; it runs again under a new pid, and a warning says
    which died and which runs now. That alert's message."""
    old = cluster.pid(name)
    cluster.kill(name)
    new = wait_for(lambda: restarted(cluster, name, old), what=f"{name} to come back")
    said = f"{name} (pid {old}) died: started again as pid {new}"
    alert = wait_for(lambda: alerts_of(cluster, said), what=f"the alert of {name}'s restart")
    assert alert[0]["severity"] == "warning"
    return said


def test_each_service_killed_is_started_again_and_alerted() -> None:
    """Every process ``cluster start`` runs, killed with all its children, is running again
    with a new pid, each death one warning that names it and its new pid, cleared once it
    has run ``stale_after`` seconds; the cluster then runs an instance to COMPLETED."""
    with started_cluster() as cluster:
        names = ["worker1", "beat", "operations", "api", "flower", "redis"]
        said = [kill_and_see_it_back(cluster, name) for name in names]
        wait_for(
            lambda: all(a["cleared_at"] for m in said for a in alerts_of(cluster, m)),
            what="the alerts to clear",
        )
        assert all(row["alive"] for row in cluster.json("cluster", "status"))
        cluster.wait(cluster.submit())


def test_a_killed_supervisor_is_started_again_and_alerted_and_supervises() -> None:
    """kill -9 of the supervisor: beat or a worker of the home sees it gone and starts it
    again, a warning that says so (cleared once it has run ``stale_after`` seconds); the new
    supervisor adopts the services still running (one of each) and starts again the next
    one that dies; ``cluster stop`` then leaves nothing of the home running."""
    with started_cluster(PIPELINE_CLUSTER_SERVICES="") as cluster:
        old = cluster.pid("supervisor")
        cluster.kill("supervisor")
        new = wait_for(
            lambda: restarted(cluster, "supervisor", old), what="the supervisor to come back"
        )
        said = wait_for(
            lambda: alerts_of(cluster, f"supervisor (pid {old}) died: started again as pid {new}"),
            what="the alert of the supervisor's death",
        )
        assert said[0]["severity"] == "warning"
        assert " by beat" in said[0]["message"] or " by worker" in said[0]["message"]
        kill_and_see_it_back(cluster, "beat")
        wait_for(lambda: said_cleared(cluster, old), what="the supervisor's alert to clear")
        assert sorted(leader_names(cluster)) == ["beat", "redis", "supervisor", "worker1"]
        cluster.stop()
        assert home_processes(cluster.home) == {}, "no process of the home survives stop"


def said_cleared(cluster: Cluster, pid: int) -> bool:
    return all(a["cleared_at"] for a in alerts_of(cluster, f"supervisor (pid {pid}) died"))


def leader_names(cluster: Cluster) -> list[str]:
    """The service each of the home's session leaders is (one per process ``cluster start``
    or the supervisor started): two beats would show as two."""
    words = {
        "beat.log": "beat",
        "redis-server": "redis",
        "pipeline.deploy.supervisor": "supervisor",
        "worker1.log": "worker1",
        "worker2.log": "worker2",
    }
    return [
        next(name for word, name in words.items() if word in cmdline)
        for cmdline in session_leaders(cluster.home)
    ]


def test_cluster_start_adopts_a_service_its_pid_file_lost() -> None:
    """The supervisor killed between starting beat again and recording its pid leaves beat
    running under a pid file that names a dead process: the supervisor started again, and
    ``cluster start`` after it, adopt the running beat instead of starting a second one;
    ``cluster start`` brings the workers asked for, and ``cluster stop`` stops everything."""
    with started_cluster(PIPELINE_CLUSTER_SERVICES="") as cluster:
        beat, supervisor = cluster.pid("beat"), cluster.pid("supervisor")
        gone = subprocess.run(["sh", "-c", "echo $$"], capture_output=True, text=True)
        record = cluster.home / "run" / "beat.pid"
        cluster.kill("supervisor")
        record.write_text(json.dumps({**json.loads(record.read_text()), "pid": int(gone.stdout)}))
        wait_for(lambda: restarted(cluster, "supervisor", supervisor), what="a new supervisor")
        wait_for(lambda: cluster.pid("beat") == beat, what="the running beat adopted")
        cluster.start(workers=2)
        assert sorted(leader_names(cluster)) == [
            *("beat", "redis", "supervisor", "worker1", "worker2")
        ]
        assert cluster.pid("beat") == beat
        assert all(row["alive"] for row in cluster.json("cluster", "status"))
        assert not alerts_of(cluster, "beat (pid"), "an adopted service is no death"
        cluster.stop()
        assert home_processes(cluster.home) == {}


def test_a_service_that_keeps_dying_is_tried_with_back_off_then_comes_back() -> None:
    """Flower's port is taken while it is down: each try exits at once, the next waits 1,
    2, 4 ... seconds, and the alert turns an error that says so; once the port is free it
    runs again and its alert is cleared."""
    with started_cluster(PIPELINE_CLUSTER_SERVICES="flower") as cluster:
        port = int(cluster.json("cluster", "credentials")["flower_url"].rsplit(":", 1)[1])
        old = cluster.pid("flower")
        with socket.socket() as squatter:
            squatter.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            cluster.kill("flower")
            wait_for(lambda: bound(squatter, port), what="flower's port, free")
            squatter.listen()
            looping = wait_for(
                lambda: [
                    a for a in alerts_of(cluster, "flower keeps dying") if not a["cleared_at"]
                ],
                timeout=90,
                what="the error of a service that keeps dying",
            )
            assert looping[0]["severity"] == "error"
            assert "exited with status" in looping[0]["message"]
            wait_for(lambda: len(next_tries(cluster)) >= 4, timeout=60, what="a fourth try")
        assert next_tries(cluster)[:4] == [0, 1, 2, 4]
        wait_for(lambda: restarted(cluster, "flower", old), timeout=90, what="flower to run again")
        wait_for(
            lambda: all(a["cleared_at"] for a in alerts_of(cluster, "flower keeps dying")),
            timeout=60,
            what="the alert to clear",
        )


def test_without_a_supervisor_a_dead_worker_is_an_alert_and_a_stopped_one_is_not() -> None:
    """``supervise = false`` (a home whose services something else runs): no supervisor
    starts; a worker killed stays dead and the reconciler says so by its name, an alert
    cleared when it runs again; workers stopped by ``cluster stop`` raise nothing."""
    with started_cluster(PIPELINE_SUPERVISE="false", PIPELINE_CLUSTER_SERVICES="") as cluster:
        assert "supervisor" not in {row["name"] for row in cluster.json("cluster", "status")}
        worker = cluster.pid("worker1")
        cluster.kill("worker1")
        silent = wait_for(
            lambda: alerts_of(cluster, "worker worker1@"), what="the alert of a silent worker"
        )
        assert "silent since" in silent[0]["message"] and silent[0]["severity"] == "error"
        assert not alive(worker, ())
        assert not cluster.process("worker1")["alive"], "nothing started it again"
        [gone] = cluster.json("workers")
        assert (gone["state"], gone["queues"], gone["concurrency"]) == ("silent", None, None)
        cluster.start()
        back = wait_for(
            lambda: [w for w in cluster.json("workers") if w["state"] == "up" and w["queues"]],
            what="pipeline workers to list worker1 up again",
        )
        assert back[0]["name"].startswith("worker1@")
        assert (back[0]["queues"], back[0]["concurrency"]) == (["default"], 2)
        wait_for(
            lambda: all(a["cleared_at"] for a in alerts_of(cluster, "worker worker1@")),
            what="the alert to clear once the worker beats again",
        )
        cluster.stop()
        cluster.start()
        cluster.wait(cluster.submit())
        assert len(alerts_of(cluster, "worker worker1@")) == 1, "a clean stop is no alert"


def test_a_pool_process_killed_is_an_alert_and_the_work_completes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Celery replaces a killed pool process without a word; the worker says it."""
    with started_cluster(PIPELINE_CLUSTER_SERVICES="") as cluster:
        worker = cluster.pid("worker1")
        pool = wait_for(lambda: len(children_of(worker)) >= 2 and children_of(worker))
        os.kill(pool[0], signal.SIGKILL)
        said = wait_for(
            lambda: alerts_of(cluster, "pool process(es) died"), what="the pool's alert"
        )
        assert f"last pid {pool[0]}" in said[0]["message"]
        assert said[0]["message"].startswith("worker worker1@")
        assert cluster.pid("worker1") == worker, "the worker itself lives on"
        cluster.wait(cluster.submit())
