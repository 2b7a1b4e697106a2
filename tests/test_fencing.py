"""Stale, duplicate and late messages change nothing; child tasks are created exactly once."""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import delete, func, select

from pipeline import dispatch, engine
from pipeline.algorithms import Outcome
from pipeline.database import transaction
from pipeline.models import InstanceNode, Subtask, Task, TaskEvent
from pipeline.transition import advance
from tests.conftest import wait_for


def snapshot(instance: int) -> list:
    """Everything a stale message could change: tasks, subtasks, history."""
    with transaction() as session:
        tasks = session.execute(
            select(
                Task.id,
                Task.p_state,
                Task.error,
                Task.attempt,
                Task.completed_subtasks,
                Task.failed_subtasks,
            )
            .where(Task.instance_id == instance)
            .order_by(Task.id)
        ).all()
        subtasks = session.execute(
            select(Subtask.id, Subtask.state, Subtask.attempts, Subtask.dispatch).order_by(
                Subtask.id
            )
        ).all()
        events = session.scalar(select(func.count(TaskEvent.id)))
    return [tasks, subtasks, events]


@pytest.fixture
def completed(cluster, monkeypatch) -> int:
    """A COMPLETED sample instance, with this test process pointed at its cluster."""
    instance = cluster.submit()
    assert cluster.wait(instance).returncode == 0
    cluster.activate(monkeypatch)
    return instance


@pytest.mark.e2e
def test_stale_and_duplicate_stage_calls_are_no_ops(cluster, completed) -> None:
    instance = completed
    [task] = [t for t in cluster.tasks(instance) if t["node"] == "permuter"][:1]
    outputs = {p: p.stat().st_mtime_ns for p in cluster.datastore.rglob("L1/*")}
    before = snapshot(instance)

    for attempt in (0, 1, 2):
        engine.marshal(task["id"], attempt)
        engine.execute(task["id"], attempt)
        assert engine.begin_subtask(task["id"], attempt, 0, 1) is None
        engine.finish_subtask(task["id"], attempt, 0, 1, Outcome(False, "late failure"))
        engine.monitor(task["id"], attempt)
        engine.store(task["id"], attempt)
    advance(instance)

    assert snapshot(instance) == before
    assert {p: p.stat().st_mtime_ns for p in cluster.datastore.rglob("L1/*")} == outputs


@pytest.mark.e2e
def test_duplicate_messages_through_a_real_worker(cluster, completed) -> None:
    instance = completed
    task = cluster.tasks(instance)[0]
    before = snapshot(instance)
    execution = task["execution"]
    dispatch.send(dispatch.SUBTASK, [task["id"], 1, 0, 1], execution)
    dispatch.send(dispatch.MARSHAL, [task["id"], 1], execution)
    dispatch.send(dispatch.STORE, [task["id"], 1], execution)
    log = cluster.home / "logs" / "worker1.log"
    wait_for(
        lambda: log.read_text().count(f"stale message for task {task['id']} ") >= 3,
        what="the worker to refuse the duplicate subtask, marshal and store",
    )
    assert snapshot(instance) == before


@pytest.mark.e2e
def test_pickled_message_is_refused(cluster, completed) -> None:
    instance = completed
    task = cluster.tasks(instance)[0]
    before = snapshot(instance)
    from workers.app import app

    app.send_task(dispatch.MARSHAL, args=[task["id"], 1], serializer="pickle", queue="default")
    log = cluster.home / "logs" / "worker1.log"
    wait_for(
        lambda: "untrusted content of type pickle" in log.read_text(),
        what="the worker to refuse a pickled message",
    )
    assert snapshot(instance) == before


@pytest.mark.e2e
def test_child_tasks_created_exactly_once_under_racing_transitions(cluster, completed) -> None:
    """Eight concurrent transitions after permuter finished create flip's tasks once."""
    instance = completed
    with transaction() as session:  # roll the instance back to "permuter just finished"
        later = select(Task.id).where(Task.instance_id == instance, Task.node != "permuter")
        session.execute(delete(TaskEvent).where(TaskEvent.task_id.in_(later)))
        session.execute(delete(Subtask).where(Subtask.task_id.in_(later)))
        session.execute(delete(Task).where(Task.id.in_(later.scalar_subquery())))
        for row in session.scalars(
            select(InstanceNode).where(InstanceNode.instance_id == instance)
        ):
            row.state = "DONE" if row.node == "permuter" else "PENDING"

    barrier = threading.Barrier(8)

    def race() -> None:
        barrier.wait()
        advance(instance)

    threads = [threading.Thread(target=race) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert cluster.wait(instance).returncode == 0
    tasks = cluster.tasks(instance)
    assert sorted((t["node"], t["unit_of_work"]) for t in tasks if t["node"] != "permuter") == [
        ("averaging", "set-1"),
        ("averaging", "set-2"),
        ("flip", "set-1"),
        ("flip", "set-2"),
    ]
    for task in tasks:
        history = cluster.json("task", task["id"])["history"]
        assert [e["p_state"] for e in history].count("MARSHALING") == 1
