"""A store that dies halfway through placing its outputs, in this process: at every
instant each path shows its current version or one being placed, the store sent again
finishes the work, and a store whose task moved on is withdrawn by the reconciler. (The
kill -9 of a real worker during a large store is in test_lost_work.)"""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select, update

from pipeline.database import transaction
from pipeline.domain.models import DatastoreFile, Task, utcnow
from pipeline.engine import datastore, datastore_ledger
from pipeline.operations import facade, lineage, queries, receipt
from pipeline.recovery import reconcile
from pipeline.sample.images import pixels
from tests.support import InProcessWorker
from tests.test_lineage import deliver

pytestmark = pytest.mark.usefixtures("home")


class Died(BaseException):
    """The worker process dying mid-store (nothing after it runs, nothing is rolled back
    but the open transaction)."""


def disagreements(root: Path) -> list[str]:
    """Every path whose bytes are neither its current version's nor one being placed, and
    every current version its path does not show (empty: the ledger describes the disk)."""
    with transaction() as session:
        rows = session.execute(
            select(
                DatastoreFile.path,
                DatastoreFile.sha256,
                DatastoreFile.superseded_at,
                DatastoreFile.placing,
                DatastoreFile.origin,
            )
        ).all()
    allowed: dict[str, set[str]] = {}
    for path, sha, superseded, placing, _ in rows:
        if superseded is None or placing:
            allowed.setdefault(path, set()).add(sha)
    wrong = []
    for path, shas in allowed.items():
        on_disk = root / path
        actual = hashlib.sha256(on_disk.read_bytes()).hexdigest() if on_disk.exists() else None
        if actual not in shas:
            wrong.append(f"{path}: {actual} not in {sorted(shas)}")
    return wrong


def pending_rows() -> int:
    with transaction() as session:
        return len(session.scalars(select(DatastoreFile.id).where(DatastoreFile.placing)).all())


def dies_halfway(monkeypatch: pytest.MonkeyPatch) -> None:
    def place_half(outputs: list[datastore_ledger.StoredOutput]) -> None:
        for output in outputs[: len(outputs) // 2]:
            datastore.place(output.staged)
        raise Died

    monkeypatch.setattr(datastore_ledger, "place_pending", place_half)


@pytest.fixture
def died(
    home: Path, worker: InProcessWorker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> int:
    """Instance 1 stores set-1's permuted images; changed raw images arrive; instance 2's
    permuter store of set-1, other bytes at the same paths, dies after placing half of
    them. Instance 2's set-1 task, left in STORING."""
    facade.submit("sample", None, "permuter")
    worker.drain()
    changed = {f"nasa-logo-file-{i}.png": pixels(8, i) for i in range(4)}
    receipt.receive(deliver(tmp_path, "changed", changed), "raw_image", "set-1")
    second = facade.submit("sample", None, "permuter")["id"]
    dies_halfway(monkeypatch)
    with pytest.raises(Died):
        worker.drain()
    monkeypatch.undo()
    [task] = [t for t in queries.list_tasks(second) if t["state"] == "STORING"]
    return int(task["id"])


def shown(root: Path) -> dict[str, str]:
    return {
        f"set-1/L1/{p.name}": hashlib.sha256(p.read_bytes()).hexdigest()
        for p in (root / "set-1" / "L1").iterdir()
        if p.is_file()
    }


def current(prefix: str = "set-1/L1") -> dict[str, dict[str, Any]]:
    return {f["path"]: f for f in lineage.files() if f["path"].startswith(prefix)}


def age(task_id: int) -> None:
    hour_ago = utcnow() - timedelta(hours=1)
    with transaction() as session:
        session.execute(update(Task).where(Task.id == task_id).values(updated_at=hour_ago))
        session.execute(
            update(DatastoreFile).where(DatastoreFile.placing).values(stored_at=hour_ago)
        )


def test_a_store_that_died_halfway_is_finished_by_the_store_sent_again(
    home: Path, worker: InProcessWorker, died: int
) -> None:
    root = home / "datastore"
    assert pending_rows() == 4
    assert disagreements(root) == [], "each path shows its current version or one being placed"
    versions = current()
    assert sum(shown(root)[path] != f["sha256"] for path, f in versions.items()) == 2, "half"

    age(died)
    assert reconcile.reconcile_once()["resent"] >= 1
    worker.drain()
    assert queries.get_task(died)["state"] == "COMPLETE"
    assert pending_rows() == 0
    assert disagreements(root) == []
    versions = current()
    assert {f["task_id"] for f in versions.values()} == {died}
    assert shown(root) == {path: f["sha256"] for path, f in versions.items()}
    assert not (root / "set-1" / "L1" / datastore.STAGING_DIR).exists(), "no staging left"


def test_a_store_whose_task_moved_on_is_withdrawn_by_the_reconciler(
    home: Path, worker: InProcessWorker, died: int
) -> None:
    root = home / "datastore"
    before = {path: f["sha256"] for path, f in current().items()}
    facade.halt([died])  # the operator stops it: this attempt will never store
    age(died)

    assert reconcile.reconcile_once()["withdrawn"] == 4
    assert pending_rows() == 0
    assert disagreements(root) == []
    assert shown(root) == before, "the paths show instance 1's versions again"


def test_a_subtask_run_again_over_outputs_it_kept_leaves_their_bytes_intact(
    home: Path, worker: InProcessWorker, tmp_path: Path
) -> None:
    """A subtask keeps its outputs as it ends; its worker dies before the outcome is
    recorded, and the subtask runs again in the same directory, writing the same output
    name with other bytes: the bytes kept by the first run stay what their name says."""
    from pipeline.engine import runner, stages
    from pipeline.engine.leases import Claim
    from tests.test_recovery import age as age_subtasks
    from tests.test_versions import DEFINITION

    definition = tmp_path / "runs.yaml"
    definition.write_text(
        DEFINITION.replace("tests.algorithms:scribble", "tests.algorithms:count_runs")
    )
    facade.import_definitions([definition])
    root = home / "datastore"
    (root / "u1" / "in").mkdir(parents=True)
    (root / "u1" / "in" / "a.txt").write_text("a")
    facade.submit("scribbling")
    worker.run_next()  # marshaled: the subtask's message is queued
    [message] = worker.queue
    task_id = message.args[0]
    worker.queue.remove(message)
    [run] = stages.begin_subtasks([Claim(task_id, 1, 0, 1)], host="worker9@gone")
    first = stages.checked_outputs(run, runner.run(run.algorithm, run.context, 30))
    [[_, _, sha, *_]] = first.kept
    kept = datastore.object_path(root, sha)
    assert kept.read_text() == "run 1"
    age_subtasks(task_id)

    assert reconcile.reconcile_once()["reclaimed"] == 1
    worker.drain()
    assert queries.get_task(task_id)["state"] == "COMPLETE"
    assert (root / "u1" / "out" / "a.out").read_text() == "run 2"
    assert kept.read_text() == "run 1", "the first run's kept bytes are intact"
    assert hashlib.sha256(kept.read_bytes()).hexdigest() == sha


def until_storing(worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch) -> int:
    """Instance 1 of the sample's permuter, its first store dying before it places
    anything: that task, left in STORING."""

    def dies_first(outputs: list[datastore_ledger.StoredOutput]) -> None:
        raise Died

    instance = facade.submit("sample", None, "permuter")["id"]
    monkeypatch.setattr(datastore_ledger, "place_pending", dies_first)
    with pytest.raises(Died):
        worker.drain()
    monkeypatch.undo()
    [task] = [t for t in queries.list_tasks(instance) if t["state"] == "STORING"]
    return int(task["id"])


def recorded(task_id: int) -> list[tuple[str, str]]:
    """(path, SHA-256) of the rows being placed by the task's store."""
    with transaction() as session:
        rows = session.execute(
            select(DatastoreFile.path, DatastoreFile.sha256).where(
                DatastoreFile.placing, DatastoreFile.task_id == task_id
            )
        )
        return sorted((path, sha) for path, sha in rows)


def test_outputs_recorded_as_their_subtasks_end_are_versions_only_once_stored(
    home: Path, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each subtask's outputs are recorded as it ends (in its outcome's transaction), as
    being placed: not versions, not shown, nothing at their paths, until the store."""
    root = home / "datastore"
    task_id = until_storing(worker, monkeypatch)
    rows = recorded(task_id)
    assert len(rows) == 4, "one row per output, recorded before the store ran"
    assert not any(path in current("") for path, _ in rows), "not versions yet"
    assert not any((root / path).exists() for path, _ in rows), "nothing placed yet"

    age(task_id)
    assert reconcile.reconcile_once()["resent"] >= 1
    worker.drain()
    assert queries.get_task(task_id)["state"] == "COMPLETE"
    assert recorded(task_id) == []
    versions = current("")
    for path, sha in rows:
        assert versions[path]["sha256"] == sha and versions[path]["task_id"] == task_id
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == sha
    assert disagreements(root) == []


def test_outputs_recorded_by_a_task_halted_before_its_store_are_withdrawn(
    home: Path, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = home / "datastore"
    task_id = until_storing(worker, monkeypatch)
    paths = [path for path, _ in recorded(task_id)]
    facade.halt([task_id])  # this attempt will never store
    age(task_id)

    assert reconcile.reconcile_once()["withdrawn"] == 4
    assert recorded(task_id) == []
    assert not any((root / path).exists() for path in paths)
    assert disagreements(root) == []


def test_a_store_keeps_again_outputs_whose_bytes_went_after_their_subtask_ended(
    home: Path, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention removed the bytes a subtask kept as it ended (they named no version yet)
    before its task's store: the store keeps them again from the subtask's directory and
    stores the version recorded."""
    root = home / "datastore"
    task_id = until_storing(worker, monkeypatch)
    rows = recorded(task_id)
    for _, sha in rows:
        datastore.object_path(root, sha).unlink()

    age(task_id)
    assert reconcile.reconcile_once()["resent"] >= 1
    worker.drain()
    assert queries.get_task(task_id)["state"] == "COMPLETE"
    versions = current("")
    for path, sha in rows:
        assert versions[path]["sha256"] == sha
        assert hashlib.sha256(datastore.object_path(root, sha).read_bytes()).hexdigest() == sha
        assert hashlib.sha256((root / path).read_bytes()).hexdigest() == sha
    assert disagreements(root) == []
