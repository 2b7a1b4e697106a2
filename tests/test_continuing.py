"""A worker continues a task's chain itself: execute, monitor and store need no message."""

from __future__ import annotations

from typing import Any

import pytest

from pipeline import dispatch
from pipeline.errors import Unreachable
from workers import stages


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, list[Any]]]:
    """What reaches the broker, recorded instead of sent."""
    sent: list[tuple[str, list[Any]]] = []
    monkeypatch.setattr(
        dispatch, "_publish", lambda messages: sent.extend((m[0], m[1]) for m in messages)
    )
    return sent


def test_continued_stages_are_held_back_others_are_sent(published) -> None:
    with dispatch.continuing() as held:
        dispatch.send(dispatch.EXECUTE, [4, 1], {})
        dispatch.send(dispatch.MARSHAL, [5, 1], {})
        dispatch.send(dispatch.MONITOR, [4, 1], {})
    dispatch.send(dispatch.STORE, [4, 1], {})  # outside any stage: a message as always
    assert [(name, args) for name, args, _ in held] == [
        (dispatch.EXECUTE, [4, 1]),
        (dispatch.MONITOR, [4, 1]),
    ]
    assert published == [(dispatch.MARSHAL, [5, 1]), (dispatch.STORE, [4, 1])]


def test_a_worker_runs_the_chain_on_and_hands_an_outage_to_the_broker(
    published, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[tuple[str, int]] = []

    def execute(task_id: int, attempt: int, host: str = "") -> None:
        ran.append(("execute", task_id))
        dispatch.send(dispatch.MONITOR, [task_id, attempt], {"queue": "q"})

    def monitor(task_id: int, attempt: int, host: str = "") -> None:
        ran.append(("monitor", task_id))
        dispatch.send(dispatch.STORE, [task_id, attempt], {"queue": "q"})

    def store(task_id: int, attempt: int, host: str = "") -> None:
        raise Unreachable("database unreachable at sqlite:///x")

    monkeypatch.setitem(stages.CONTINUED_STAGES, dispatch.EXECUTE, execute)
    monkeypatch.setitem(stages.CONTINUED_STAGES, dispatch.MONITOR, monitor)
    monkeypatch.setitem(stages.CONTINUED_STAGES, dispatch.STORE, store)
    monkeypatch.setattr(stages, "retrying", lambda: lambda function: function)

    stages._continue([(dispatch.EXECUTE, [9, 2], {"queue": "q"})], "worker1@host")

    assert ran == [("execute", 9), ("monitor", 9)]
    # The store met an outage: its message goes to the broker, for Celery to retry.
    assert published == [(dispatch.STORE, [9, 2])]
