"""Lost work found and started again by beat's reconciler, driven in this process: a subtask
whose worker died, a lost stage message, a quiet task whose messages were lost, a marshal
whose worker died, a subtask that hangs. The processes really dying are the chaos tests'
(``test_lost_work.py``); here the clock is moved instead."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml
from sqlalchemy import update

from pipeline.database import transaction
from pipeline.domain.lifecycle import Event
from pipeline.domain.models import PipelineInstance, Task, utcnow
from pipeline.engine import stages
from pipeline.engine.leases import Claim
from pipeline.engine.locks import lock_task
from pipeline.engine.runner import SubtaskOutcome
from pipeline.engine.task_state import move
from pipeline.messaging.broker import CeleryPublisher
from pipeline.messaging.publisher import use_publisher
from pipeline.operations import facade, queries
from pipeline.recovery import reconcile
from tests.support import (
    LONG_AGO,
    InProcessWorker,
    age,
    assert_one_line_error,
    point_here,
    poison,
    race,
    redis_server,
    run_cli,
    taken_by_a_dying_worker,
    wait_for,
)

#: The real reading of queues and workers (the in-process worker replaces it).

#: Every test runs over an initialised home of its own, in this process.
pytestmark = pytest.mark.usefixtures("home")


@pytest.fixture
def reconciler(worker: InProcessWorker) -> Any:
    """Beat's reconciler, run on demand (its Redis lock taken for granted)."""
    return reconcile.reconcile_once


def subtasks(task_id: int) -> list[tuple[str, int]]:
    return [(s["state"], s["attempts"]) for s in queries.list_subtasks(task_id)]


def test_a_subtask_whose_worker_died_is_dispatched_again(
    worker: InProcessWorker, reconciler
) -> None:
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()  # task 1 marshaled
    taken_by_a_dying_worker(worker, 1, 0)
    age(1)

    assert reconciler()["reclaimed"] == 1
    assert subtasks(1)[0] == ("QUEUED", 1)
    history = [e["message"] for e in queries.get_task(1)["history"]]
    assert "subtask 0: worker lost, dispatched again" in history
    [alert] = queries.list_alerts()
    assert (alert["severity"], alert["task_id"]) == ("warning", 1)
    assert alert["message"] == "subtask 0: worker worker9@gone lost, dispatched again"
    # The lost run reports after all: its dispatch number is stale, so nothing changes.
    stages.finish_subtasks([(Claim(1, 1, 0, 1), SubtaskOutcome(False, "late"))])
    assert subtasks(1)[0] == ("QUEUED", 1)

    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert subtasks(1) == [("COMPLETE", 2), *[("COMPLETE", 1)] * 3]


def test_a_subtask_lost_too_often_fails_as_worker_lost(
    worker: InProcessWorker, reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_LOST_SUBTASK_RETRIES", "0")
    point_here()
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()
    taken_by_a_dying_worker(worker, 1, 2)
    age(1)

    assert reconciler()["reclaimed"] == 1
    worker.drain()
    assert subtasks(1)[2] == ("FAILED", 1)
    assert queries.list_subtasks(1)[2]["error"] == "worker lost"
    assert queries.get_task(1)["state"] == "ERROR - ALGORITHM_COMPLETE"
    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"
    assert [a["severity"] for a in queries.list_alerts()] == ["error"]


def test_a_lost_stage_message_is_sent_again(worker: InProcessWorker, reconciler) -> None:
    instance = facade.submit("sample", None, "permuter")["id"]
    assert len(worker.lose()) == 2  # both marshal messages
    assert reconciler()["resent"] == 0, "not before the task has waited stale_after"
    age(1)
    age(2)

    assert reconciler()["resent"] == 2
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"


def test_a_lost_store_is_sent_again_in_the_history_and_as_an_alert(
    worker: InProcessWorker, reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker storing a task died (or its store message was lost): the store is sent
    again, and the task's history and the alerts say so, between STORING and COMPLETE."""
    from workers import chain

    lost: list[int] = []

    def dies(task_id: int, attempt: int, host: str = "") -> stages.Step:
        lost.append(task_id)
        return stages.Step()

    monkeypatch.setitem(chain.RUN_HERE, chain.STORE, dies)
    monkeypatch.setattr(stages, "store", dies)
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    monkeypatch.undo()
    [task_id, _] = sorted(lost)
    assert queries.get_task(task_id)["state"] == "STORING"
    age(task_id)

    assert reconciler()["resent"] == 1
    worker.drain()
    history = [(e["state"], e["message"]) for e in queries.get_task(task_id)["history"]]
    resent = ("STORING", "no news for 30 s: store sent again (worker or message lost)")
    assert resent in history
    assert history.index(resent) == len(history) - 2, "just before the store completed"
    assert history[-1][0] == "COMPLETE"
    [alert] = queries.list_alerts()
    assert (alert["severity"], alert["task_id"]) == ("warning", task_id)
    assert alert["message"] == (
        "STORING had no news for 30 s: store sent again (worker or message lost)"
    )
    assert queries.get_instance(instance)["state"] != "COMPLETED", "the other task still waits"


def test_a_quiet_task_whose_messages_were_lost_is_reattached(
    worker: InProcessWorker, reconciler
) -> None:
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()
    worker.run_next()
    assert len(worker.lose(keep=lambda message: message.args[0] == 2)) == 4
    age(1)
    age(2)

    assert reconciler()["redispatched"] == 4
    history = [e["message"] for e in queries.get_task(1)["history"]]
    assert "reconciler, 0 alive, 4 lost" in history
    assert not any(
        m.startswith("reconciler, ") for m in (e["message"] for e in queries.get_task(2)["history"])
    ), "nothing lost: nothing written"
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert subtasks(1) == [("COMPLETE", 1)] * 4, "each subtask ran once"
    assert [a["message"] for a in queries.list_alerts()] == [
        "4 subtask messages lost (reconciler): dispatched again"
    ]


def test_a_marshal_whose_worker_died_is_marshaled_again(
    worker: InProcessWorker, reconciler
) -> None:
    instance = facade.submit("sample", None, "permuter")["id"]
    [message] = [m for m in worker.queue if m.args == [1, 1]]
    worker.queue.remove(message)
    with transaction() as session:  # a worker claimed the marshal, and died
        instance_row, task = lock_task(session, 1)
        move(session, task, Event.MARSHAL, host="worker9@gone", instance=instance_row)
    age(1)

    assert reconciler()["remarshaled"] == 1
    task = queries.get_task(1)
    assert (task["p_state"], task["attempt"]) == ("INITIALIZING", 2)
    assert "marshaling lost on worker9@gone, marshaling again (reconciler)" in [
        e["message"] for e in task["history"]
    ]
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert queries.get_task(1)["task_dir"].endswith("-attempt2")
    assert [a["message"] for a in queries.list_alerts()] == [
        "marshaling lost on worker9@gone, marshaling again"
    ]


#: What the reconciler says of a task whose execution settings cannot be read.
UNREADABLE = "stored execution settings cannot be read"


def stale_with_one_unreadable(poisoned: int) -> None:
    """Both permuter tasks stale (their leases and steps an hour old), and the execution
    settings of one of them, ``poisoned``, written by hand as no reader can read them."""
    age(1)
    age(2)
    poison(poisoned)


def assert_failed_alone(task_id: int) -> None:
    """The poisoned task failed with one line and an alert, and reads again: its settings
    are its node's, so an operator can show and restart it."""
    task = queries.get_task(task_id)
    assert task["error"], task["state"]
    assert task["error_message"].startswith(UNREADABLE), task["error_message"]
    assert "\n" not in task["error_message"]
    assert task["execution"]["subtask_timeout"] == 3600.0, "the node's settings again"
    alerts = [a for a in queries.list_alerts() if a["task_id"] == task_id]
    assert [(a["severity"], a["message"]) for a in alerts] == [("error", task["error_message"])]


def test_one_unreadable_row_fails_its_task_and_the_reconciler_recovers_the_others(
    worker: InProcessWorker, reconciler, capsys: pytest.CaptureFixture[str]
) -> None:
    """A task whose execution settings hold ``Infinity`` (written by hand) cannot stop the
    reconciler: the other task's lost message is sent again, the bad one fails alone."""
    instance = facade.submit("sample", None, "permuter")["id"]
    assert len(worker.lose()) == 2  # both marshal messages
    stale_with_one_unreadable(poisoned=2)
    assert_one_line_error(run_cli(capsys, "task", "2"), "a stored value cannot be read")

    done = reconciler()
    assert (done["resent"], done["failed"]) == (1, 1)
    assert_failed_alone(2)
    worker.drain()
    assert queries.get_task(1)["state"] == "COMPLETE"
    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"
    assert reconciler()["failed"] == 0, "failed once, not at every run"

    facade.restart([2], "restart-from-beginning")
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"


def test_an_unreadable_row_cannot_stop_lost_subtasks_being_reclaimed(
    worker: InProcessWorker, reconciler
) -> None:
    facade.submit("sample", None, "permuter")
    worker.run_next()  # task 1 marshaled
    worker.run_next()  # task 2 marshaled
    taken_by_a_dying_worker(worker, 1, 0)
    taken_by_a_dying_worker(worker, 2, 0)
    stale_with_one_unreadable(poisoned=1)

    done = reconciler()
    assert (done["reclaimed"], done["failed"]) == (1, 1)
    assert_failed_alone(1)
    assert subtasks(2)[0] == ("QUEUED", 1)


def test_an_unreadable_row_cannot_stop_quiet_tasks_being_reattached(
    worker: InProcessWorker, reconciler
) -> None:
    facade.submit("sample", None, "permuter")
    worker.run_next()
    worker.run_next()
    assert len(worker.lose()) == 8
    stale_with_one_unreadable(poisoned=1)

    done = reconciler()
    assert (done["redispatched"], done["failed"]) == (4, 1)
    assert_failed_alone(1)
    worker.drain()
    assert queries.get_task(2)["state"] == "COMPLETE"


HANGING = {
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
            "execution": {"subtask_timeout": 1, "max_failed_subtasks": 1},
        }
    ],
}


@pytest.mark.slow  # waits for a timeout
def test_a_hanging_subtask_fails_at_its_timeout_and_the_task_goes_on(
    worker: InProcessWorker, home: Path, tmp_path: Path
) -> None:
    definition = tmp_path / "hanging.yaml"
    definition.write_text(yaml.safe_dump(HANGING))
    facade.import_definitions([definition])
    instance = facade.submit("hanging")["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    for task in queries.list_tasks(instance):
        assert (task["state"], task["counts"]) == ("COMPLETE", "3/4 (1)")
        listed = queries.list_subtasks(task["id"])
        assert (listed[0]["state"], listed[0]["error"]) == ("FAILED", "timeout: killed after 1 s")
        seen = sorted(
            p.name for p in (home / "datastore" / task["unit_of_work"] / "seen").iterdir()
        )
        assert seen == [f"nasa-logo-file-{i}-seen.txt" for i in (1, 2, 3)]


@pytest.mark.e2e
def test_two_monitors_at_once_only_one_reconciles(
    worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second beat started by mistake sends a second reconciler each interval: the two runs
    meet at the lock in Redis, and one of them does nothing."""
    with redis_server() as url:
        monkeypatch.setenv("PIPELINE_BROKER_URL", url)
        point_here()
        results: list[dict[str, int]] = []
        race(lambda: results.append(reconcile.reconcile()), threads=2)
    assert sorted("skipped" in result for result in results) == [False, True]


def test_the_workers_are_asked_once_per_run_whatever_the_queues(
    worker: InProcessWorker, reconciler, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking the workers what they hold waits a second for the slowest: once per queue
    would make a run grow with the number of queues."""
    facade.submit("sample", None, "permuter")
    worker.run_next()
    worker.run_next()
    worker.lose()
    with transaction() as session:  # each task on a queue of its own
        for task_id, queue in ((1, "default"), (2, "big-memory")):
            task = session.get(Task, task_id)
            task.execution = {**task.execution, "queue": queue}
    age(1)
    age(2)
    asked: list[int] = []

    def held_by_workers() -> tuple[set[str], set[str]]:
        asked.append(1)
        return set(), set()

    class Inspected(CeleryPublisher):
        """Celery's way of finding what is in flight, over a broker with empty queues;
        what it publishes goes to the in-process worker."""

        def publish(self, messages: Any) -> None:
            worker.broker.publish(messages)

        def queued_ids(self, queue: str) -> set[str]:
            return set()

        def held_by_workers(self) -> tuple[set[str], set[str]]:
            asked.append(1)
            return set(), set()

        def consumed_queues(self) -> set[str]:
            return {"default", "big-memory"}

    use_publisher(Inspected())
    try:
        assert reconciler()["redispatched"] == 8
    finally:
        use_publisher(worker.broker)
    assert asked == [1]


@pytest.mark.e2e
def test_a_run_that_outlasts_the_interval_keeps_the_lock_until_it_ends(
    worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The reconciler's lock is a mutex, not a rate limit: while one run works on (here, a
    long line of tasks to recover) for many intervals, every other run is skipped; when it
    ends the lock is released and the next run goes ahead."""
    # Long enough that a busy machine does not stall the holder past the lock's lapse
    # (LOCK_INTERVALS intervals): at 0.2 s it lapsed under a full parallel test run.
    interval = 0.5
    with redis_server() as url:
        monkeypatch.setenv("PIPELINE_BROKER_URL", url)
        monkeypatch.setenv("PIPELINE_RECONCILE_INTERVAL", str(interval))
        point_here()
        working, finish = threading.Event(), threading.Event()
        long_run = threading.current_thread()  # replaced by the run's thread below

        def many_tasks(expired_before: Any, isolation: Any) -> int:
            if threading.current_thread() is not long_run:
                return 0
            working.set()
            while not finish.is_set():
                isolation.task(1, lambda: finish.wait(interval / 4))
            return 0

        monkeypatch.setattr(reconcile, "_reclaim_expired_leases", many_tasks)
        results: list[dict[str, int]] = []
        long_run = threading.Thread(target=lambda: results.append(reconcile.reconcile()))
        long_run.start()
        assert working.wait(30)
        others = []
        deadline = time.monotonic() + 5 * reconcile.LOCK_INTERVALS * interval
        while time.monotonic() < deadline:
            others.append(reconcile.reconcile())
        finish.set()
        long_run.join(30)
        assert results and "skipped" not in results[0]
        assert others and all(other == {"skipped": 1} for other in others), others
        assert not redis.Redis.from_url(url).exists(reconcile.LOCK_KEY), "released at its end"
        after = wait_for(
            lambda: (ran := reconcile.reconcile()) != {"skipped": 1} and ran,
            what="a run after the long one",
        )
        assert "reclaimed" in after


def test_a_lost_transition_made_by_the_reconciler_is_in_the_history_and_an_alert(
    worker: InProcessWorker, reconciler
) -> None:
    """The permuter's tasks stored but the flip's tasks were never created (a transition
    lost): the reconciler creates them, each with a line in its history that says who and
    why, and one alert about the instance says so."""
    from tests.support import roll_back_to_permuter_done

    instance = facade.submit("sample")["id"]
    worker.drain()
    roll_back_to_permuter_done(instance)
    with transaction() as session:  # as it was: still processing
        session.execute(
            update(PipelineInstance)
            .where(PipelineInstance.id == instance)
            .values(state="PROCESSING", updated_at=utcnow() - LONG_AGO)
        )

    reconciler()
    flips = [t for t in queries.list_tasks(instance) if t["node"] == "flip"]
    assert len(flips) == 2
    said = "transition recovered by the reconciler: tasks of flip created (its parents were done)"
    for task in flips:
        assert said in [e["message"] for e in queries.get_task(task["id"])["history"]]
    [alert] = [a for a in queries.list_alerts() if "transition recovered" in a["message"]]
    assert (alert["severity"], alert["instance_id"]) == ("warning", instance)
    assert alert["message"] == f"instance {instance}: {said}: 2 tasks"
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
