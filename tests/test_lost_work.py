"""Lost work: processes die mid-run (workers, Redis, PostgreSQL, beat, a marshal) and the
instance still completes without a human, each output stored exactly once and right."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
import redis
import yaml
from PIL import Image
from sqlalchemy import select
from typer.testing import CliRunner

from config.sample.algorithms import CHANNEL_ORDER
from config.sample.images import pixels
from pipeline import cli, services
from pipeline.database import transaction
from pipeline.models import Subtask, utcnow
from pipeline.states import SubtaskState
from tests.conftest import Cluster, make_cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.chaos]

#: The lease of the chaos clusters: a subtask whose worker is silent 3 s is lost.
LEASE_SECONDS = 3
#: A subtask running for less than this is far from its end (the runs pause 3-4 s).
JUST_STARTED = 2.0


@pytest.fixture
def chaos_cluster(backend, request, monkeypatch):
    """A factory of started clusters with short leases, stopped and removed afterwards;
    this test process reads the newest one's database directly (see ``just_started``)."""
    postgres = request.getfixturevalue("postgres_server") if backend == "postgres" else None
    made: list[Cluster] = []

    def start(workers: int) -> Cluster:
        made.append(make_cluster(backend, postgres, PIPELINE_LEASE_SECONDS=str(LEASE_SECONDS)))
        made[-1].start(workers=workers)
        made[-1].activate(monkeypatch)
        return made[-1]

    yield start
    for cluster in made:
        cluster.stop()
        shutil.rmtree(cluster.home, ignore_errors=True)


@pytest.fixture
def two_workers(chaos_cluster) -> Cluster:
    return chaos_cluster(2)


def permuter_run(cluster: Cluster, pause: int) -> int:
    """Submit the sample's permuter node alone (2 tasks of 4 subtasks), each subtask
    taking ``pause`` seconds, so there is time to break things while it runs."""
    cluster.cli("params", "set", "algorithm", f"execution_pause_seconds={pause}")
    return cluster.submit("--end-node", "permuter")


def just_started(
    worker: Callable[[Subtask], bool] = lambda _: True, within: float = JUST_STARTED
) -> list[dict]:
    """Subtasks running for less than ``within`` seconds (on ``worker``), newest first:
    killed now, they are surely killed mid-run, not after they finished."""
    since = utcnow() - timedelta(seconds=within)
    with transaction() as session:
        found = session.scalars(
            select(Subtask)
            .where(Subtask.state == SubtaskState.RUNNING, Subtask.started_at > since)
            .order_by(Subtask.started_at.desc())
        )
        return [
            {
                "task_id": s.task_id,
                "index": s.index,
                "attempts": s.attempts,
                "worker_host": s.worker_host,
            }
            for s in found
            if worker(s)
        ]


def assert_completed_exactly_once(cluster: Cluster, instance: int) -> None:
    """COMPLETED, every count right, and each permuted image stored once with its pixels."""
    result = cluster.wait(instance, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    tasks = cluster.tasks(instance)
    assert [(t["p_state"], t["error"]) for t in tasks] == [("COMPLETE", False)] * 2
    assert all(
        (t["total_subtasks"], t["completed_subtasks"], t["failed_subtasks"]) == (4, 4, 0)
        for t in tasks
    )
    for task in tasks:
        assert [s["state"] for s in cluster.json("subtasks", task["id"])] == ["COMPLETE"] * 4
    for set_number, unit in ((1, "set-1"), (2, "set-2")):
        stored = sorted((cluster.datastore / unit / "L1").iterdir())
        assert [p.name for p in stored] == [f"nasa-logo-file-{i}-perm.png" for i in range(4)]
        for image, path in enumerate(stored):
            with Image.open(path) as png:
                expected = pixels(set_number, image)[..., CHANNEL_ORDER]
                np.testing.assert_array_equal(np.asarray(png), expected)


def back_in_flight(cluster: Cluster, lost: dict, since: float) -> float:
    """Wait until a lost subtask is dispatched again (queued, or run by another worker
    process); returns the seconds it took."""
    task_id, index = lost["task_id"], lost["index"]

    def dispatched_again() -> bool:
        now = services.list_subtasks(task_id)[index]
        return now["state"] == "QUEUED" or now["attempts"] > lost["attempts"]

    wait_for(dispatched_again, what=f"subtask {task_id}/{index} dispatched again")
    detected = time.monotonic() - since
    print(f"lost subtask {task_id}/{index} back in flight after {detected:.1f} s")
    return detected


# -- a and b: workers killed -----------------------------------------------------------------


def test_worker_killed_mid_subtask_its_work_is_redone_elsewhere(two_workers) -> None:
    """b: the whole worker1 (parent and pool) is killed and never comes back."""
    cluster = two_workers
    worker1 = cluster.pid("worker1")
    instance = permuter_run(cluster, pause=3)
    lost = wait_for(
        lambda: just_started(lambda s: s.worker_host.startswith("worker1@")),
        what="a subtask running on worker1",
    )
    os.killpg(worker1, signal.SIGKILL)
    killed_at = time.monotonic()
    # Every subtask worker1 was running dies with it, not only the one just started.
    on_worker1 = just_started(lambda s: s.worker_host.startswith("worker1@"), within=3600)
    # What an operator sees until the lease lapses: the subtask, its worker and heartbeat.
    detail = services.get_task(lost[0]["task_id"])
    [shown] = [s for s in detail["running"] if s["index"] == lost[0]["index"]]
    assert shown["worker_host"].startswith("worker1@") and shown["worker_pid"] > 0
    assert shown["heartbeat_at"] >= shown["started_at"]
    table = CliRunner().invoke(cli.app, ["task", str(detail["id"])]).stdout
    assert "running subtasks" in table and "last heartbeat" in table and "worker1@" in table
    cluster.kill("worker1")
    back_in_flight(cluster, lost[0], since=killed_at)
    victims = [(s["task_id"], s["index"]) for s in on_worker1]

    assert_completed_exactly_once(cluster, instance)
    assert not cluster.process("worker1")["alive"]
    for task_id, index in victims:
        subtask = cluster.json("subtasks", task_id)[index]
        assert subtask["attempts"] == 2 and subtask["worker_host"].startswith("worker2@")
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


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError):
        return 0


def test_worker_killed_three_times_each_replacement_carries_on(chaos_cluster) -> None:
    """a: the only worker is killed mid-subtask three times in one run; each time a
    replacement is started (``cluster start`` starts what is not running)."""
    cluster = chaos_cluster(1)
    instance = permuter_run(cluster, pause=4)
    victims = []
    for _ in range(3):
        worker = cluster.pid("worker1")
        [victim, *_] = wait_for(
            lambda worker=worker: just_started(lambda s: _parent(s.worker_pid) == worker),
            what="a subtask running on the current worker",
        )
        cluster.kill("worker1")
        killed_at = time.monotonic()
        victims.append((victim["task_id"], victim["index"], victim["attempts"]))
        cluster.start(workers=1)
        back_in_flight(cluster, victim, since=killed_at)

    assert_completed_exactly_once(cluster, instance)
    for task_id, index, attempts in victims:
        assert cluster.json("subtasks", task_id)[index]["attempts"] > attempts
    lost = [a for a in cluster.json("alerts") if "lost, dispatched again" in a["message"]]
    assert len(lost) >= 3


# -- c: the broker loses every message -------------------------------------------------------


def queued_on_broker(broker: redis.Redis) -> int:
    """Subtask messages waiting in the broker's queue lists (one list per priority)."""
    return sum(broker.llen(key) for key in broker.keys("default*"))


def test_broker_restarted_without_its_queue_is_recovered_by_the_monitor(chaos_cluster) -> None:
    """c: redis-server is killed and started again with nothing persisted, so every queued
    message vanishes; beat's monitor dispatches the lost subtasks again, no operator
    involved, and each subtask still runs exactly once."""
    cluster = chaos_cluster(1)
    broker = redis.Redis.from_url(cluster.process("redis")["url"])
    instance = permuter_run(cluster, pause=2)
    wait_for(lambda: queued_on_broker(broker) >= 2, what="subtasks waiting on the broker")
    cluster.kill("redis")
    shutil.rmtree(cluster.home / "redis")  # nothing persisted: the queues are gone
    cluster.start(workers=1)

    assert_completed_exactly_once(cluster, instance)
    for task in cluster.tasks(instance):
        assert [s["attempts"] for s in cluster.json("subtasks", task["id"])] == [1, 1, 1, 1]
    histories = [e["message"] for t in (1, 2) for e in cluster.json("task", t)["history"]]
    assert any(m.startswith("monitor, ") and not m.endswith(" 0 lost") for m in histories)
    assert any("messages lost (monitor)" in a["message"] for a in cluster.json("alerts"))


# -- d: the database restarts ----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["postgres"])
def test_postgres_restarted_mid_run(two_workers, postgres_server) -> None:
    """d: PostgreSQL stops and starts again while subtasks run and record their outcomes;
    workers and beat reconnect and the run finishes."""
    cluster = two_workers
    instance = permuter_run(cluster, pause=2)
    wait_for(lambda: len(just_started()) >= 2, what="two subtasks running")
    postgres_server.restart()

    assert_completed_exactly_once(cluster, instance)
    assert cluster.process("worker1")["alive"] and cluster.process("worker2")["alive"]


# -- e: beat dies ----------------------------------------------------------------------------


def test_beat_killed_and_started_again_recovers_what_was_lost_meanwhile(chaos_cluster) -> None:
    """e: beat is killed; while it is down the broker loses the queued messages; a new
    beat (``cluster start``) finds the quiet tasks and dispatches their work again."""
    cluster = chaos_cluster(1)
    old_beat = cluster.pid("beat")
    cluster.kill("beat")
    broker = redis.Redis.from_url(cluster.process("redis")["url"])
    instance = permuter_run(cluster, pause=2)
    wait_for(lambda: queued_on_broker(broker) >= 2, what="subtasks waiting on the broker")
    assert sum(broker.delete(key) for key in broker.keys("default*"))
    cluster.start(workers=1)
    assert cluster.pid("beat") != old_beat

    assert_completed_exactly_once(cluster, instance)
    for task in cluster.tasks(instance):
        assert [s["attempts"] for s in cluster.json("subtasks", task["id"])] == [1, 1, 1, 1]
    assert any("messages lost (monitor)" in a["message"] for a in cluster.json("alerts"))


# -- a marshal whose worker dies -------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_marshal_killed_mid_step_is_marshaled_again(chaos_cluster) -> None:
    """A worker dies while marshaling: the task sits in MARSHALING with nothing moving it.
    Its step lease lapses, and the monitor marshals it again under a new attempt."""
    cluster = chaos_cluster(1)
    cluster.kill("worker1")  # the test's own process plays the worker that will die
    instance = permuter_run(cluster, pause=0)
    task = cluster.tasks(instance)[0]
    hanging = (
        "import sys, time\n"
        "from pipeline import engine, marshal\n"
        "marshal.marshal = lambda *args: time.sleep(3600)\n"
        "engine.marshal(int(sys.argv[1]), 1)\n"
    )
    dying = subprocess.Popen([sys.executable, "-c", hanging, str(task["id"])], env=cluster.env)
    try:
        wait_for(
            lambda: cluster.json("task", task["id"])["p_state"] == "MARSHALING",
            what="the task claimed by the doomed marshal",
        )
    finally:
        dying.kill()
        dying.wait()
    cluster.start(workers=1)

    assert_completed_exactly_once(cluster, instance)
    detail = cluster.json("task", task["id"])
    assert detail["attempt"] == 2
    assert any("marshaling lost" in e["message"] for e in detail["history"])
    assert any("marshaling lost" in a["message"] for a in cluster.json("alerts"))


# -- a subtask that hangs --------------------------------------------------------------------


HANGING_PIPELINE = {
    "name": "hanging",
    "description": "Subtask 0 hangs past its timeout; the others finish.",
    "data_file_types": {
        "raw_image": {"location": "{dataset}/L0", "pattern": "*.png"},
        "seen": {"location": "{dataset}/seen", "pattern": "*-seen.txt"},
    },
    "nodes": [
        {
            "name": "sometimes_hangs",
            "algorithm": "tests.algorithms:hang_in_subtask_0",
            "inputs": ["raw_image"],
            "outputs": ["seen"],
            "execution": {"subtask_timeout": 2, "max_failed_subtasks": 1},
        }
    ],
}


@pytest.mark.parametrize("backend", ["sqlite"])
def test_hanging_subtask_fails_with_timeout_and_the_task_goes_on(chaos_cluster, tmp_path) -> None:
    cluster = chaos_cluster(1)
    definition = tmp_path / "hanging.yaml"
    definition.write_text(yaml.safe_dump(HANGING_PIPELINE))
    cluster.cli("definitions", "import", definition)
    instance = int(cluster.json("submit", "hanging")["id"])

    result = cluster.wait(instance, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    for task in cluster.tasks(instance):
        assert (task["p_state"], task["completed_subtasks"], task["failed_subtasks"]) == (
            "COMPLETE",
            3,
            1,
        )
        subtasks = cluster.json("subtasks", task["id"])
        assert subtasks[0]["state"] == "FAILED" and subtasks[0]["error"].startswith("timeout")
        assert [s["state"] for s in subtasks[1:]] == ["COMPLETE"] * 3
        seen = sorted(p.name for p in (cluster.datastore / task["unit_of_work"] / "seen").iterdir())
        assert seen == [f"nasa-logo-file-{i}-seen.txt" for i in (1, 2, 3)]


# -- two beats -------------------------------------------------------------------------------


@pytest.mark.parametrize("backend", ["sqlite"])
def test_two_monitors_at_once_only_one_reconciles(chaos_cluster) -> None:
    """A second beat started by mistake sends a second monitor each interval: the two runs
    meet at the lock, and one of them does nothing."""
    from pipeline import reconcile

    cluster = chaos_cluster(1)
    cluster.kill("beat")
    broker = redis.Redis.from_url(cluster.process("redis")["url"])
    wait_for(lambda: not broker.exists(reconcile.LOCK_KEY), what="the last monitor's lock")
    results: list[dict[str, int]] = []
    runs = [threading.Thread(target=lambda: results.append(reconcile.reconcile())) for _ in "ab"]
    for run in runs:
        run.start()
    for run in runs:
        run.join()
    assert sorted("skipped" in result for result in results) == [False, True]
