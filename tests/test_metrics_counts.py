"""``/metrics`` reads counts kept on the task rows as their subtasks change, not a recount
of every subtask row and history line at each scrape: here real work runs through every
way those counts change (outcomes, a failure, restarts in each mode, an automatic
resubmit, a halt, a lost subtask dispatched again, a lost marshal, lost messages found by
resume-monitoring), and after every message the figures equal a recount done the way
the scrape used to, on SQLite and on PostgreSQL."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.lifecycle import Event
from pipeline.domain.models import PipelineInstance, Subtask, Task, TaskEvent
from pipeline.domain.run_times import DURATION_BUCKETS
from pipeline.domain.states import InstanceState
from pipeline.engine.locks import lock_task
from pipeline.engine.task_state import move
from pipeline.operations import facade, pages, queries
from pipeline.recovery import reconcile
from tests.support import InProcessWorker, age, taken_by_a_dying_worker


def recount() -> dict[str, Any]:
    """The figures as the scrape counted them before: aggregates over every subtask row
    and every history line (restart modes as the mode's name: the first word of the
    line, without the comma or colon some lines put after it)."""
    with transaction() as session:
        instances = dict(
            session.execute(
                select(PipelineInstance.state, func.count()).group_by(PipelineInstance.state)
            ).all()
        )
        tasks = {
            (p_state, bool(error)): int(count)
            for p_state, error, count in session.execute(
                select(Task.p_state, Task.error, func.count()).group_by(Task.p_state, Task.error)
            )
        }
        subtasks = dict(
            session.execute(select(Subtask.state, func.count()).group_by(Subtask.state)).all()
        )
        redispatched = session.scalar(
            select(func.coalesce(func.sum(Subtask.dispatch - 1), 0)).where(Subtask.dispatch > 1)
        )
        restarts: dict[str, int] = defaultdict(int)
        for message, count in session.execute(
            select(TaskEvent.message, func.count())
            .where(TaskEvent.message.like("restart: %"))
            .group_by(TaskEvent.message)
        ):
            mode = message.removeprefix("restart: ").split(" ", 1)[0].rstrip(",:")
            restarts[mode] += int(count)
        lost = session.scalar(
            select(func.count(TaskEvent.id)).where(
                TaskEvent.message.like("%worker lost, dispatched again%")
                | TaskEvent.message.like("marshaling lost on %")
            )
        )
        return {
            "instances": {s: int(instances.get(s, 0)) for s in InstanceState.__members__},
            "tasks": tasks,
            "subtasks": {state: int(count) for state, count in subtasks.items()},
            "redispatched": int(redispatched or 0),
            "restarts": dict(restarts),
            "lost_work_recoveries": int(lost or 0),
            "durations": _histogram(session),
        }


def _histogram(session: Session) -> dict[str, dict[str, Any]]:
    if session.get_bind().dialect.name == "postgresql":
        run = func.extract("epoch", Subtask.finished_at - Subtask.started_at)
    else:
        run = (func.julianday(Subtask.finished_at) - func.julianday(Subtask.started_at)) * 86400.0
    buckets = [func.sum(case((run <= bound, 1), else_=0)) for bound in DURATION_BUCKETS]
    rows = session.execute(
        select(Task.node, func.count(Subtask.id), func.coalesce(func.sum(run), 0.0), *buckets)
        .join(Task, Task.id == Subtask.task_id)
        .where(Subtask.finished_at.is_not(None), Subtask.started_at.is_not(None))
        .group_by(Task.node)
    )
    return {
        row[0]: {
            "count": int(row[1]),
            "sum": float(row[2]),
            "buckets": [int(v or 0) for v in row[3:]],
        }
        for row in rows
    }


def assert_counts_equal_a_recount() -> None:
    kept, counted = pages.metrics(), recount()
    for found in counted["durations"].values():  # SQLite's times count milliseconds
        found["sum"] = pytest.approx(found["sum"], abs=1e-3 * found["count"])
    assert {key: kept[key] for key in counted} == counted


def run_all(worker: InProcessWorker) -> None:
    """Drain the queue, one message at a time, the counts checked after each."""
    while worker.queue:
        worker.run_next()
        assert_counts_equal_a_recount()


def test_the_metrics_counts_equal_a_recount_through_every_change(
    any_database: str, worker: InProcessWorker
) -> None:
    assert_counts_equal_a_recount()
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    first = facade.submit("sample", None, "permuter")["id"]
    run_all(worker)
    tasks = [task["id"] for task in queries.list_tasks(first)]
    assert {queries.get_task(t)["state"] for t in tasks} == {"ERROR - ALGORITHM_COMPLETE"}

    # resubmit, once with an automatic resubmit of its own; resume-current-step
    # abandons the failure; restart-from-beginning marshals again.
    facade.restart([tasks[0]], "resubmit", settings={"max_auto_resubmits": 1})
    assert_counts_equal_a_recount()
    run_all(worker)
    facade.restart([tasks[0]], "resume-current-step")
    facade.restart([tasks[1]], "restart-from-beginning")
    assert_counts_equal_a_recount()
    run_all(worker)
    assert queries.get_task(tasks[0])["state"] == "COMPLETE"
    facade.restart([tasks[0]], "restart-from-beginning")  # COMPLETE with a failed subtask
    run_all(worker)

    # A halt of a task whose subtasks are out, continued by resume-current-step.
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=false"])
    second = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()
    worker.run_next()  # both tasks marshaled, their subtasks queued
    halted, other = [task["id"] for task in queries.list_tasks(second)]
    worker.run_next()  # one subtask running... and done
    facade.halt([halted])
    assert_counts_equal_a_recount()
    facade.restart([halted], "resume-current-step")
    assert_counts_equal_a_recount()

    # A subtask whose worker died is dispatched again by the reconciler; the broker loses
    # the other task's messages, which resume-monitoring finds and sends again.
    attempt = queries.get_task(halted)["attempt"]
    index = next(m.args[2] for m in worker.queue if m.args[:2] == [halted, attempt])
    taken_by_a_dying_worker(worker, halted, index, attempt)
    assert_counts_equal_a_recount()
    age(halted)
    assert reconcile.reconcile_once()["reclaimed"] == 1
    assert_counts_equal_a_recount()
    worker.lose(keep=lambda message: message.args[0] != other)
    facade.restart([other], "resume-monitoring")
    assert_counts_equal_a_recount()
    run_all(worker)

    # A marshal whose worker died is marshaled again.
    third = facade.submit("sample", None, "permuter")["id"]
    [marshal] = [m for m in worker.queue if m.name.endswith("marshal")][:1]
    worker.queue.remove(marshal)
    task_id = marshal.args[0]
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        move(session, task, Event.MARSHAL, host="worker9@gone", instance=instance)
    age(task_id)
    assert reconcile.reconcile_once()["remarshaled"] == 1
    run_all(worker)
    assert queries.get_instance(third)["state"] == "COMPLETED"

    figures = pages.metrics()
    assert figures["restarts"] == {
        "resubmit": 1,
        "resume-current-step": 2,
        "restart-from-beginning": 2,
        "resume-monitoring": 1,
    }
    assert figures["lost_work_recoveries"] == 2
    assert figures["redispatched"] > 0
    assert figures["durations"]["permuter"]["count"] == figures["subtasks"]["COMPLETE"] + figures[
        "subtasks"
    ].get("FAILED", 0)


def test_the_migration_fills_the_counts_from_the_rows_as_they_stand(
    any_database: str, worker: InProcessWorker
) -> None:
    """The counts as the migration adding them leaves them (nothing counted yet), then
    filled by it: it counts what the rows hold, as the scrape did (subtasks in every
    state, redispatched ones, run times, restarts by mode, lost work)."""
    import importlib.util

    from sqlalchemy import update

    from pipeline.database import MIGRATIONS

    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    failed, other = [task["id"] for task in queries.list_tasks(instance)]
    facade.restart([failed], "resubmit")
    facade.restart([other], "restart-from-beginning")
    worker.run_next()  # the resubmitted subtask done; the other task being marshaled
    worker.run_next()
    worker.lose(keep=lambda message: message.args[0] != other)
    facade.restart([other], "resume-monitoring")
    worker.run_next()
    kept = pages.metrics()
    assert kept["subtasks"].get("QUEUED") and kept["redispatched"] and kept["restarts"]

    path = MIGRATIONS / "versions" / "0016_metrics_counts.py"
    spec = importlib.util.spec_from_file_location("metrics_counts", path)
    assert spec is not None and spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    with transaction() as session:
        session.execute(
            update(Task).values(
                **dict.fromkeys(migration.COUNTED, 0),
                restarts=None,
            )
        )
        migration._fill(session.connection())

    assert_counts_equal_a_recount()
    assert {key: value for key, value in pages.metrics().items() if key != "durations"} == {
        key: value for key, value in kept.items() if key != "durations"
    }


def test_a_scrape_reads_no_subtask_row_and_no_history_line(failed: Path) -> None:
    """What ``/metrics`` reads grows with the tasks, never with their subtasks or their
    history: no statement of a scrape names those tables."""
    from sqlalchemy import event

    from pipeline.database import get_engine

    statements: list[str] = []

    def seen(_connection: Any, _cursor: Any, statement: str, *_: Any) -> None:
        statements.append(statement)

    engine = get_engine()
    event.listen(engine, "before_cursor_execute", seen)
    try:
        figures = pages.metrics()
    finally:
        event.remove(engine, "before_cursor_execute", seen)
    assert figures["subtasks"] == {"COMPLETE": 6, "FAILED": 2}
    tables = re.compile(r"\b(subtasks|task_events)\b")
    assert statements and not [s for s in statements if tables.search(s)]
