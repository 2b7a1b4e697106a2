"""A worker continues a task's chain itself: execute, monitor and store need no message."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline.errors import Unreachable
from pipeline.messaging import outbox
from workers import stages


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """What reaches the broker, recorded instead of sent."""
    sent: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(
        outbox, "_publish", lambda messages: sent.extend((m[0], m[1]) for m in messages)
    )
    return sent


def sent(*stages: str) -> None:
    """Publish stage messages for task 4 (attempt 1) as a committed transaction would."""
    messages = outbox.Outbox()
    for name in stages:
        messages.stage(name, 4, 1, {})
    messages.publish()


def test_continued_stages_are_held_back_others_are_sent(published) -> None:
    with outbox.continuing() as held:
        sent(outbox.EXECUTE, outbox.MARSHAL, outbox.MONITOR)
    sent(outbox.STORE)  # outside any stage: a message as always
    assert [(name, args) for name, args, _ in held] == [
        (outbox.EXECUTE, [4, 1]),
        (outbox.MONITOR, [4, 1]),
    ]
    assert published == [(outbox.MARSHAL, [4, 1]), (outbox.STORE, [4, 1])]


def test_messages_are_published_only_once_the_transaction_commits(published, database: Any) -> None:
    with pytest.raises(RuntimeError), outbox.transaction() as (_, messages):
        messages.stage(outbox.MARSHAL, 4, 1, {})
        raise RuntimeError("rolled back")
    assert published == []
    with outbox.transaction() as (_, messages):
        messages.stage(outbox.MARSHAL, 4, 1, {})
        assert published == [], "not before the commit"
    assert published == [(outbox.MARSHAL, [4, 1])]


def test_a_savepoint_rolled_back_drops_its_messages(published) -> None:
    messages = outbox.Outbox()
    messages.stage(outbox.MARSHAL, 1, 1, {})
    with pytest.raises(ValueError), messages.savepoint():
        messages.stage(outbox.MARSHAL, 2, 1, {})
        raise ValueError("no inputs")
    with messages.savepoint():
        messages.stage(outbox.MARSHAL, 3, 1, {})
    messages.publish()
    assert published == [(outbox.MARSHAL, [1, 1]), (outbox.MARSHAL, [3, 1])]


def test_a_worker_runs_the_chain_on_and_hands_an_outage_to_the_broker(
    published, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[str, int]] = []

    def execute(task_id: int, attempt: int, host: str = "") -> None:
        ran.append(("execute", task_id))
        messages = outbox.Outbox()
        messages.stage(outbox.MONITOR, task_id, attempt, {"queue": "q"})
        messages.publish()

    def monitor(task_id: int, attempt: int, host: str = "") -> None:
        ran.append(("monitor", task_id))
        messages = outbox.Outbox()
        messages.stage(outbox.STORE, task_id, attempt, {"queue": "q"})
        messages.publish()

    def store(task_id: int, attempt: int, host: str = "") -> None:
        raise Unreachable("database unreachable at sqlite:///x")

    monkeypatch.setitem(stages.CONTINUED_STAGES, outbox.EXECUTE, execute)
    monkeypatch.setitem(stages.CONTINUED_STAGES, outbox.MONITOR, monitor)
    monkeypatch.setitem(stages.CONTINUED_STAGES, outbox.STORE, store)
    monkeypatch.setattr(stages, "retrying", lambda: lambda function: function)

    stages._continue([(outbox.EXECUTE, [9, 2], {"queue": "q"})], "worker1@host")

    assert ran == [("execute", 9), ("monitor", 9)]
    # The store met an outage: its message goes to the broker, for Celery to retry.
    assert published == [(outbox.STORE, [9, 2])]
