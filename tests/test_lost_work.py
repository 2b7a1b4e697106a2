"""Lost work: a worker killed mid-subtask; the monitor reclaims its subtasks without a human."""

from __future__ import annotations

import os
import shutil
import signal

import numpy as np
import pytest
from PIL import Image

from config.sample.algorithms import CHANNEL_ORDER
from config.sample.images import pixels
from tests.conftest import make_cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]


@pytest.fixture
def two_workers(backend, request):
    postgres = request.getfixturevalue("postgres_server") if backend == "postgres" else None
    cluster = make_cluster(backend, postgres, PIPELINE_LEASE_SECONDS="3")
    try:
        cluster.start(workers=2)
        yield cluster
    finally:
        cluster.stop()
        shutil.rmtree(cluster.home, ignore_errors=True)


def test_worker_killed_mid_subtask_its_work_is_redone_elsewhere(two_workers) -> None:
    cluster = two_workers
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=3")
    instance = cluster.submit("--end-node", "permuter")

    def running_on_worker1() -> list[tuple[int, int]]:
        return [
            (task["id"], s["index"])
            for task in cluster.tasks(instance)
            for s in cluster.json("subtasks", task["id"])
            if s["state"] == "RUNNING" and s["worker_host"].startswith("worker1@")
        ]

    victims = wait_for(running_on_worker1, what="a subtask running on worker1")
    worker1 = next(row for row in cluster.json("cluster", "status") if row["name"] == "worker1")
    os.killpg(worker1["pid"], signal.SIGKILL)  # the whole worker: parent and pool processes

    result = cluster.wait(instance, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not next(r for r in cluster.json("cluster", "status") if r["name"] == "worker1")["alive"]
    for task_id, index in victims:
        subtask = cluster.json("subtasks", task_id)[index]
        assert subtask["state"] == "COMPLETE" and subtask["attempts"] == 2
        assert subtask["worker_host"].startswith("worker2@")
        history = [e["message"] for e in cluster.json("task", task_id)["history"]]
        assert f"subtask {index}: worker lost, dispatched again" in history

    alerts = cluster.json("alerts")
    lost = [a for a in alerts if "lost, dispatched again" in a["message"]]
    assert {(a["task_id"], a["severity"]) for a in lost} == {(t, "warning") for t, _ in victims}
    assert all(a["instance_id"] == instance and "worker1@" in a["message"] for a in lost)
    for alert in alerts:
        cluster.cli("alerts", "ack", alert["id"])
    assert cluster.json("alerts") == []
    assert all(a["acknowledged"] for a in cluster.json("alerts", "--all"))
    again = cluster.cli("alerts", "ack", alerts[0]["id"], check=False)
    assert again.returncode == 1 and "already acknowledged" in again.stderr
    for set_number, unit in ((1, "set-1"), (2, "set-2")):
        stored = sorted((cluster.datastore / unit / "L1").iterdir())
        assert [p.name for p in stored] == [f"nasa-logo-file-{i}-perm.png" for i in range(4)]
        for image, path in enumerate(stored):
            with Image.open(path) as png:
                expected = pixels(set_number, image)[..., CHANNEL_ORDER]
                np.testing.assert_array_equal(np.asarray(png), expected)


def test_broker_losing_its_queue_is_recovered_by_the_monitor(two_workers, monkeypatch) -> None:
    """Every queued message vanishes (a broker restarted without persistence); beat's monitor
    finds the quiet tasks and dispatches their lost subtasks again, no operator involved."""
    import redis

    from pipeline import services

    cluster = two_workers
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=2")
    instance = cluster.submit("--end-node", "permuter")
    cluster.activate(monkeypatch)

    def queued() -> int:
        tasks = services.list_tasks(instance)
        if not all(t["p_state"] in ("ALGORITHM_QUEUED", "ALGORITHM_EXECUTING") for t in tasks):
            return 0
        return [s["state"] for t in tasks for s in services.list_subtasks(t["id"])].count("QUEUED")

    wait_for(lambda: queued() >= 2, what="subtasks waiting on the broker")
    url = next(r for r in cluster.json("cluster", "status") if r["name"] == "redis")["url"]
    broker = redis.Redis.from_url(url)
    assert sum(broker.delete(key) for key in broker.keys("default*"))

    assert cluster.wait(instance, timeout=120).returncode == 0
    for task in cluster.tasks(instance):
        assert [s["attempts"] for s in cluster.json("subtasks", task["id"])] == [1, 1, 1, 1]
    histories = [e["message"] for t in (1, 2) for e in cluster.json("task", t)["history"]]
    assert any(m.startswith("monitor, ") and not m.endswith(" 0 lost") for m in histories)
    assert any("messages lost (monitor)" in a["message"] for a in cluster.json("alerts"))
    assert len(list(cluster.datastore.glob("set-*/L1/*-perm.png"))) == 8


def test_task_shows_running_subtasks_with_heartbeat(two_workers) -> None:
    cluster = two_workers
    cluster.cli("params", "set", "algorithm", "execution_pause_seconds=3")
    instance = cluster.submit("--end-node", "permuter")
    running = wait_for(
        lambda: next((d for t in (1, 2) if (d := cluster.json("task", t))["running"]), None),
        what="a task with a running subtask",
    )
    subtask = running["running"][0]
    assert subtask["worker_host"].startswith("worker") and subtask["worker_pid"] > 0
    assert subtask["heartbeat_at"] >= subtask["started_at"]
    table = cluster.cli("task", running["id"]).stdout
    assert "running subtasks" in table and "last heartbeat" in table
    assert cluster.wait(instance).returncode == 0
