"""Restart modes and halt on the sample pipeline, in this process: which subtasks really ran
again, what was stored, what each task shows, and what a refusal left unchanged."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.engine import dispatch
from pipeline.messaging import messages as sent
from pipeline.operations import facade, lineage, outcomes, problems, queries
from pipeline.sample.images import raw_image_path
from tests.support import InProcessWorker, assert_sample_outputs, race, snapshot


def attempts(task_id: int) -> list[int]:
    return [s["attempts"] for s in queries.list_subtasks(task_id)]


def messages(task_id: int) -> list[str]:
    return [e["message"] for e in queries.get_task(task_id)["history"]]


def failing(worker: InProcessWorker) -> tuple[int, list[dict]]:
    """An instance of the permuter node whose tasks end ERROR - ALGORITHM_COMPLETE, 3/4 (1)
    (the ``failed`` home has one of the whole sample, ready made)."""
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    return instance, failed_tasks(instance)


def failed_tasks(instance: int = 1) -> list[dict]:
    """The instance's failed permuter tasks."""
    tasks = queries.list_tasks(instance)
    assert {(t["state"], t["counts"]) for t in tasks} == {("ERROR - ALGORITHM_COMPLETE", "3/4 (1)")}
    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"
    return tasks


def outputs(task_id: int) -> dict[str, int]:
    task_dir = Path(queries.get_task(task_id)["task_dir"])
    return {
        str(p.relative_to(task_dir)): p.stat().st_mtime_ns for p in task_dir.glob("st-*/*-perm.png")
    }


def test_resubmit_reruns_only_the_failed_subtask_and_it_fails_again(
    failed: Path, worker: InProcessWorker
) -> None:
    instance, tasks = 1, failed_tasks()
    first, second = tasks[0]["id"], tasks[1]["id"]
    good = outputs(first)
    assert sorted(good) == [f"st-{i}/nasa-logo-file-{i}-perm.png" for i in (1, 2, 3)]

    consumed = [s["consumed"] for s in queries.list_subtasks(first)]
    [outcome] = facade.restart([first], "resubmit").outcomes
    assert (outcome.ok, outcome.start_from, outcome.subtasks) == (True, "ALGORITHM_SUBMITTING", [0])
    worker.drain()
    assert [s["consumed"] for s in queries.list_subtasks(first)] == consumed, "the same inputs"

    assert attempts(first) == [2, 1, 1, 1], "only subtask 0 ran again"
    assert attempts(second) == [1, 1, 1, 1], "the other task was not restarted"
    assert outputs(first) == good, "successful subtasks untouched"
    task = queries.get_task(first)
    assert (task["state"], task["counts"], task["attempt"]) == (
        "ERROR - ALGORITHM_COMPLETE",
        "3/4 (1)",
        2,
    )
    assert "restart: resubmit" in messages(first)
    assert not list((failed / "datastore").glob("set-*/L1/*")), (
        "parameters are frozen: it fails again"
    )
    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"


def test_resume_current_step_stores_the_good_subtasks_and_the_instance_goes_on(
    failed: Path, worker: InProcessWorker
) -> None:
    instance, tasks = 1, failed_tasks()
    dry = facade.restart_failed(instance, "resume-current-step", dry_run=True)
    assert [(o.task_id, o.start_from) for o in dry.outcomes] == [
        (t["id"], "STORING") for t in tasks
    ]
    assert queries.list_tasks(instance) == tasks and not worker.queue, "a dry run changes nothing"

    facade.restart_failed(instance, "resume-current-step")
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    final = {(t["node"], t["unit_of_work"]): t for t in queries.list_tasks(instance)}
    for unit in ("set-1", "set-2"):
        assert (final[("permuter", unit)]["state"], final[("permuter", unit)]["counts"]) == (
            "COMPLETE",
            "3/4 (1)",
        )
        assert final[("flip", unit)]["counts"] == "3/3 (0)"
        assert final[("averaging", unit)]["counts"] == "1/1 (0)"
    for task in tasks:
        assert attempts(task["id"]) == [1, 1, 1, 1], "nothing ran again"
    assert_sample_outputs(failed / "datastore", {"set-1": (1, 2, 3), "set-2": (1, 2, 3)})


@pytest.mark.parametrize(
    ("mode", "reran"),
    # Marshaling again makes the subtasks anew: each has run once since.
    [("resubmit", [2, 1, 1, 1]), ("restart-from-beginning", [1, 1, 1, 1])],
)
def test_a_complete_task_with_abandoned_subtasks_can_be_restarted(
    failed: Path, worker: InProcessWorker, mode: str, reran: list[int]
) -> None:
    """resume-current-step left the permuter tasks COMPLETE, 3/4 (1): still restartable
    (Ziggy's seed: resubmit reruns the failed subtask, which fails again)."""
    instance, tasks = 1, failed_tasks()
    assert facade.restart_failed(instance, "resume-current-step").ok
    worker.drain()
    first = tasks[0]["id"]
    assert queries.get_task(first)["state"] == "COMPLETE"
    [outcome] = facade.restart([first], mode).outcomes
    assert outcome.ok, outcome.message
    worker.drain()
    assert attempts(first) == reran
    task = queries.get_task(first)
    assert (task["state"], task["counts"], task["attempt"]) == (
        "ERROR - ALGORITHM_COMPLETE",
        "3/4 (1)",
        3,
    )


def test_restart_from_beginning_marshals_again_and_reruns_everything(
    failed: Path, worker: InProcessWorker
) -> None:
    first = failed_tasks()[0]["id"]
    datastore = failed / "datastore"
    shutil.copy(raw_image_path(datastore, "set-1", 3), raw_image_path(datastore, "set-1", 4))

    [outcome] = facade.restart([first], "restart-from-beginning").outcomes
    assert (outcome.start_from, outcome.subtasks) == ("INITIALIZING", [0, 1, 2, 3])
    worker.drain()

    task = queries.get_task(first)
    assert (task["state"], task["counts"]) == ("ERROR - ALGORITHM_COMPLETE", "4/5 (1)")
    subtasks = queries.list_subtasks(first)
    assert subtasks[-1]["inputs"] == ["nasa-logo-file-4.png"], "inputs looked up again"
    assert subtasks[-1]["consumed"] == ["set-1/L0/nasa-logo-file-4.png"]
    found = lineage.files(path="set-1/L0/nasa-logo-file-4.png")
    assert [(f["origin"], f["sha256"]) for f in found] == [
        ("found", lineage.files(path="set-1/L0/nasa-logo-file-3.png")[0]["sha256"])
    ], "a file put in the datastore by hand is recorded as found when first consumed"
    assert all(s["attempts"] == 1 for s in subtasks), "earlier outcomes forgotten"
    assert [e["p_state"] for e in task["history"]].count("MARSHALING") == 2
    assert task["task_dir"].endswith("-attempt2"), "a task directory per attempt"


def test_a_failed_store_is_resumed_and_a_resubmit_of_all_good_subtasks_refused(
    worker: InProcessWorker, home: Path
) -> None:
    blocker = home / "datastore" / "set-1" / "L1"
    blocker.write_text("not a directory")  # storing into set-1/L1 fails
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    [task] = [t for t in queries.list_tasks(instance) if t["error"]]
    assert (task["state"], task["counts"]) == ("ERROR - STORING", "4/4 (0)")
    assert "storing failed" in task["error_message"]
    # The Celery task that ran the store (after the last subtask) ended as a failure.
    assert [f"task {task['id']}: storing failed" in text for text in worker.failed.values()] == [
        True
    ]

    [refused] = facade.restart([task["id"]], "resubmit").outcomes
    assert not refused.ok and refused.message == (
        f"every subtask of task {task['id']} already succeeded: nothing to resubmit"
        " (restart-from-beginning runs them all again)"
    )
    blocker.unlink()
    facade.restart([task["id"]], "resume-current-step")
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert attempts(task["id"]) == [1, 1, 1, 1]
    assert len(list(blocker.iterdir())) == 4


def test_a_failed_marshal_is_resumed_by_marshaling_again(
    worker: InProcessWorker, home: Path
) -> None:
    blocker = home / "tasks" / "1-1-permuter-attempt1"  # the first task's directory is taken
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("in the way")
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    task = queries.get_task(1)
    assert task["state"] == "ERROR - MARSHALING" and "marshaling failed" in task["error_message"]
    [(message_id, text)] = worker.failed.items()
    assert text.startswith("task 1: marshaling failed")
    assert next(m.name for m in worker.published if m.id == message_id) == "pipeline.stage.marshal"
    [refused] = facade.restart([1], "resubmit").outcomes
    assert "failed while marshaling" in refused.message

    [outcome] = facade.restart([1], "resume-current-step").outcomes
    assert outcome.start_from == "INITIALIZING"
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert queries.get_task(1)["counts"] == "4/4 (0)"


def test_refusals_are_reported_and_change_nothing_while_the_valid_restarts_go_ahead(
    failed: Path, worker: InProcessWorker
) -> None:
    tasks = failed_tasks()
    first, second = tasks[0]["id"], tasks[1]["id"]
    before = queries.get_task(second)

    report = facade.restart([f"{first}:resubmit", "999"], "resume-current-step")
    assert not report.ok
    ok, missing = report.outcomes
    assert (ok.task_id, ok.mode, ok.ok) == (first, "resubmit", True)
    assert (missing.task_id, missing.ok, missing.message) == (999, False, "unknown task 999")

    [refused] = facade.restart([second], "resubmit", {"throw_exception_subtask_0": False}).outcomes
    assert not refused.ok and refused.message.startswith(
        "throw_exception_subtask_0 is an algorithm parameter: a restart reruns with the"
        " instance's frozen values; change the parameter set (pipeline params set) and submit"
    )
    [unknown] = facade.restart([second], "resubmit", {"color": "red"}).outcomes
    assert unknown.message.startswith("unknown execution setting 'color' (one of batch, batch_")
    # A value no task could take is refused for the whole request, before any task.
    with pytest.raises(problems.PROBLEMS, match="execution setting priority: Input should be less"):
        facade.restart([second], "resubmit", {"priority": 12})
    assert queries.get_task(second) == before, "a refused restart changes nothing"
    with pytest.raises(problems.PROBLEMS, match="unknown restart mode 'sideways'"):
        facade.restart([second], "sideways")

    worker.drain()
    assert attempts(first) == [2, 1, 1, 1], "the valid restart went ahead"
    assert attempts(second) == [1, 1, 1, 1]


def test_max_failed_subtasks_given_with_a_restart_lets_the_tasks_complete(
    failed: Path, worker: InProcessWorker
) -> None:
    instance, tasks = 1, failed_tasks()
    facade.restart_failed(instance, "resubmit", {"max_failed_subtasks": 1})
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    for task in tasks:
        detail = queries.get_task(task["id"])
        assert (detail["state"], detail["counts"]) == ("COMPLETE", "3/4 (1)")
        assert detail["execution"]["max_failed_subtasks"] == 1
        assert "restart: resubmit with max_failed_subtasks=1" in messages(task["id"])
        assert attempts(task["id"]) == [2, 1, 1, 1]


def test_automatic_resubmits_rerun_the_failed_subtask_before_the_error_flag(
    failed: Path, worker: InProcessWorker
) -> None:
    tasks = failed_tasks()
    first = tasks[0]["id"]
    facade.restart([first], "resubmit", {"max_auto_resubmits": 2})
    worker.drain()

    detail = queries.get_task(first)
    assert (detail["state"], detail["attempt"]) == ("ERROR - ALGORITHM_COMPLETE", 4)
    assert {"automatic resubmit 1", "automatic resubmit 2"} <= set(messages(first))
    assert attempts(first) == [4, 1, 1, 1]


def test_halted_tasks_drop_their_queued_work_and_resume_where_they_stopped(
    home: Path,
    worker: InProcessWorker,
) -> None:
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()  # task 1 marshaled: its four subtask messages are queued
    worker.run_next()  # task 2 marshaled
    worker.run_next()  # one subtask of task 1 ran
    queued = {m.id for m in worker.queue}

    report = facade.halt_instance(instance)
    assert [(o.task_id, o.ok) for o in report.outcomes] == [(1, True), (2, True)]
    assert [o.message for o in report.outcomes] == [
        "halted at ALGORITHM_EXECUTING",
        "halted at ALGORITHM_QUEUED",
    ]
    assert set(worker.revoked) == queued and not worker.queue, "every queued message revoked"
    for task in queries.list_tasks(instance):
        assert task["error"] and task["halted"] and task["error_message"] == "halted by operator"
        assert {s["state"] for s in queries.list_subtasks(task["id"])} <= {"NEW", "COMPLETE"}
    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"
    [again] = facade.halt([1]).outcomes
    assert (
        not again.ok and again.message == "task 1 is already stopped (ERROR - ALGORITHM_EXECUTING)"
    )

    facade.restart_failed(instance, "resume-current-step")
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert attempts(1) == [1, 1, 1, 1] and attempts(2) == [1, 1, 1, 1], "each subtask ran once"
    assert "error: halted by operator" in messages(
        1
    ) and "restart: resume-current-step" in messages(1)


def test_of_ten_operators_restarting_a_task_at_once_one_starts_its_chain(
    any_database: str, worker: InProcessWorker
) -> None:
    _, tasks = failing(worker)
    first = tasks[0]["id"]
    reports: list[outcomes.Report] = []
    race(lambda: reports.append(facade.restart([first], "resubmit")), threads=10)

    outcomes = [report.outcomes[0] for report in reports]
    assert sum(o.ok for o in outcomes) == 1, outcomes
    assert {o.message for o in outcomes if not o.ok} == {
        f"task {first} is running (ALGORITHM_QUEUED): only failed tasks can be restarted"
    }
    rerun = [m.args for m in worker.published if m.args[:2] == [first, 2]]
    assert rerun == [[first, 2, 0, 2]], "one chain: subtask 0 dispatched once more"
    worker.drain()
    assert queries.get_task(first)["attempt"] == 2
    assert messages(first).count("restart: resubmit") == 1
    assert attempts(first) == [2, 1, 1, 1]


def test_resume_monitoring_dispatches_only_what_the_broker_lost(
    home: Path, worker: InProcessWorker
) -> None:
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.run_next()
    worker.run_next()  # both tasks marshaled, eight subtask messages queued
    lost = worker.lose(keep=lambda message: message.args[0] == 2)  # the broker loses task 1's

    dry = facade.restart([1, 2], "resume-monitoring", dry_run=True)
    assert [o.subtasks for o in dry.outcomes] == [[0, 1, 2, 3], [0, 1, 2, 3]], "in flight"
    report = facade.restart([1, 2], "resume-monitoring")
    assert [(o.ok, o.subtasks, o.message) for o in report.outcomes] == [
        (True, [0, 1, 2, 3], "0 alive, 4 lost"),
        (True, [], "4 alive, 0 lost"),
    ]
    assert len(lost) == 4 and len(worker.queue) == 8
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert attempts(1) == [1, 1, 1, 1] and attempts(2) == [1, 1, 1, 1], "each subtask ran once"
    assert "restart: resume-monitoring, 0 alive, 4 lost" in messages(1)
    assert [a["message"] for a in queries.list_alerts()] == [
        "4 subtask messages lost (restart: resume-monitoring): dispatched again"
    ]
    [refused] = facade.restart([1], "resume-monitoring").outcomes
    assert refused.message.startswith("task 1 is not executing (COMPLETE)")


@pytest.mark.slow  # runs 22 tasks
def test_a_restart_of_many_tasks_sends_every_stage_message_at_once(
    worker: InProcessWorker, home: Path
) -> None:
    """One transaction restarts them all, and their 22 stage messages go out together once
    it commits (over Redis, handed on to a worker in one fan-out message: see
    ``test_decisions``)."""
    datastore = home / "datastore"
    image = raw_image_path(datastore, "set-1", 0).read_bytes()
    shutil.rmtree(datastore)
    for unit in range(22):  # 22 units of work of one image each
        target = raw_image_path(datastore, f"set-{unit}", 0)
        target.parent.mkdir(parents=True)
        target.write_bytes(image)
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    assert queries.get_instance(instance)["state"] == "ERRORS_STALLED"

    published = len(worker.published)
    report = facade.restart_failed(instance, "resume-current-step")
    assert report.ok and len(report.outcomes) == 22
    assert worker.names()[published:] == ["store"] * 22
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    assert {t["counts"] for t in queries.list_tasks(instance)} == {"0/1 (1)"}


def test_transition_failed_is_restarted_by_retrying_the_transition(
    worker: InProcessWorker, home: Path, tmp_path: Path
) -> None:
    """flip reads a data file type nothing produces: creating its tasks fails until it exists."""
    from pipeline.settings import PACKAGED_DEFINITIONS

    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    chain = tmp_path / "chain.yaml"
    chain.write_text(
        text.replace("name: sample", "name: chain")
        .replace("    inputs: [permuted_image]", "    inputs: [extra_image]")
        .replace(
            "data_file_types:\n",
            'data_file_types:\n  extra_image: {location: "{dataset}/EXTRA", pattern: "*.png"}\n',
        )
    )
    facade.import_definitions([chain])
    instance = facade.submit("chain")["id"]
    worker.drain()
    summary = queries.get_instance(instance)
    assert summary["state"] == "TRANSITION_FAILED"
    assert "node 'flip' finds no extra_image files" in summary["message"]

    extra = home / "datastore" / "set-1" / "EXTRA"
    extra.mkdir()
    shutil.copy(raw_image_path(home / "datastore", "set-1", 0), extra / "a-perm.png")
    [outcome] = facade.restart_failed(instance, "resubmit").outcomes
    assert (outcome.mode, outcome.ok) == ("retry-transition", True)
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"
    nodes = sorted((t["node"], t["unit_of_work"]) for t in queries.list_tasks(instance))
    assert ("flip", "set-1") in nodes and ("flip", "set-2") not in nodes


def test_a_failed_subtask_of_a_batch_is_recorded_alone_and_resubmitted_alone(
    failed: Path, worker: InProcessWorker
) -> None:
    instance, tasks = 1, failed_tasks()
    first = tasks[0]["id"]
    before = snapshot(instance)
    facade.restart([first], "restart-from-beginning", {"batch_size": 4})
    worker.drain()
    assert "4 subtasks queued in 1 message" in messages(first)
    assert [s["state"] for s in queries.list_subtasks(first)] == [
        "FAILED",
        "COMPLETE",
        "COMPLETE",
        "COMPLETE",
    ]
    assert queries.get_task(first)["counts"] == "3/4 (1)"

    facade.restart([first], "resubmit")
    worker.drain()
    assert attempts(first) == [2, 1, 1, 1], "the failed one alone ran again"
    assert snapshot(instance) != before


def test_a_restart_of_many_small_tasks_sends_their_subtasks_together(
    worker: InProcessWorker, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Tasks that each run one subtask again share messages, each subtask claimed, run and
    recorded as its own task's (a restart of 1,000 such tasks sends about 100 messages)."""
    instance, tasks = failing(worker)
    monkeypatch.setattr(dispatch, "AUTO_BATCH_MESSAGES", 1)  # two tasks count as many
    published = len(worker.published)
    assert facade.restart_failed(instance, "resubmit").ok
    [group] = worker.published[published:]
    assert group.name == sent.GROUP
    assert sorted(entry[0] for entry in group.args[0]) == [t["id"] for t in tasks]
    worker.drain()
    assert [attempts(t["id"]) for t in tasks] == [[2, 1, 1, 1]] * 2
    assert failed_tasks(instance)  # subtask 0 failed again: its parameters are frozen


def test_halting_a_task_leaves_the_message_it_shares_to_the_others(
    worker: InProcessWorker, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The shared message is not revoked: the halted task's subtask in it is skipped."""
    instance, tasks = failing(worker)
    monkeypatch.setattr(dispatch, "AUTO_BATCH_MESSAGES", 1)
    assert facade.restart_failed(instance, "resubmit").ok
    halted, other = (t["id"] for t in tasks)
    assert facade.halt([halted]).ok
    assert worker.revoked == []
    worker.drain()
    assert attempts(halted) == [1, 1, 1, 1] and attempts(other) == [2, 1, 1, 1]
    assert queries.get_task(halted)["state"] == "ERROR - ALGORITHM_QUEUED"


def test_a_halted_tasks_running_subtask_is_no_longer_its_workers_at_renewal(
    worker: InProcessWorker, home: Path
) -> None:
    """What stops a subtask running inside a shared message once its task is halted."""
    from pipeline.engine import stages
    from pipeline.engine.leases import Claim, renew_subtask_leases

    _, tasks = failing(worker)
    task = tasks[0]["id"]
    assert facade.restart([task], "resubmit").ok
    [message] = worker.queue
    claims = [Claim(task, 2, 0, message.args[-1])]
    assert stages.begin_subtasks(claims)
    assert renew_subtask_leases(claims) == {(task, 0)}
    assert facade.halt([task]).ok
    assert renew_subtask_leases(claims) == set()


def test_a_shared_message_takes_one_transaction_to_claim_and_one_to_record(
    worker: InProcessWorker, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What makes a restart of many small tasks quick: a shared message's subtasks are
    claimed together and their outcomes recorded together (with each task's decision and
    the instance state), each outcome still its own task's."""
    from sqlalchemy import event

    from pipeline.database import engine_for
    from pipeline.engine import stages
    from pipeline.settings import get_settings

    instance, tasks = failing(worker)
    monkeypatch.setattr(dispatch, "AUTO_BATCH_MESSAGES", 1)
    monkeypatch.setattr(stages, "RECORD_EVERY_SECONDS", 3600.0)  # none recorded mid-message
    assert facade.restart_failed(instance, "resubmit").ok
    [group] = worker.queue
    commits: list[object] = []
    engine, counted = engine_for(get_settings().db_url), commits.append
    event.listen(engine, "commit", counted)
    try:
        worker.run_next()
    finally:
        event.remove(engine, "commit", counted)
    assert len(commits) == 2, "one claim and one record for the whole message"
    assert [attempts(t["id"]) for t in tasks] == [[2, 1, 1, 1]] * 2
    assert failed_tasks(instance)  # each failed again, the instance ERRORS_STALLED again
    for task in tasks:
        assert f"task {task['id']} subtask 0: RuntimeError" in worker.failed[group.id]


def test_a_batch_halted_while_it_runs_stops_at_its_next_renewal(
    worker: InProcessWorker, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The renewal that finds a running batch's subtasks no longer its worker's stops the
    one running and runs none of the rest; the message ends without an error of its own."""
    import threading

    from tests.support import point_here, wait_for

    monkeypatch.setenv("PIPELINE_LEASE_SECONDS", "0.3")  # a renewal every 0.1 s
    point_here()
    monkeypatch.setattr(dispatch, "AUTO_BATCH_MESSAGES", 1)  # the task's 4 subtasks in 1 message
    facade.set_parameters("algorithm", ["execution_pause_seconds=600"])
    facade.submit("sample", None, "permuter")
    worker.run_next()
    [batch] = [m for m in worker.queue if m.name == sent.SUBTASKS]
    worker.lose(keep=lambda message: message is batch)
    task = batch.args[0]

    def halt_once_running() -> None:
        wait_for(lambda: queries.get_task(task)["state"] == "ALGORITHM_EXECUTING", 60, "running")
        assert facade.halt([task]).ok

    halting = threading.Thread(target=halt_once_running)
    halting.start()
    worker.run_next()
    halting.join()
    assert queries.get_task(task)["state"] == "ERROR - ALGORITHM_EXECUTING"
    assert [s["state"] for s in queries.list_subtasks(task)] == ["NEW"] * 4
    task_dir = Path(queries.get_task(task)["task_dir"])
    assert [p.parent.name for p in sorted(task_dir.glob("st-*/*.log"))] == ["st-0"], (
        "only the subtask running at the halt started"
    )


def test_a_task_done_inside_a_shared_message_goes_on_before_the_message_ends(
    worker: InProcessWorker, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its store goes to the broker once its outcome is recorded, for any worker to run,
    rather than waiting behind the other tasks' subtasks in the message."""
    from pipeline.engine import stages

    instance, tasks = failing(worker)
    monkeypatch.setattr(dispatch, "AUTO_BATCH_MESSAGES", 1)
    monkeypatch.setattr(stages, "RECORD_EVERY_SECONDS", 0.0)  # each outcome recorded at once
    assert facade.restart_failed(instance, "resubmit", {"max_failed_subtasks": 1}).ok
    first, second = (t["id"] for t in tasks)
    stores: list[tuple[int, str]] = []  # (task stored, the other task's subtask 0 then)
    publish = worker.broker.publish

    def watching(published: list) -> None:
        for message in published:
            if message.name == sent.STORE:
                stores.append((message.args[0], queries.list_subtasks(second)[0]["state"]))
        publish(published)

    monkeypatch.setattr(worker.broker, "publish", watching)
    worker.run_next()
    assert stores == [(first, "RUNNING")], "the first task's store left before the second ran"
    worker.drain()
    assert [queries.get_task(t)["state"] for t in (first, second)] == ["COMPLETE"] * 2


def test_a_task_halted_while_a_shared_message_runs_does_not_start_there(
    worker: InProcessWorker, home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The message's subtasks were claimed together; the halted task's is not started
    once the worker has seen the halt (here: at the record of the task before it)."""
    from pipeline.engine import stages

    instance, tasks = failing(worker)
    monkeypatch.setattr(dispatch, "AUTO_BATCH_MESSAGES", 1)
    monkeypatch.setattr(stages, "RECORD_EVERY_SECONDS", 0.0)
    assert facade.restart_failed(instance, "resubmit").ok
    first, second = (t["id"] for t in tasks)
    log = Path(queries.get_task(second)["task_dir"]) / "st-0" / "subtask.log"
    logged = log.read_text()
    finish = stages.finish_subtasks

    def halting_first(ended: list, *args: object) -> set[int]:
        if [claim.task_id for claim, _ in ended] == [first]:
            assert facade.halt([second]).ok  # while the first task's outcome is recorded
        return finish(ended, *args)

    monkeypatch.setattr(stages, "finish_subtasks", halting_first)
    worker.run_next()
    assert log.read_text() == logged, "the halted task's algorithm did not run again"
    assert queries.get_task(second)["state"] == "ERROR - ALGORITHM_EXECUTING"
    assert attempts(first) == [2, 1, 1, 1]
