"""Refused means unchanged: a command that answers an error has changed nothing. With the
broker out of reach, an operation that sends messages (submit, restart, halt) is refused
before any row or file changes, and the others work; with the database out of reach every
operation is refused, no file of the home touched (a receipt copies nothing, a prune
removes nothing)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.errors import PipelineError, Unreachable
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


# -- every operation, the broker or the database down ------------------------------------------


def _delivery(tmp_path: Path) -> tuple[Path, Path]:
    from pipeline.sample.images import write_sample_set

    delivery = tmp_path / "delivery"
    delivery.mkdir()
    return delivery, write_sample_set(delivery, 1)


def _receive(tmp_path: Path) -> Any:
    from pipeline.operations.receipt import receive
    from pipeline.sample.images import RAW_IMAGE

    delivery, manifest = _delivery(tmp_path)
    return receive(delivery, RAW_IMAGE, "set-9", manifest, pipeline="sample")


def _sample_definition() -> Path:
    from pipeline.settings import get_settings

    return next(get_settings().definitions_dir.glob("sample*.yaml"))


#: Every operation that changes something, by name: (the call, given a scratch directory;
#: whether it needs the broker, so that with the broker down it is refused).
OPERATIONS: dict[str, tuple[Callable[[Path], Any], bool]] = {
    "submit": (lambda _: facade.submit("sample"), True),
    "restart-failed": (lambda _: facade.restart_failed(1, "resubmit"), True),
    # A halt holds without the broker (the old attempt's messages are stale) and says
    # that running subtasks were not terminated.
    "halt": (lambda _: facade.halt([1]), False),
    "halt-instance": (lambda _: facade.halt_instance(1), False),
    "import-definitions": (lambda _: facade.import_definitions([_sample_definition()]), False),
    "set-parameters": (
        lambda _: facade.set_parameters("algorithm", ["execution_pause_seconds=1"]),
        False,
    ),
    "prune-datastore": (lambda _: facade.prune_datastore(keep_last=1, keep_since="1d"), False),
    "prune-task-dirs": (lambda _: facade.prune_task_dirs("2000-01-01"), False),
    "receive": (_receive, False),
}


def everything(home: Path) -> Any:
    """What an operation could change: the database's rows an operator reads, and every
    file of the home (its path, size and modification time)."""
    files = sorted(
        (str(p.relative_to(home)), p.stat().st_size, p.stat().st_mtime_ns)
        for p in home.rglob("*")
        if p.is_file() and not p.name.startswith("pipeline.db")
    )
    return files


def rows() -> Any:
    return (
        snapshot(1),
        queries.list_instances(),
        queries.list_alerts(include_acknowledged=True),
        [(p["name"], p["version"]) for p in queries.list_parameter_sets()],
    )


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_with_the_broker_down_an_operation_that_needs_it_is_refused_and_changes_nothing(
    name: str, broker_down: None, failed: Path, tmp_path: Path
) -> None:
    """Those that send messages answer an error and change nothing, rows or files; the
    others work without the broker."""
    call, needs_broker = OPERATIONS[name]
    before = rows(), everything(failed)
    if not needs_broker:
        try:
            call(tmp_path)
        except PipelineError as exc:  # refused for its own reason (nothing runs to halt)
            assert "broker" not in str(exc)
            assert (rows(), everything(failed)) == before
        return
    with pytest.raises(PipelineError) as refused:
        call(tmp_path)
    assert "\n" not in str(refused.value)
    assert (rows(), everything(failed)) == before


@pytest.mark.parametrize("name", sorted(OPERATIONS))
def test_with_the_database_down_every_operation_is_refused_and_changes_no_file(
    name: str, failed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    call, _ = OPERATIONS[name]
    before = everything(failed)
    monkeypatch.setenv(
        "PIPELINE_DATABASE_URL", f"postgresql+psycopg://pipe:secret@127.0.0.1:{free_port()}/db"
    )
    point_here()
    with pytest.raises(
        Unreachable, match=r"^database unreachable at postgresql\+psycopg://pipe:\*\*\*@"
    ):
        call(tmp_path)
    assert everything(failed) == before
