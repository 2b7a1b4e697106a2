"""The outbox delivers a transaction's messages only once it commits, and a worker
continues a task's chain itself: execute, monitor and store need no message."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from pipeline.domain.lifecycle import Stage
from pipeline.engine.stages import Step
from pipeline.errors import Unreachable
from pipeline.messaging import outbox
from pipeline.messaging.memory import MemoryPublisher
from pipeline.messaging.messages import EXECUTE, MARSHAL, MONITOR, STORE, stage_message
from pipeline.messaging.publisher import use_publisher
from workers import chain


@pytest.fixture
def broker() -> Iterator[MemoryPublisher]:
    """This process's publisher, in memory: what reaches it is what a broker would get."""
    memory = MemoryPublisher()
    replaced = use_publisher(memory)
    yield memory
    use_publisher(replaced)


def sent(broker: MemoryPublisher) -> list[tuple[str, list[Any]]]:
    return [(m.name, m.args) for m in broker.published]


def marshal(task_id: int) -> Any:
    return stage_message(Stage.MARSHAL, task_id, 1, "default")


def test_messages_are_published_only_once_the_transaction_commits(
    broker: MemoryPublisher, database: Any
) -> None:
    with pytest.raises(RuntimeError), outbox.transaction() as (_, messages):
        messages.add(marshal(4))
        raise RuntimeError("rolled back")
    assert sent(broker) == []
    with outbox.transaction() as (_, messages):
        messages.add(marshal(4))
        assert sent(broker) == [], "not before the commit"
    assert sent(broker) == [(MARSHAL, [4, 1])]


def test_a_stage_returns_its_messages_rather_than_publishing_them(
    broker: MemoryPublisher, database: Any
) -> None:
    step = Step()
    with step.transaction() as (_, messages):
        messages.add(marshal(4))
    assert [(m.name, m.args) for m in step.messages] == [(MARSHAL, [4, 1])]
    assert sent(broker) == [], "its Celery task decides where they go"


def test_a_savepoint_rolled_back_drops_its_messages(broker: MemoryPublisher) -> None:
    messages = outbox.Outbox()
    messages.add(marshal(1))
    with pytest.raises(ValueError), messages.savepoint():
        messages.add(marshal(2))
        raise ValueError("no inputs")
    with messages.savepoint():
        messages.add(marshal(3))
    outbox.send(messages)
    assert sent(broker) == [(MARSHAL, [1, 1]), (MARSHAL, [3, 1])]


def test_a_worker_runs_the_chain_on_and_hands_an_outage_to_the_broker(
    broker: MemoryPublisher, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[str, int]] = []

    def execute(task_id: int, attempt: int, host: str = "") -> Step:
        ran.append(("execute", task_id))
        # A child task's marshal goes to the broker; monitor runs here.
        return Step(
            messages=[
                stage_message(Stage.MARSHAL, 10, 1, "q"),
                stage_message(Stage.MONITOR, task_id, attempt, "q"),
            ]
        )

    def monitor(task_id: int, attempt: int, host: str = "") -> Step:
        ran.append(("monitor", task_id))
        return Step(messages=[stage_message(Stage.STORE, task_id, attempt, "q")])

    def store(task_id: int, attempt: int, host: str = "") -> Step:
        raise Unreachable("database unreachable at sqlite:///x")

    monkeypatch.setitem(chain.RUN_HERE, EXECUTE, execute)
    monkeypatch.setitem(chain.RUN_HERE, MONITOR, monitor)
    monkeypatch.setitem(chain.RUN_HERE, STORE, store)
    monkeypatch.setattr(chain, "retrying", lambda: lambda function: function)

    chain._go_on([stage_message(Stage.EXECUTE, 9, 2, "q")], "worker1@host")

    assert ran == [("execute", 9), ("monitor", 9)]
    # The store met an outage: its message goes to the broker, for Celery to retry.
    assert sent(broker) == [(MARSHAL, [10, 1]), (STORE, [9, 2])]
