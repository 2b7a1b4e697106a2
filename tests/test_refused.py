"""Refused means unchanged: a command that answers an error has changed nothing. With the
broker out of reach, a restart or a halt is refused before any task moves."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import Unreachable
from pipeline.messaging.broker import CeleryPublisher
from pipeline.messaging.publisher import use_publisher
from pipeline.operations import facade, queries
from tests.support import free_port, point_here, snapshot


@pytest.fixture
def broker_down(failed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The failed home's instance 1, its broker a closed port on this host."""
    monkeypatch.setenv("PIPELINE_BROKER_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("PIPELINE_BROKER_TIMEOUT", "1")
    point_here()
    previous = use_publisher(CeleryPublisher())
    try:
        yield
    finally:
        use_publisher(previous)


@pytest.mark.parametrize(
    "operation",
    [
        lambda: facade.restart_failed(1, "resubmit"),
        lambda: facade.restart([1], "restart-from-beginning"),
        lambda: facade.restart([1, 2], "resume-current-step", downstream=True),
    ],
    ids=["restart-failed", "restart", "restart-downstream"],
)
def test_a_restart_with_the_broker_down_is_refused_and_changes_nothing(
    broker_down: None, operation: Callable[[], Any]
) -> None:
    before = snapshot(1), queries.get_instance(1)["state"]
    with pytest.raises(Unreachable, match="broker unreachable at redis://127.0.0.1:"):
        operation()
    assert (snapshot(1), queries.get_instance(1)["state"]) == before


def test_a_dry_run_needs_no_broker(broker_down: None) -> None:
    [outcome, _] = facade.restart_failed(1, "resubmit", dry_run=True).as_dicts()
    assert outcome["ok"]
