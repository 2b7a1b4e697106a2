"""The operator's operations as Flower runs them, in this process: the Celery operations its
API applies (``workers.operations``) and the forms of its restart page. A mistake is one
line in the result and changes nothing. (Flower itself, its login and its pages in a
browser, are in ``test_flower.py``.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pipeline.messaging.celery_app import celery_app
from pipeline.operations import facade, queries
from tests.support import InProcessWorker


def run(name: str, *args: Any, **kwargs: Any) -> dict[str, Any]:
    """Apply the operation ``name`` as the operations worker would, with JSON arguments."""
    return celery_app().tasks[name].run(*args, **kwargs)


def test_submit_and_restart_as_operations(home: Path, worker: InProcessWorker) -> None:
    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    submitted = run("pipeline.submit", "sample", end_node="permuter")
    assert submitted["ok"] and submitted["tasks"] == [1, 2]
    assert submitted["summary"] == (
        "instance 1 of sample submitted with 2 tasks (INITIALIZED);"
        " not run: flip, averaging (not between the start and end nodes)"
    )
    worker.drain()

    dry = run("pipeline.restart_failed", 1, "resume-current-step", dry_run=True)
    assert (dry["ok"], dry["instance"], dry["dry_run"]) == (True, 1, True)
    restarted = run("pipeline.restart", [1, "2:resume-current-step"], mode="resume-current-step")
    assert restarted["ok"], restarted
    assert [(o["task_id"], o["start_from"]) for o in restarted["outcomes"]] == [
        (1, "STORING"),
        (2, "STORING"),
    ]
    assert restarted["summary"].startswith("task 1 resume-current-step: store the successful")
    worker.drain()
    assert queries.get_instance(1)["state"] == "COMPLETED"


def test_halt_as_an_operation(home: Path, worker: InProcessWorker) -> None:
    facade.submit("sample", None, "permuter")
    worker.run_next()
    halted = run("pipeline.halt", [1])
    [outcome] = halted["outcomes"]
    assert halted["ok"] and (outcome["task_id"], outcome["mode"]) == (1, "halt")
    assert halted["summary"] == "task 1 halt: halted at ALGORITHM_QUEUED"
    assert run("pipeline.halt_instance", 1)["outcomes"][0]["task_id"] == 2


def test_values_out_of_range_are_one_line_results_that_change_nothing(failed: Path) -> None:
    before = queries.list_tasks(1), queries.list_instances()
    for settings, error in [
        ({"subtask_timeout": float("inf")}, "subtask_timeout: Input should be a finite number"),
        (
            {"max_failed_subtasks": 2**63},
            "max_failed_subtasks: Input should be less than or equal to 2147483647",
        ),
        ({"priority": True}, "priority: Value error, true and false are not numbers"),
    ]:
        for name, args in [
            ("pipeline.restart", [[1], "resubmit"]),
            ("pipeline.restart_failed", [1, "resubmit"]),
        ]:
            assert run(name, *args, settings=settings) == {
                "ok": False,
                "error": f"execution setting {error}",
            }, (name, settings)
    assert run("pipeline.submit", "sample", priority=True) == {
        "ok": False,
        "error": "argument priority: Value error, true and false are not numbers",
    }
    assert (queries.list_tasks(1), queries.list_instances()) == before


def test_mistakes_are_one_line_results_that_change_nothing(failed: Path) -> None:
    instance, tasks = 1, [1, 2]
    before = queries.list_tasks(instance)
    modes = ", ".join(mode.name for mode in facade.restart_modes())

    assert run("pipeline.restart", tasks, mode="sideways") == {
        "ok": False,
        "error": f"unknown restart mode 'sideways' (one of {modes})",
    }
    assert run("pipeline.restart", [f"{tasks[0]}:resubmit", "seven"]) == {
        "ok": False,
        "error": "'seven' is not TASK or TASK:MODE",
    }
    assert run("pipeline.restart", []) == {
        "ok": False,
        "error": "name the tasks to restart, or restart the failed tasks of an instance",
    }
    assert run("pipeline.restart_failed", 9999, "resubmit") == {
        "ok": False,
        "error": "unknown instance 9999",
    }
    assert run("pipeline.halt", "abc")["error"] == "argument tasks: Input should be a valid list"
    assert run("pipeline.halt", [1], extra=2)["error"] == (
        "argument extra: Unexpected keyword argument"
    )
    assert run("pipeline.submit", "nosuch")["error"].startswith("unknown pipeline 'nosuch'")
    refused = run("pipeline.halt", [tasks[0]])
    stopped = f"task {tasks[0]} is already stopped (ERROR - ALGORITHM_COMPLETE)"
    assert (refused["ok"], refused["summary"]) == (False, f"task {tasks[0]} refused: {stopped}")
    assert queries.list_tasks(instance) == before


def test_the_restart_pages_forms(failed: Path, worker: InProcessWorker) -> None:
    from pipeline.interfaces.flower import halt_from_form, restart_from_form  # loads Flower

    instance, tasks = 1, [1, 2]
    before = queries.list_tasks(instance)
    assert restart_from_form({"instance": str(instance), "mode": ""}) == (
        False,
        "choose the restart mode for the instance's failed tasks",
    )
    assert restart_from_form({"instance": "x1", "mode": "resubmit"}) == (
        False,
        "'x1' is not an instance id",
    )
    assert restart_from_form({f"mode-{tasks[0]}": ""}) == (
        False,
        "choose a restart mode for at least one task",
    )
    assert halt_from_form({"task": "abc"}) == (False, "'abc' is not a task id")
    assert queries.list_tasks(instance) == before

    ok, line = restart_from_form({f"mode-{t}": "resume-current-step" for t in tasks})
    assert ok and line.startswith(f"task {tasks[0]} resume-current-step: store the successful")
    worker.drain()
    assert queries.get_instance(instance)["state"] == "COMPLETED"


def test_every_operation_goes_to_the_operations_queue() -> None:
    """Flower's API applies an operation by its name; the app routes each to the queue of
    the operations worker, so a halt never waits behind the subtasks it stops."""
    from pipeline.messaging.celery_app import OPERATIONS, OPERATIONS_QUEUE

    app = celery_app()
    app.loader.import_default_modules()  # what a worker does at start: import TASK_MODULES
    registered = {
        name for name, task in app.tasks.items() if task.__module__ == "workers.operations"
    }
    assert registered == set(OPERATIONS)
    for name in OPERATIONS:
        assert app.amqp.router.route({}, name, (), {})["queue"].name == OPERATIONS_QUEUE


def test_the_restart_page_quotes_no_more_than_a_short_prefix_of_a_form(failed: Path) -> None:
    from pipeline.interfaces.flower import halt_from_form, restart_from_form

    long = "9" * 100_000
    for ok, message in (
        restart_from_form({"mode-1": long}),
        restart_from_form({f"mode-{long}": "resubmit"}),
        restart_from_form({"instance": long, "mode": "resubmit"}),
        restart_from_form({"instance": "1", "mode": long}),
        halt_from_form({"task": long}),
        halt_from_form({"task": "x" + long}),
    ):
        assert not ok and len(message) < 400, message[:400]
