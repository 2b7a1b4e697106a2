"""Lost work: the services die mid-run (Redis with its queues, PostgreSQL, beat) and the
instance still completes without an operator, each subtask run once and each output stored
once and right. Workers dying are in ``test_lost_work.py``.

On PostgreSQL, the production database; the module's tests share one cluster (one worker),
in order, each starting what the one before killed.
"""

from __future__ import annotations

import shutil

import pytest
import redis

from pipeline.operations import facade, queries
from tests.support import (
    Cluster,
    PostgresServer,
    assert_completed_exactly_once,
    instance_alerts,
    just_started,
    permuter_run,
    queued_on_broker,
    wait_for,
)

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.chaos,
    pytest.mark.postgres,
    pytest.mark.xdist_group("chaos-services"),
]


def reconciler_says(cluster: Cluster) -> tuple[bool, str]:
    """What the interfaces say of beat's reconciler (the cluster's API, not run here, says
    the same): running, and its line."""
    health = facade.reconciler_health()
    return health["running"], health["message"]


#: The workers of the module's chaos cluster (see the ``chaos`` fixture).
CHAOS_WORKERS = 1


# -- c: the broker loses every message -------------------------------------------------------


def test_broker_restarted_without_its_queue_is_recovered_by_the_reconciler(chaos: Cluster) -> None:
    """c: redis-server is killed and started again with nothing persisted, so every queued
    message vanishes; beat's reconciler dispatches the lost subtasks again, no operator
    involved, and each subtask still runs exactly once."""
    broker = redis.Redis.from_url(chaos.json("cluster", "credentials")["broker_url"])
    instance = permuter_run(chaos, pause=2)
    wait_for(lambda: queued_on_broker(broker) >= 2, what="subtasks waiting on the broker")
    chaos.kill("redis")
    shutil.rmtree(chaos.home / "redis")  # nothing persisted: the queues are gone
    chaos.start()

    assert_completed_exactly_once(chaos, instance)
    for task in queries.list_tasks(instance):
        assert [s["attempts"] for s in queries.list_subtasks(task["id"])] == [1, 1, 1, 1]
    histories = [
        e["message"]
        for t in queries.list_tasks(instance)
        for e in queries.get_task(t["id"])["history"]
    ]
    assert any(m.startswith("reconciler, ") and not m.endswith(" 0 lost") for m in histories)
    assert any(
        "messages lost (reconciler)" in a["message"] for a in instance_alerts(chaos, instance)
    )


# -- d: the database restarts ----------------------------------------------------------------


def test_postgres_restarted_mid_run(chaos: Cluster, postgres: PostgresServer) -> None:
    """d: PostgreSQL stops and starts again while subtasks run and record their outcomes;
    workers and beat reconnect and the run finishes."""
    instance = permuter_run(chaos, pause=2)
    wait_for(lambda: len(just_started()) >= 2, what="two subtasks running")
    postgres.restart()

    assert_completed_exactly_once(chaos, instance)
    assert chaos.process("worker1")["alive"] and chaos.process("beat")["alive"]


# -- e: beat dies ----------------------------------------------------------------------------


def test_beat_killed_and_started_again_recovers_what_was_lost_meanwhile(chaos: Cluster) -> None:
    """e: beat is killed; while it is down the broker loses the queued messages, and the
    cluster says that nothing recovers them (an alert, raised by a worker since this
    cluster runs no API; ``cluster status``; what the health route says); a new beat
    (``chaos start``) finds the quiet tasks and dispatches their work again."""
    old_beat = chaos.pid("beat")
    wait_for(lambda: reconciler_says(chaos)[0], what="the reconciler to have run")
    chaos.kill("beat")
    killed_at = facade.reconciler_health()["last_run"]
    broker = redis.Redis.from_url(chaos.json("cluster", "credentials")["broker_url"])
    instance = permuter_run(chaos, pause=2)
    wait_for(lambda: queued_on_broker(broker) >= 2, what="subtasks waiting on the broker")
    assert sum(broker.delete(key) for key in broker.keys("default*"))

    # (A machine loaded enough to hold a run past three intervals raises one before.)
    silent = wait_for(
        lambda: [
            a
            for a in chaos.json("alerts")
            if a["message"].startswith("reconciler not") and a["at"] >= killed_at
        ],
        what="the alert of a silent reconciler",
    )
    assert "is beat running?" in silent[-1]["message"]
    since = silent[-1]["message"].split("since ", 1)[1].split(": ", 1)[0]
    assert reconciler_says(chaos) == (False, silent[-1]["message"])
    assert f"reconciler not running since {since}" in chaos.cli("cluster", "status").stdout

    chaos.start()
    assert chaos.pid("beat") != old_beat
    wait_for(lambda: reconciler_says(chaos)[0], what="the reconciler to run again")

    assert_completed_exactly_once(chaos, instance)
    for task in queries.list_tasks(instance):
        assert [s["attempts"] for s in queries.list_subtasks(task["id"])] == [1, 1, 1, 1]
    assert any(
        "messages lost (reconciler)" in a["message"] for a in instance_alerts(chaos, instance)
    )
