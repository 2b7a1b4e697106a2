"""The task lifecycle as one table: every (step, event) pair either leads where the
expected table below says or is refused loudly, and the engine's one mutator writes each
move with its history, attempt and instance state."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from pipeline.database import transaction
from pipeline.domain import lifecycle
from pipeline.domain.lifecycle import Event, IllegalTransition, PState
from pipeline.domain.models import Task, TaskEvent
from pipeline.engine.locks import lock_task
from pipeline.engine.task_state import HISTORY_IN_BULK, HOST, history_in_bulk, move, note
from pipeline.operations import facade, queries
from tests.support import InProcessWorker

S = PState
#: The chain's own moves, written out by hand (not read from the table under test).
CHAIN = {
    (S.INITIALIZING, Event.MARSHAL): S.MARSHALING,
    (S.MARSHALING, Event.MARSHALED): S.ALGORITHM_SUBMITTING,
    (S.MARSHALING, Event.MARSHAL_LOST): S.INITIALIZING,
    (S.ALGORITHM_SUBMITTING, Event.QUEUED): S.ALGORITHM_QUEUED,
    (S.ALGORITHM_SUBMITTING, Event.ENDED): S.ALGORITHM_COMPLETE,
    (S.ALGORITHM_QUEUED, Event.STARTED): S.ALGORITHM_EXECUTING,
    (S.ALGORITHM_QUEUED, Event.ENDED): S.ALGORITHM_COMPLETE,
    (S.ALGORITHM_EXECUTING, Event.ENDED): S.ALGORITHM_COMPLETE,
    (S.ALGORITHM_COMPLETE, Event.ACCEPTED): S.STORING,
    (S.ALGORITHM_COMPLETE, Event.RESUBMITTED): S.ALGORITHM_SUBMITTING,
    (S.STORING, Event.STORED): S.COMPLETE,
}
NOT_DONE = [step for step in PState if step != S.COMPLETE]
#: Failing and halting freeze the step of a task that is not done.
STOPS = {(step, event): step for step in NOT_DONE for event in (Event.FAILED, Event.HALTED)}
#: A restart takes a failed task back to one of three steps, from wherever it failed.
RESTARTS = {
    (step, event): target
    for step in PState
    for event, target in (
        (Event.RESTART_MARSHALING, S.INITIALIZING),
        (Event.RESTART_SUBMITTING, S.ALGORITHM_SUBMITTING),
        (Event.RESTART_STORING, S.STORING),
    )
}
NEW_ATTEMPT = {
    Event.RESUBMITTED,
    Event.MARSHAL_LOST,
    Event.HALTED,
    Event.RESTART_MARSHALING,
    Event.RESTART_SUBMITTING,
    Event.RESTART_STORING,
}


def row(step: PState, error: bool = False, failed: int = 0) -> Task:
    return Task(id=9, p_state=step, error=error, failed_subtasks=failed, attempt=1)


@pytest.mark.parametrize("step", list(PState))
@pytest.mark.parametrize("event", list(Event))
def test_every_step_and_event_leads_where_the_table_says_or_is_refused(
    step: PState, event: Event
) -> None:
    working, failed = row(step), row(step, error=True, failed=1)
    complete_with_failures = row(step, failed=1)
    if (step, event) in CHAIN or (step, event) in STOPS:
        expected = CHAIN.get((step, event), STOPS.get((step, event)))
        assert lifecycle.next_state(working, event) == expected
        with pytest.raises(IllegalTransition, match="cannot happen to a task at ERROR - "):
            lifecycle.next_state(failed, event)  # a failed task moves only by a restart
    elif (step, event) in RESTARTS:
        assert lifecycle.next_state(failed, event) == RESTARTS[step, event]
        if step == S.COMPLETE:  # complete with failed subtasks: restartable too
            assert lifecycle.next_state(complete_with_failures, event) == RESTARTS[step, event]
        with pytest.raises(IllegalTransition, match="cannot happen"):
            lifecycle.next_state(working, event)  # nothing to restart
    else:
        for task in (working, failed):
            with pytest.raises(IllegalTransition, match=f"'{event.value}' cannot happen"):
                lifecycle.next_state(task, event)


def test_the_table_holds_nothing_the_expected_table_does_not() -> None:
    assert lifecycle.TRANSITIONS == {**CHAIN, **STOPS, **RESTARTS}
    assert {e for e, rule in lifecycle.RULES.items() if rule.new_attempt} == NEW_ATTEMPT


def test_each_waiting_step_names_the_stage_that_moves_it_on() -> None:
    assert lifecycle.WAITING == {
        S.INITIALIZING: lifecycle.Stage.MARSHAL,
        S.ALGORITHM_SUBMITTING: lifecycle.Stage.EXECUTE,
        S.ALGORITHM_COMPLETE: lifecycle.Stage.MONITOR,
        S.STORING: lifecycle.Stage.STORE,
    }
    # Every step a restart leads to is a waiting step: its chain can be started again.
    assert {target for (_, _), target in RESTARTS.items()} <= set(lifecycle.WAITING)


@pytest.mark.parametrize(
    ("error", "step", "failed", "expected"),
    [  # (restartable, running, done)
        (True, S.ALGORITHM_COMPLETE, 1, (True, False, False)),
        (True, S.MARSHALING, 0, (True, False, False)),
        (True, S.COMPLETE, 0, (True, False, False)),
        (False, S.COMPLETE, 1, (True, False, True)),
        (False, S.COMPLETE, 0, (False, False, True)),
        (False, S.STORING, 0, (False, True, False)),
        (False, S.ALGORITHM_EXECUTING, 2, (False, True, False)),
    ],
)
def test_the_predicates_agree_in_python_and_in_sql(
    worker: InProcessWorker,
    home: Path,
    error: bool,
    step: PState,
    failed: int,
    expected: tuple[bool, bool, bool],
) -> None:
    task = row(step, error, failed)
    assert (task.restartable, task.running, task.done) == expected
    facade.submit("sample", None, "permuter")
    with transaction() as session:
        session.execute(
            update(Task)
            .where(Task.id == 1)
            .values(p_state=step, error=error, failed_subtasks=failed)
        )
    with transaction() as session:
        found = session.execute(
            select(Task.restartable, Task.running, Task.done).where(Task.id == 1)
        ).one()
    assert tuple(bool(value) for value in found) == expected


def test_a_move_writes_its_history_and_an_illegal_one_changes_nothing(
    worker: InProcessWorker, home: Path
) -> None:
    facade.submit("sample", None, "permuter")
    with transaction() as session:
        instance, task = lock_task(session, 1)
        assert move(session, task, Event.MARSHAL, "claimed", "w1", instance=instance) == (
            S.MARSHALING
        )
    with transaction() as session:
        instance, task = lock_task(session, 1)
        with pytest.raises(
            IllegalTransition, match="'stored' cannot happen to a task at MARSHALING"
        ):
            move(session, task, Event.STORED, instance=instance)
        with pytest.raises(IllegalTransition, match="needs its instance locked"):
            move(session, task, Event.FAILED, "boom")  # the instance state would change
        session.rollback()
    detail = queries.get_task(1)
    assert (detail["p_state"], detail["error"], detail["attempt"]) == ("MARSHALING", False, 1)
    assert [(e["p_state"], e["message"], e["host"]) for e in detail["history"]] == [
        ("MARSHALING", "claimed", "w1")
    ]
    assert queries.get_instance(1)["state"] == "PROCESSING"
    with transaction() as session:
        instance, task = lock_task(session, 1)
        move(session, task, Event.HALTED, "halted by operator", instance=instance)
    detail = queries.get_task(1)
    assert (detail["state"], detail["attempt"]) == ("ERROR - MARSHALING", 2)
    assert detail["history"][-1]["message"] == "error: halted by operator"
    assert queries.get_instance(1)["state"] == "ERRORS_RUNNING"  # permuter set-2 still runs
    with transaction() as session:
        assert session.scalar(select(func.count()).select_from(TaskEvent)) == 2


def test_history_noted_in_bulk_is_written_as_the_block_ends_in_order(
    worker: InProcessWorker, home: Path
) -> None:
    """The lines a block notes in bulk (``history_in_bulk``: a restart's, a message's
    subtasks') are written with one statement as it ends, after those noted before it
    and before those after it; a block that raises writes none of them."""
    facade.submit("sample", None, "permuter")
    with transaction() as session:
        instance, task = lock_task(session, 1)
        move(session, task, Event.MARSHAL, "before", "w1", instance=instance)
        with history_in_bulk(session):
            note(session, task, "in bulk 1")
            note(session, task, "in bulk 2", "w2")
            # Written as the block ends: only the line noted before it is in the table.
            assert session.scalar(select(func.count()).select_from(TaskEvent)) == 1
        note(session, task, "after")
    with transaction() as session:
        _, task = lock_task(session, 1)
        with pytest.raises(RuntimeError), history_in_bulk(session):
            note(session, task, "never written")
            raise RuntimeError("the block failed")
        assert HISTORY_IN_BULK not in session.info
    history = queries.get_task(1)["history"]
    assert [(e["p_state"], e["message"], e["host"]) for e in history] == [
        ("MARSHALING", "before", "w1"),
        ("MARSHALING", "in bulk 1", HOST),
        ("MARSHALING", "in bulk 2", "w2"),
        ("MARSHALING", "after", HOST),
    ]
    assert all(e["at"] for e in history)


def test_every_executor_is_a_module_offering_what_an_executor_does() -> None:
    """An executor is an entry of the lifecycle and a module of the engine: each named
    has every function ``engine.executors.ExecutorModule`` lists, with the same parameters."""
    import importlib
    import inspect

    from pipeline.engine.executors import ExecutorModule

    wanted = {
        name: list(inspect.signature(member).parameters)[1:]  # without self
        for name, member in vars(ExecutorModule).items()
        if callable(member) and not name.startswith("_")
    }
    assert set(wanted) == {"queue_subtasks", "redispatch", "alive", "lost", "withdraw"}
    for executor, module in lifecycle.EXECUTORS.items():
        found = importlib.import_module(module)
        for name, parameters in wanted.items():
            assert list(inspect.signature(getattr(found, name)).parameters) == parameters, (
                executor,
                name,
            )
    assert set(lifecycle.EXECUTORS) == set(lifecycle.Executor)
