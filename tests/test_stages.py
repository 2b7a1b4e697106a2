"""The stages driven in this process (no Redis, no worker processes): the sample pipeline
end to end, the chain's messages, frozen parameters, node selection, fencing, and child
tasks created once however many transitions race."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path

import pytest

from pipeline.engine import stages
from pipeline.engine.leases import Claim
from pipeline.engine.runner import SubtaskOutcome
from pipeline.engine.transitions import advance
from pipeline.messaging import messages
from pipeline.operations import facade, lineage, queries
from pipeline.sample.images import SETS
from pipeline.settings import PACKAGED_DEFINITIONS
from tests.support import (
    IN_PROCESS_HOST,
    SAMPLE_COMPLETED,
    InProcessWorker,
    assert_sample_outputs,
    race,
    roll_back_to_permuter_done,
    rows,
    snapshot,
)

PERMUTER_STEPS = [
    "MARSHALING",
    "ALGORITHM_SUBMITTING",
    "ALGORITHM_QUEUED",
    "ALGORITHM_EXECUTING",
    "ALGORITHM_COMPLETE",
    "STORING",
    "COMPLETE",
]

#: Every test runs over an initialised home of its own, in this process.
pytestmark = pytest.mark.usefixtures("home")


def run(worker: InProcessWorker, *args: str | None) -> int:
    """Submit the sample (from, to nodes) and run it to its end; the instance's id."""
    instance = facade.submit("sample", *args)["id"]
    worker.drain()
    return instance


def test_the_sample_runs_to_completion_with_the_right_pixels(
    worker: InProcessWorker, home: Path
) -> None:
    instance = run(worker)

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    tasks = queries.list_tasks(instance)
    assert rows(tasks) == SAMPLE_COMPLETED
    assert_sample_outputs(home / "datastore")
    permuter = queries.get_task(tasks[0]["id"])
    assert [e["p_state"] for e in permuter["history"]] == PERMUTER_STEPS
    assert {e["host"] for e in permuter["history"]} == {IN_PROCESS_HOST}
    subtasks = queries.list_subtasks(tasks[0]["id"])
    assert [(s["index"], s["state"], s["attempts"]) for s in subtasks] == [
        (i, "COMPLETE", 1) for i in range(4)
    ]
    # A message per marshal and per subtask: execute, monitor and store ran in the worker
    # that finished the step before each.
    assert Counter(worker.names()) == {"marshal": 6, "subtask": 18}


def test_an_exception_in_subtask_0_stalls_the_instance(worker: InProcessWorker, home: Path) -> None:
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = run(worker)

    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"
    tasks = queries.list_tasks(instance)
    assert {t["node"] for t in tasks} == {"permuter"}, "no child tasks after a failed node"
    for task in tasks:
        assert (task["state"], task["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")
        assert task["error_message"] == "1 of 4 subtasks failed (max_failed_subtasks = 0)"
        subtasks = queries.list_subtasks(task["id"])
        assert [s["state"] for s in subtasks] == ["FAILED", "COMPLETE", "COMPLETE", "COMPLETE"]
        assert subtasks[0]["error"] == (
            "RuntimeError: subtask 0 failed on purpose (throw_exception_subtask_0 = true)"
        )
        [log] = queries.logs(task["id"], 0)
        assert "Traceback" in log["text"] and "subtask 0 failed on purpose" in log["text"]
    assert not list((home / "datastore").glob("set-*/L1/*")), "an error flag stores nothing"
    # Each failed subtask's Celery task ended as a failure, with the algorithm's error, once
    # its outcome was recorded; the others succeeded.
    failed = {m.id: m.args for m in worker.published if m.id in worker.failed}
    assert sorted(args[0] for args in failed.values()) == [t["id"] for t in tasks]
    assert {tuple(args[2:3]) for args in failed.values()} == {(0,)}
    for message_id, args in failed.items():
        assert worker.failed[message_id] == (
            f"task {args[0]} subtask 0: RuntimeError: subtask 0 failed on purpose"
            " (throw_exception_subtask_0 = true)"
        )


def test_each_subtask_directory_is_made_by_the_worker_that_runs_it(
    any_database: str, worker: InProcessWorker, home: Path
) -> None:
    """Marshaling makes the task directory only: a subtask's directory, holding read-only
    copies of the versions chosen for it, is made when it first runs (by the worker that
    runs it, not serially by the marshal), and a subtask run again by a resubmit runs in the
    directory it ran in before."""
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()  # the first task's marshal
    [task] = [t for t in queries.list_tasks(instance) if t["state"] != "INITIALIZING"]
    task_dir = Path(queries.get_task(task["id"])["task_dir"])
    assert list(task_dir.iterdir()) == [], "no subtask directory before its subtask runs"

    worker.drain()
    assert sorted(p.name for p in task_dir.iterdir()) == ["st-0", "st-1", "st-2", "st-3"]
    unit = task["unit_of_work"]
    for index in range(4):
        given = task_dir / f"st-{index}" / f"nasa-logo-file-{index}.png"
        stored = home / "datastore" / unit / "L0" / given.name
        assert given.read_bytes() == stored.read_bytes()
        assert os.stat(given).st_ino != os.stat(stored).st_ino, "a copy"
        assert not os.stat(given).st_mode & 0o222, "read-only"
    ran_in = os.stat(task_dir / "st-0").st_ino

    facade.restart([task["id"]], "resubmit")
    worker.drain()
    assert [s["attempts"] for s in queries.list_subtasks(task["id"])] == [2, 1, 1, 1]
    assert os.stat(task_dir / "st-0").st_ino == ran_in, "run again where it ran"
    assert len(queries.logs(task["id"], 0)[0]["text"].split("Traceback")) == 3, "both runs"


def test_a_subtask_whose_inputs_are_gone_when_it_runs_fails_saying_so(
    worker: InProcessWorker, home: Path
) -> None:
    """Between the marshal and the run, the bytes of one subtask's input go (its object
    removed, its path written over): that subtask fails without running, naming them; the
    others run."""
    from pipeline.engine import datastore

    instance = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()  # the first task's marshal
    [task] = [t for t in queries.list_tasks(instance) if t["state"] != "INITIALIZING"]
    path = f"{task['unit_of_work']}/L0/nasa-logo-file-0.png"
    [version] = lineage.files(path=path)
    datastore.object_path(home / "datastore", version["sha256"]).unlink()
    (home / "datastore" / path).unlink()
    (home / "datastore" / path).write_bytes(b"written over")

    worker.drain()
    subtasks = queries.list_subtasks(task["id"])
    assert [(s["state"], s["attempts"]) for s in subtasks] == [
        ("FAILED", 1),
        ("COMPLETE", 1),
        ("COMPLETE", 1),
        ("COMPLETE", 1),
    ]
    assert subtasks[0]["error"] == (
        f"its inputs could not be given: the bytes of {path}"
        f" (version {version['sha256'][:12]}) are no longer kept"
    )
    assert queries.logs(task["id"], 0)[0]["text"] == "", "it did not run"


def test_parameters_are_frozen_at_submit(worker: InProcessWorker) -> None:
    instance = facade.submit("sample", None, "permuter")["id"]
    changed = facade.set_parameters("algorithm", {"throw_exception_subtask_0": True})
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED", "it ran with its own values"
    assert (changed["version"], changed["locked"]) == (2, False)
    assert queries.show_parameter_set("algorithm", 1)["locked"]
    assert queries.get_instance(instance)["parameters"]["algorithm"]["version"] == 1


def test_start_and_end_nodes_and_a_new_definition_version(
    worker: InProcessWorker, home: Path, tmp_path: Path
) -> None:
    first = run(worker, None, "permuter")
    assert not list((home / "datastore").glob("set-*/L2/*"))

    # A changed definition is a new version; the next instance runs it, the first kept its own.
    changed = tmp_path / "sample.yaml"
    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    flip = "    algorithm: pipeline.sample.algorithms:flip\n"
    changed.write_text(text.replace(flip, flip + "    execution: {priority: 3}\n"))
    assert facade.import_definitions([changed]) == [{"name": "sample", "version": 2, "new": True}]
    second = run(worker, "flip")

    tasks = queries.list_tasks(second)
    assert sorted({t["node"] for t in tasks}) == ["averaging", "flip"]
    assert all(t["state"] == "COMPLETE" for t in tasks)
    assert {t["execution"]["priority"] for t in tasks if t["node"] == "flip"} == {3}
    versions = {i["id"]: i["definition_version"] for i in queries.list_instances()}
    assert versions == {first: 1, second: 2}
    assert_sample_outputs(home / "datastore")


# -- fencing ---------------------------------------------------------------------------------


def test_stale_and_duplicate_stage_calls_are_no_ops(completed: Path) -> None:
    [task] = [t for t in queries.list_tasks(1) if t["node"] == "permuter"][:1]
    outputs = {p: p.stat().st_mtime_ns for p in (completed / "datastore").rglob("L1/*")}
    before = snapshot(1)

    for attempt in (0, 1, 2):
        stages.marshal(task["id"], attempt)
        stages.execute(task["id"], attempt)
        claim = Claim(task["id"], attempt, 0, 1)
        assert stages.begin_subtasks([claim]) == []
        stages.finish_subtasks([(claim, SubtaskOutcome(False, "late failure"))])
        stages.monitor(task["id"], attempt)
        stages.store(task["id"], attempt)
    advance(1)

    assert snapshot(1) == before
    assert {p: p.stat().st_mtime_ns for p in (completed / "datastore").rglob("L1/*")} == outputs


def test_duplicate_messages_through_the_worker_change_nothing(
    completed: Path, worker: InProcessWorker
) -> None:
    task = queries.list_tasks(1)[0]
    before = snapshot(1)
    for name in (messages.MARSHAL, messages.EXECUTE, messages.MONITOR, messages.STORE):
        worker.send(name, [task["id"], 1])
    worker.send(messages.SUBTASK, [task["id"], 1, 0, 1])
    worker.send(messages.SUBTASKS, [task["id"], 1, [[1, 1], [2, 1]]])
    assert len(worker.drain()) == 6
    assert snapshot(1) == before


def test_racing_transitions_create_the_child_tasks_once(
    any_database: str, worker: InProcessWorker
) -> None:
    completed = run(worker)
    roll_back_to_permuter_done(completed)
    published = len(worker.published)
    race(lambda: advance(completed))

    children = [t for t in queries.list_tasks(completed) if t["node"] != "permuter"]
    assert sorted((t["node"], t["unit_of_work"]) for t in children) == [
        ("flip", unit) for unit in SETS
    ]
    assert worker.names()[published:] == ["marshal", "marshal"], "one for each new task"


@pytest.mark.parametrize("enabled", [True, False])
def test_a_marshal_runs_without_the_cycle_collector_and_leaves_it_as_it_was(
    worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch, enabled: bool
) -> None:
    """A marshal makes objects by the hundred thousand, rows and file names that form no
    cycle: the cycle collector, which ran 384 times in a marshal of 20,000 files (0.13 to
    0.34 s of 1.2 to 1.8), stays off while it runs, and is as it was after (on in a
    worker; off where a command turned it off for good)."""
    import gc

    instance = facade.submit("sample", None, "permuter")["id"]
    task = queries.list_tasks(instance)[0]
    marshaling, collected = [], []
    unwatched = stages._marshal

    def watched(*args: object) -> stages.Step:
        marshaling.append(True)
        try:
            return unwatched(*args)  # type: ignore[arg-type]
        finally:
            marshaling.pop()

    def count(phase: str, info: dict[str, int]) -> None:
        if phase == "start" and marshaling:
            collected.append(info["generation"])

    monkeypatch.setattr(stages, "_marshal", watched)
    threshold = gc.get_threshold()
    gc.callbacks.append(count)
    gc.set_threshold(1)  # a collection at every new object, were the collector on
    if not enabled:
        gc.disable()
    try:
        stages.marshal(task["id"], 1)
        assert gc.isenabled() == enabled
    finally:
        gc.callbacks.remove(count)
        gc.set_threshold(*threshold)
        gc.enable()
    assert collected == []
    assert queries.get_task(task["id"])["state"] == "ALGORITHM_QUEUED"
