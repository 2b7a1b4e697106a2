"""The pipeline's decisions as tables: restart plans, instance states, node selection,
parameter values, lost messages, batches, and errors as operators read them."""

from __future__ import annotations

import tomllib
from tomllib import TOMLDecodeError
from typing import Any

import pytest
from pydantic import ValidationError
from sqlalchemy.exc import OperationalError

from pipeline.domain.definitions import load
from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import Stage, counts_label, state_label
from pipeline.domain.limits import MAX_ARRAY_LENGTH, MAX_TEXT_LENGTH
from pipeline.domain.models import Subtask, Task
from pipeline.domain.parameters import coerce
from pipeline.domain.states import InstanceState, derive_instance_state
from pipeline.engine import dispatch
from pipeline.errors import (
    InvalidInput,
    NotFound,
    PipelineError,
    Refused,
    Unreachable,
    Unreadable,
)
from pipeline.interfaces.statuses import status as http_status
from pipeline.jsoncodec import dumps, loads
from pipeline.messaging import messages as sent
from pipeline.messaging.broker import handed_on
from pipeline.messaging.messages import InFlight
from pipeline.operations import problems
from pipeline.operations.modes import MODES, parse_mode, parse_request
from pipeline.operations.outcomes import Outcome, Report
from pipeline.operations.submit import select_nodes
from pipeline.settings import PACKAGED_DEFINITIONS, Settings

# -- restart plans ---------------------------------------------------------------------------

FAILED_AT_THE_END = {0: "FAILED", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE"}
ALL_GOOD = {0: "COMPLETE", 1: "COMPLETE", 2: "COMPLETE", 3: "COMPLETE"}
HALTED_MID_RUN = {0: "COMPLETE", 1: "FAILED", 2: "NEW", 3: "NEW"}
EXECUTING = {0: "COMPLETE", 1: "RUNNING", 2: "QUEUED", 3: "NEW"}


def task(p_state: str, error: bool = True, failed: int = 1) -> Task:
    return Task(id=4, p_state=p_state, error=error, failed_subtasks=failed)


#: (mode, task, subtask states) -> (P-state it restarts from, subtasks that run again).
PLANS = [
    ("restart-from-beginning", task("ALGORITHM_COMPLETE"), FAILED_AT_THE_END, ("INITIALIZING", [0, 1, 2, 3])),
    ("restart-from-beginning", task("COMPLETE", False), FAILED_AT_THE_END, ("INITIALIZING", [0, 1, 2, 3])),
    ("resubmit", task("ALGORITHM_COMPLETE"), FAILED_AT_THE_END, ("ALGORITHM_SUBMITTING", [0])),
    ("resubmit", task("COMPLETE", False), FAILED_AT_THE_END, ("ALGORITHM_SUBMITTING", [0])),
    ("resubmit", task("ALGORITHM_EXECUTING"), HALTED_MID_RUN, ("ALGORITHM_SUBMITTING", [1, 2, 3])),
    ("resume-current-step", task("ALGORITHM_COMPLETE"), FAILED_AT_THE_END, ("STORING", [])),
    ("resume-current-step", task("STORING", failed=0), ALL_GOOD, ("STORING", [])),
    ("resume-current-step", task("MARSHALING", failed=0), {}, ("INITIALIZING", [])),
    ("resume-current-step", task("INITIALIZING", failed=0), ALL_GOOD, ("INITIALIZING", [0, 1, 2, 3])),
    ("resume-current-step", task("ALGORITHM_EXECUTING"), HALTED_MID_RUN, ("ALGORITHM_SUBMITTING", [2, 3])),
    ("resume-current-step", task("ALGORITHM_QUEUED"), EXECUTING, ("ALGORITHM_SUBMITTING", [1, 2, 3])),
    ("resume-monitoring", task("ALGORITHM_EXECUTING", False, 0), EXECUTING, ("ALGORITHM_EXECUTING", [1, 2])),
    ("resume-monitoring", task("ALGORITHM_QUEUED", False, 0), EXECUTING, ("ALGORITHM_QUEUED", [1, 2])),
]  # fmt: skip


@pytest.mark.parametrize(("mode", "task", "states", "expected"), PLANS)
def test_each_mode_plans_its_restart(mode: str, task: Task, states: dict, expected: tuple) -> None:
    plan = MODES[mode].plan(task, states)
    assert (plan.p_state, plan.rerun) == expected


#: (mode, task, subtask states) -> the refusal, in part.
REFUSALS = [
    ("resubmit", task("ALGORITHM_EXECUTING", False, 0), EXECUTING, "task 4 is running (ALGORITHM_EXECUTING): only failed tasks can be restarted"),
    ("resubmit", task("COMPLETE", False, 0), ALL_GOOD, "task 4 is complete without failures: only failed tasks can be restarted"),
    ("resubmit", task("STORING", failed=0), ALL_GOOD, "every subtask of task 4 already succeeded: nothing to resubmit"),
    ("resubmit", task("MARSHALING", failed=0), {}, "task 4 failed while marshaling: use restart-from-beginning or resume-current-step"),
    ("restart-from-beginning", task("STORING", False, 0), ALL_GOOD, "task 4 is running (STORING)"),
    ("resume-current-step", task("COMPLETE", False), FAILED_AT_THE_END, "task 4 is COMPLETE: no step to resume"),
    ("resume-monitoring", task("ALGORITHM_COMPLETE"), FAILED_AT_THE_END, "task 4 is not executing (ERROR - ALGORITHM_COMPLETE): nothing to monitor"),
    ("resume-monitoring", task("STORING", False, 0), ALL_GOOD, "task 4 is not executing (STORING)"),
    ("resume-monitoring", task("ALGORITHM_EXECUTING"), EXECUTING, "task 4 is not executing (ERROR - ALGORITHM_EXECUTING)"),
]  # fmt: skip


@pytest.mark.parametrize(("mode", "task", "states", "refusal"), REFUSALS)
def test_each_mode_refuses_what_it_cannot_restart(
    mode: str, task: Task, states: dict, refusal: str
) -> None:
    with pytest.raises(Refused) as refused:
        MODES[mode].plan(task, states)
    assert str(refusal) in str(refused.value)


def test_only_resume_monitoring_asks_the_broker_and_refuses_setting_changes() -> None:
    assert [name for name, mode in MODES.items() if mode.needs_broker] == ["resume-monitoring"]
    for name, mode in MODES.items():
        if name == "resume-monitoring":
            with pytest.raises(Refused, match="it changes no settings"):
                mode.check_changes({"priority": 1})
        else:
            mode.check_changes({"priority": 1})


@pytest.mark.parametrize(
    ("item", "default", "expected"),
    [
        (7, "resubmit", (7, "resubmit")),
        ("7", "resubmit", (7, "resubmit")),
        ("7:resume-monitoring", "resubmit", (7, "resume-monitoring")),
        (" 7:resubmit ", None, (7, "resubmit")),
        ((7, "resubmit"), None, (7, "resubmit")),
        ("seven", "resubmit", "'seven' is not TASK or TASK:MODE"),
        ("7", None, "no mode for task 7: give a mode for all tasks or 7:MODE"),
        ("7:sideways", None, "unknown restart mode 'sideways' (one of restart-from-beginning,"),
    ],
)
def test_a_restart_request_names_a_task_and_its_mode(
    item: Any, default: Any, expected: Any
) -> None:
    if isinstance(expected, str):
        with pytest.raises(InvalidInput) as error:
            parse_request(item, default)
        assert str(error.value).startswith(expected)
        return
    task_id, mode = parse_request(item, default)
    assert (task_id, mode.name) == expected
    assert parse_mode(mode) is mode


def test_the_operator_guides_table_describes_every_mode() -> None:
    """The operator guide's table of restart modes is the modes' own description, row by
    row."""
    from tests.support import REPO

    guide = (REPO / "docs" / "operator-guide.md").read_text()
    table = guide.split("\n## Restart modes\n\n", 1)[1].split("\n\n", 1)[0]
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")] for line in table.splitlines()[2:]
    ]
    assert rows == [[f"`{m.name}`", m.starts_from, m.runs] for m in MODES.values()]


# -- instance states and labels --------------------------------------------------------------


@pytest.mark.parametrize(
    ("all_done", "error", "active", "started", "expected"),
    [
        (False, False, False, False, InstanceState.INITIALIZED),
        (False, False, True, True, InstanceState.PROCESSING),
        (False, False, False, True, InstanceState.PROCESSING),
        (True, False, False, True, InstanceState.COMPLETED),
        (True, False, True, True, InstanceState.PROCESSING),
        (False, True, True, True, InstanceState.ERRORS_RUNNING),
        (False, True, False, True, InstanceState.ERRORS_STALLED),
        (True, True, False, True, InstanceState.ERRORS_STALLED),
    ],
)
def test_the_instance_state_follows_from_its_tasks(
    all_done: bool, error: bool, active: bool, started: bool, expected: InstanceState
) -> None:
    derived = derive_instance_state(
        all_nodes_done=all_done, any_error=error, any_active=active, any_started=started
    )
    assert derived == expected


def test_states_read_as_ziggy_shows_them() -> None:
    assert state_label("ALGORITHM_COMPLETE", True) == "ERROR - ALGORITHM_COMPLETE"
    assert state_label("STORING", False) == "STORING"
    assert counts_label(4, 3, 1) == "3/4 (1)"


# -- which nodes an instance runs ------------------------------------------------------------


@pytest.mark.parametrize(
    ("start", "end", "expected"),
    [
        (None, None, ["permuter", "flip", "averaging"]),
        ("flip", None, ["flip", "averaging"]),
        (None, "permuter", ["permuter"]),
        ("flip", "flip", ["flip"]),
        ("averaging", "permuter", "node 'permuter' is not downstream of node 'averaging'"),
        ("nosuch", None, "pipeline 'sample' has no node 'nosuch'"),
        (None, "nosuch", "pipeline 'sample' has no node 'nosuch'"),
    ],
)
def test_start_and_end_nodes_choose_the_nodes(start: Any, end: Any, expected: Any) -> None:
    definition = load(PACKAGED_DEFINITIONS / "sample.yaml")
    if isinstance(expected, str):
        with pytest.raises((InvalidInput, NotFound), match=expected):
            select_nodes(definition, start, end)
        return
    assert select_nodes(definition, start, end) == expected


# -- parameter values ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "value", "expected"),
    [
        ("bool", "true", True),
        ("bool", "Off", False),
        ("bool", False, False),
        ("bool", "maybe", "'maybe' is not a bool (use true or false)"),
        ("int", "7", 7),
        ("int", 7.5, "7.5 is not an int"),
        ("int", True, "True is not an int"),
        ("int", "soon", "'soon' is not an int"),
        ("float", "0.5", 0.5),
        ("float", 2, 2.0),
        ("float", "x", "'x' is not a float"),
        ("str", 5, "5"),
        ("int[]", "1,2,3", [1, 2, 3]),
        ("int[]", "[4, 5]", [4, 5]),
        ("int[]", [], []),
        ("float[]", "[1, oops]", "is not an array of float"),
        ("bool[]", "true,no", [True, False]),
        ("str[]", 5, "5 is not an array of str"),
        ("float", "inf", "'inf' is not a finite float"),
        ("float", "-Infinity", "'-Infinity' is not a finite float"),
        ("float", "nan", "'nan' is not a finite float"),
        ("float", "1e400", "'1e400' is not a finite float"),
        ("float", float("inf"), "inf is not a finite float"),
        ("float[]", "[1, Infinity]", "inf is not a finite float"),
        ("int", str(2**63), f"{2**63} is out of range ({-(2**63)} to {2**63 - 1})"),
        ("int", -(2**63) - 1, "is out of range"),
        ("int", 2**63 - 1, 2**63 - 1),
        ("int[]", [1, 2**64], "is out of range"),
        ("str", "x" * (MAX_TEXT_LENGTH + 1), f"longer than {MAX_TEXT_LENGTH} characters"),
        ("int[]", [0] * (MAX_ARRAY_LENGTH + 1), f"more than {MAX_ARRAY_LENGTH} items"),
    ],
)
def test_values_are_coerced_to_their_declared_type(kind: str, value: Any, expected: Any) -> None:
    if isinstance(expected, str) and (kind != "str" or len(str(value)) > MAX_TEXT_LENGTH):
        with pytest.raises(InvalidInput) as error:
            coerce(kind, value)
        assert expected in str(error.value)
        return
    assert coerce(kind, value) == expected


# -- lost messages and batches ---------------------------------------------------------------


def subtask(state: str, host: str = "worker2@b") -> Subtask:
    return Subtask(index=3, state=state, worker_host=host, message_id="m1")


@pytest.mark.parametrize(
    ("message", "subtask", "live", "lost"),
    [
        ("m1", subtask("QUEUED"), InFlight({"m1"}, set()), False),
        ("m1", subtask("QUEUED"), InFlight(set(), {"worker2@b"}), True),
        ("m1", subtask("RUNNING"), InFlight({"m1"}, {"worker2@b"}), False),
        ("m1", subtask("RUNNING"), InFlight(set(), {"worker2@b"}), True),
        # Its worker did not answer: the lease decides, not the inspection.
        ("m1", subtask("RUNNING"), InFlight(set(), {"worker1@a"}), False),
    ],
)
def test_a_message_is_lost_when_it_is_nowhere_alive(
    message: str, subtask: Subtask, live: InFlight, lost: bool
) -> None:
    task = Task(id=7, attempt=2)
    found = dispatch.lost(task, [subtask], live)
    assert (found == [subtask]) is lost


@pytest.mark.parametrize(
    ("execution", "subtasks", "size"),
    [({}, 4, 1), ({}, 199, 1), ({}, 200, 2), ({}, 10_000, 100), ({"batch_size": 3}, 4, 3)],
)
def test_big_tasks_batch_their_subtasks(execution: dict, subtasks: int, size: int) -> None:
    assert dispatch.batch_size(ExecutionSettings.stored(execution), subtasks) == size


def test_a_batch_is_named_after_its_first_subtask_and_a_single_keeps_its_own_id() -> None:
    planned = dispatch.plan_messages(7, 2, [(0, 1), (1, 1), (2, 1)], 2)
    assert planned == [
        ("subtasks-7-2-0-1", [(0, 1), (1, 1)]),
        (sent.subtask_message_id(7, 2, 2, 1), [(2, 1)]),
    ]
    assert dispatch.message_of(7, 2, Subtask(index=5, dispatch=3, message_id="")) == (
        "subtask-7-2-5-3"
    )


@pytest.mark.parametrize(
    ("name", "args", "label"),
    [
        (sent.MARSHAL, [4, 2], "task=4, attempt=2"),
        (sent.SUBTASK, [4, 2, 0, 1], "task=4, attempt=2, subtask=0, dispatch=1"),
        (sent.SUBTASKS, [4, 2, [[0, 1], [1, 1]]], "task=4, attempt=2, subtasks=2"),
        (sent.FAN_OUT, [[["m", [1, 1], "q", 0, None, None]] * 3], "messages=3"),
    ],
)
def test_flower_shows_each_message_by_its_task_and_attempt(
    name: str, args: list, label: str
) -> None:
    assert sent.Message(name, args, "q").label == label


def test_many_messages_are_handed_on_to_workers_in_fan_outs_by_queue() -> None:
    """Past ``DIRECT_SEND_LIMIT`` a caller publishes one fan-out message per queue and
    ``FAN_OUT_SIZE`` messages, which a worker publishes on; fewer go out as they are."""
    few = [sent.stage_message(Stage.STORE, task, 1, "default") for task in range(20)]
    assert handed_on(few) == few
    many = [sent.stage_message(Stage.STORE, task, 1, "default") for task in range(450)]
    many += [sent.stage_message(Stage.MARSHAL, 1000, 1, "gpu")]
    fan_outs = handed_on(many)
    assert [(m.name, m.queue, len(m.args[0])) for m in fan_outs] == [
        (sent.FAN_OUT, "default", 200),
        (sent.FAN_OUT, "default", 200),
        (sent.FAN_OUT, "default", 50),
        (sent.FAN_OUT, "gpu", 1),
    ]
    carried = [sent.Message.from_list(fields) for m in fan_outs for fields in m.args[0]]
    assert carried == many, "each message carried whole, in order within its queue"


# -- what operators read ---------------------------------------------------------------------


def settings_error() -> ValidationError:
    try:
        Settings(workers="many")
    except ValidationError as exc:
        return exc
    raise AssertionError("a bad setting was accepted")


def toml_error() -> TOMLDecodeError:
    try:
        tomllib.loads("port = = 1")
    except TOMLDecodeError as exc:
        return exc
    raise AssertionError("bad TOML was accepted")


@pytest.mark.parametrize(
    ("error", "status", "message"),
    [
        (NotFound("unknown task 9"), 404, "unknown task 9"),
        (Refused("task 9 is\n  running"), 409, "task 9 is running"),
        (InvalidInput("bad"), 422, "bad"),
        (Unreachable("broker unreachable at redis://..."), 503, "broker unreachable at"),
        (OperationalError("SELECT", {}, Exception("no such table: tasks")), 503, "run `pipeline cluster init`"),
        (settings_error(), 500, "setting workers: Input should be a valid integer"),
        (toml_error(), 500, "settings file is not valid TOML"),
    ],
)  # fmt: skip
def test_every_interface_reports_an_error_in_one_line(
    error: Exception, status: int, message: str, database: Any
) -> None:
    found = problems.problem(error)
    assert found is not None and http_status(found) == status
    assert message in found.message and "\n" not in found.message


def test_a_bug_is_no_operators_problem() -> None:
    assert problems.problem(KeyError("oops")) is None


def test_a_report_stands_for_its_refusals_only_when_nothing_went_ahead() -> None:
    ok = Outcome(1, "resubmit", True, "run failed and never-run subtasks")
    no = Outcome.refused(2, "resubmit", Refused("task 2 is running"))
    missing = Outcome.refused(3, "resubmit", NotFound("unknown task 3"))
    assert Report([ok, no]).refusal() is None and not Report([ok, no]).ok
    assert Report([no]).refusal() is no.refusal
    both = Report([no, missing]).refusal()
    assert isinstance(both, PipelineError)
    assert str(both) == "task 2 is running; unknown task 3"
    assert Report([ok, no]).summary == (
        "task 1 resubmit: run failed and never-run subtasks; task 2 refused: task 2 is running"
    )


# -- JSON columns ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        {"queue": "default", "subtask_timeout": 3600.0, "batch_size": None},
        [1, -(2**63), 2**64 - 1, 0.5, "text", True, None, {"nested": [[]]}],
        {"é": "ünïcode"},
    ],
)
def test_json_columns_read_back_what_they_wrote(value: Any) -> None:
    assert loads(dumps(value)) == value


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ({"subtask_timeout": float("inf")}, "inf is not a finite number"),
        ([1, [float("nan")]], "nan is not a finite number"),
        ({"n": -float("inf")}, "-inf is not a finite number"),
        ({"n": 2**64}, "Integer exceeds 64-bit range"),
    ],
)
def test_json_columns_refuse_what_they_could_not_read_back(value: Any, reason: str) -> None:
    """The writer refuses a value its reader would reject or read back changed (a JSON
    writer would write ``Infinity``, which no JSON reader reads; a faster one, null)."""
    with pytest.raises(InvalidInput) as error:
        dumps(value)
    assert str(error.value).startswith("cannot store ") and reason in str(error.value)


@pytest.mark.parametrize("stored", ['{"subtask_timeout": Infinity}', '{"a": NaN}', "[1e400]", "{"])
def test_a_stored_value_that_cannot_be_read_is_one_line(stored: str) -> None:
    with pytest.raises(Unreadable) as error:
        loads(stored)
    found = problems.problem(error.value)
    assert found is not None and "\n" not in found.message
    assert found.message.startswith("a stored value cannot be read: ")


def test_a_task_under_way_goes_before_marshals_and_both_before_queued_subtasks() -> None:
    """Stores are not queued behind a bulk marshal (issue 28: restarted tasks sat 3.5
    minutes in STORING behind a 10,000-task marshal), nor behind subtasks."""
    from pipeline.domain.execution import ExecutionSettings
    from pipeline.domain.lifecycle import Stage
    from pipeline.messaging.messages import stage_message

    def priority(stage: Stage) -> int:
        return stage_message(stage, 1, 1, "default").priority

    subtasks = ExecutionSettings().priority
    assert priority(Stage.STORE) == priority(Stage.MONITOR) == priority(Stage.EXECUTE)
    assert priority(Stage.STORE) < priority(Stage.MARSHAL) < subtasks
