"""Stale, duplicate and foreign messages reaching a real worker change nothing. (The same
stage calls made in this process are in ``test_stages.py``.) The cluster is shared with
the other modules of xdist group ``shared-cluster``."""

from __future__ import annotations

import pytest

from pipeline.domain.lifecycle import Stage
from pipeline.messaging.broker import publish_now
from pipeline.messaging.celery_app import celery_app
from pipeline.messaging.messages import MARSHAL, stage_message
from tests.support import Cluster, snapshot, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("shared-cluster")]


@pytest.fixture
def cluster(shared_cluster: Cluster) -> Cluster:
    return shared_cluster


@pytest.fixture(scope="module")
def instance(shared_cluster: Cluster) -> int:
    """A COMPLETED instance of the permuter node."""
    shared_cluster.set_parameters(throw_exception_subtask_0=False, execution_pause_seconds=0)
    made = shared_cluster.submit("--end-node", "permuter")
    shared_cluster.wait(made)
    return made


@pytest.fixture
def completed(cluster: Cluster, instance: int, monkeypatch: pytest.MonkeyPatch) -> int:
    """The completed instance, with this process pointed at the cluster."""
    cluster.activate(monkeypatch)
    return instance


def worker_log(cluster: Cluster) -> str:
    return (cluster.home / "logs" / "worker1.log").read_text()


def test_duplicate_messages_through_a_real_worker_change_nothing(
    cluster: Cluster, completed: int
) -> None:
    task = cluster.tasks(completed)[0]
    before = snapshot(completed)
    stale = worker_log(cluster).count(f"stale message for task {task['id']} ")
    publish_now(
        [
            stage_message(stage, task["id"], 1, task["execution"]["queue"])
            for stage in (Stage.MARSHAL, Stage.EXECUTE, Stage.STORE)
        ]
    )
    wait_for(
        lambda: worker_log(cluster).count(f"stale message for task {task['id']} ") >= stale + 3,
        what="the worker to refuse the duplicate marshal, execute and store",
    )
    assert snapshot(completed) == before


def test_a_pickled_message_is_refused(cluster: Cluster, completed: int) -> None:
    task = cluster.tasks(completed)[0]
    before = snapshot(completed)
    celery_app().send_task(MARSHAL, args=[task["id"], 1], serializer="pickle", queue="default")
    wait_for(
        lambda: "untrusted content of type pickle" in worker_log(cluster),
        what="the worker to refuse a pickled message",
    )
    assert snapshot(completed) == before
    refused = wait_for(
        lambda: [a for a in cluster.json("alerts") if "untrusted message" in a["message"]],
        what="the alert of a refused message",
    )
    assert "refused 1 untrusted message(s)" in refused[0]["message"]
    assert "1 application/x-python-serialize on queue default" in refused[0]["message"]
    celery_app().send_task(MARSHAL, args=[task["id"], 1], serializer="pickle", queue="default")
    wait_for(
        lambda: any(
            "refused 2 untrusted" in a["message"] and a["id"] == refused[0]["id"]
            for a in cluster.json("alerts")
        ),
        what="the same alert to count the second",
    )
    assert snapshot(completed) == before
