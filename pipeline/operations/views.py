"""What an operator reads, one view per thing: an instance, a task, a subtask, a history
line, a log, a file, an alert, a pipeline, a parameter set, a restart's outcome.

Each view is a ``TypedDict``: at run time the plain dict every interface shows (the CLI's
``--json``, the HTTP API's body, the console's page, Flower's operation results), and for
the HTTP API its response model (its fields, types and descriptions are the OpenAPI
schema; an answer with a field the view lacks is refused). A view is built from a row by
its field names (``read_views.build``), or, where a listing of 10,000 rows needs the speed,
from column tuples in the view's own order (``read_views.Builder``); the labels an operator
reads (``ERROR - ALGORITHM_COMPLETE``, ``3/4 (1)``) come from the lifecycle, nowhere else.
A field added to a view is one line here (and its column, if it is stored); a field of a
read command's view (instances, tasks, subtasks, task), built without pydantic, is one
line in ``read_views`` too, in the same place (``same_fields`` checks as this loads).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, with_config
from typing_extensions import TypedDict

from pipeline.domain.environments import IMPLEMENTED
from pipeline.domain.execution import ExecutionSettings, with_execution_defaults
from pipeline.domain.lifecycle import PState
from pipeline.domain.states import InstanceState, NodeState, SubtaskState
from pipeline.domain.words import counted
from pipeline.operations import read_views
from pipeline.operations.read_views import (  # noqa: F401 - every view shows them so
    event_line,
    iso_time,
    labels_said,
)

Time = Annotated[str | None, Field(description="ISO 8601, UTC, to the second")]
_CLOSED = ConfigDict(extra="forbid")


def fields(view: type) -> list[str]:
    """A view's fields, in the order it shows them (a base view's first)."""
    return list(view.__annotations__)


def build(view: type, row: Any, **computed: Any) -> Any:
    """The view of ``row`` (see ``read_views.build``) with ``view``'s fields."""
    return read_views.build(fields(view), row, **computed)


def same_fields(view: type, names: Sequence[str]) -> None:
    """Refuse a read command's view (``read_views``) whose response model here declares
    other fields, or the same in another order, than it builds."""
    if fields(view) != list(names):
        raise TypeError(f"{view.__name__} declares {fields(view)}, read_views builds {names}")


# -- instances -------------------------------------------------------------------------------


@with_config(_CLOSED)
class InstanceView(TypedDict):
    id: int
    pipeline: str
    definition_version: int
    state: InstanceState
    start_node: str | None
    end_node: str | None
    priority: int | None
    message: str
    created_at: Time
    updated_at: Time
    models: Annotated[
        dict[str, str], Field(description="the model versions it pinned, by model type")
    ]
    units: Annotated[
        list[str] | None, Field(description="the units of work it runs for (null: every one)")
    ]
    units_regexp: Annotated[
        str | None, Field(description="submit --units: its units match this regexp (null: any)")
    ]
    units_exclude: Annotated[
        str | None, Field(description="submit --exclude: its units do not match this regexp")
    ]
    event: Annotated[
        str | None, Field(description="the event that started it (null: submitted by a person)")
    ]


class SubmittedInstance(InstanceView):
    tasks: Annotated[list[int], Field(description="ids of the tasks of the first nodes")]
    left_out: Annotated[
        list[str], Field(description="nodes of the pipeline outside --start-node .. --end-node")
    ]


@with_config(_CLOSED)
class QueueView(TypedDict):
    queue: str
    messages: Annotated[int | None, Field(description="waiting on the broker (none: not asked)")]
    tasks_waiting: Annotated[int, Field(description="tasks waiting in a step on this queue")]
    oldest_wait_seconds: Annotated[
        float | None, Field(description="how long the oldest of them has had no news")
    ]


@with_config(_CLOSED)
class WorkerView(TypedDict):
    name: Annotated[str, Field(description="the worker's node name, name@host")]
    host: str
    state: Annotated[str, Field(description="up, or silent (its heartbeat stopped)")]
    queues: Annotated[list[str] | None, Field(description="none: it did not answer")]
    concurrency: Annotated[int | None, Field(description="its pool's size")]
    last_heartbeat: Annotated[str | None, Field(description="none: it never beat here")]


@with_config(_CLOSED)
class BatchEstimateView(TypedDict):
    """What running some of a node's subtasks on a batch system is expected to take."""

    node: str
    partition: Annotated[str, Field(description="empty: the default partition")]
    jobs: Annotated[int, Field(description="job arrays: one per task")]
    subtasks: int
    node_hours: float
    cost: Annotated[float | None, Field(description="null: batch_costs prices not the partition")]
    cost_unit: Annotated[str, Field(description="the remote environment's (empty: unnamed)")]
    seconds_per_subtask: Annotated[float, Field(description="node-seconds, measured or guessed")]
    measured: Annotated[
        int, Field(description="subtasks of earlier jobs measured (0: batch_guess_seconds)")
    ]
    subtasks_from: Annotated[str, Field(description="how the subtasks were counted")]
    text: Annotated[str, Field(description="all of it in a line, with what it rests on")]


def batch_estimate_view(estimate: Any) -> BatchEstimateView:
    """The view of a ``batch_cost.Estimate``."""
    return build(BatchEstimateView, estimate, text=estimate.line())  # type: ignore[no-any-return]


@with_config(_CLOSED)
class PlannedTaskView(TypedDict):
    unit_of_work: str
    subtasks: Annotated[
        int | None,
        Field(description="null: its inputs are its parents' outputs, counted once they store"),
    ]


@with_config(_CLOSED)
class SubmitPreview(TypedDict):
    """What a submit would do (``--dry-run``): nothing was changed."""

    pipeline: str
    nodes: Annotated[list[str], Field(description="the nodes it would run, in order")]
    left_out: Annotated[
        list[str], Field(description="nodes of the pipeline outside --start-node .. --end-node")
    ]
    units: Annotated[
        dict[str, list[str]], Field(description="the first nodes' tasks: units of work by node")
    ]
    parameter_sets: Annotated[dict[str, int], Field(description="versions it would freeze")]
    models: Annotated[dict[str, str], Field(description="model versions it would pin")]
    batch_estimates: Annotated[
        list[BatchEstimateView],
        Field(description="each node on a batch system: node-hours, jobs and cost expected"),
    ]
    tasks: Annotated[
        dict[str, list[PlannedTaskView]],
        Field(description="every node's tasks as the datastore stands now, by node, in order"),
    ]


@with_config(_CLOSED)
class FrozenParameterSet(TypedDict):
    version: int
    values: dict[str, Any]


class InstanceDetail(InstanceView):
    parameters: Annotated[dict[str, FrozenParameterSet], Field(description="frozen at submission")]
    tasks: Annotated[int, Field(description="how many tasks the instance has so far")]
    total_subtasks: int
    completed_subtasks: int
    failed_subtasks: int
    nodes: dict[str, NodeState]


class InstanceProgress(InstanceView):
    """An instance as the console's list shows it: with its progress and duration."""

    tasks: int
    tasks_done: int
    total_subtasks: int
    completed_subtasks: int
    failed_subtasks: int
    duration: Annotated[float | None, Field(description="seconds, to now while under way")]


def instance_view(row: Any) -> InstanceView:
    return read_views.instance_view(row)  # type: ignore[no-any-return]


same_fields(InstanceView, read_views.INSTANCE_FIELDS)


# -- tasks -----------------------------------------------------------------------------------


@with_config(_CLOSED)
class TaskView(TypedDict):
    id: int
    instance_id: int
    node: str
    unit_of_work: str
    p_state: PState
    error: bool
    stale: Annotated[
        bool,
        Field(description="its inputs were stored again with other bytes after it ran"),
    ]
    state: Annotated[
        str,
        Field(
            description="the P-state, ERROR - P-state when the error flag is set, STALE -"
            " P-state when stale"
        ),
    ]
    error_message: str
    stale_reason: str
    rerun: Annotated[bool, Field(description="waiting to run again once its inputs are current")]
    halted: bool
    attempt: int
    total_subtasks: int
    completed_subtasks: int
    failed_subtasks: int
    counts: Annotated[str, Field(description="completed/total (failed), e.g. 3/4 (1)")]
    worker_host: str
    execution: ExecutionSettings
    updated_at: Time


same_fields(TaskView, read_views.TASK_FIELDS)
#: The stored fields of a task view: the columns a listing selects.
TASK_COLUMNS = read_views.TASK_COLUMNS
task_from_columns = read_views.task_builder(with_execution_defaults({}))


def task_view(row: Any) -> TaskView:
    """The view of a task row (an ORM object)."""
    return task_from_columns([getattr(row, name) for name in TASK_COLUMNS])  # type: ignore[no-any-return]


@with_config(_CLOSED)
class TaskEventView(TypedDict):
    at: Time
    p_state: PState
    error: bool
    state: Annotated[str, Field(description="the P-state then, as the task's state reads")]
    attempt: int
    host: str
    message: str


def event_view(row: Any) -> TaskEventView:
    return read_views.event_view(row)  # type: ignore[no-any-return]


same_fields(TaskEventView, read_views.TASK_EVENT_FIELDS)


@with_config(_CLOSED)
class SubtaskView(TypedDict):
    """A subtask as its task's detail lists it among those running."""

    index: int
    state: SubtaskState
    attempts: int
    error: str
    inputs: list[str]
    outputs: Annotated[
        int | None,
        Field(description="files of the node's output types it left; unset until it succeeds"),
    ]
    worker_host: str
    worker_pid: int | None
    started_at: Time
    finished_at: Time
    heartbeat_at: Time


def subtask_view(row: Any) -> SubtaskView:
    return read_views.subtask_view(row)  # type: ignore[no-any-return]


same_fields(SubtaskView, read_views.SUBTASK_FIELDS)


class ListedSubtask(SubtaskView):
    """A subtask as its task's listing shows it."""

    consumed: Annotated[
        list[str], Field(description="the datastore paths its last marshal gave it")
    ]


@with_config(_CLOSED)
class AttemptView(TypedDict):
    """What ran one attempt of a task."""

    attempt: int
    code: Annotated[dict[str, Any], Field(description="the code version, as recorded")]
    code_version: Annotated[str, Field(description="the same in one line")]
    models: Annotated[dict[str, str], Field(description="model versions given, by model type")]
    recorded_at: Time


def attempt_view(row: Any) -> AttemptView:
    return read_views.attempt_view(row)  # type: ignore[no-any-return]


same_fields(AttemptView, read_views.ATTEMPT_FIELDS)


@with_config(_CLOSED)
class BatchJobView(TypedDict):
    """A job array of a task on a batch system (``executor: slurm``)."""

    job_id: Annotated[str, Field(description="the batch system's; empty until submitted")]
    attempt: int
    state: str
    reason: str
    subtasks: int
    elements: int
    partition: str
    elements_by_state: Annotated[dict[str, int], Field(description="as the controller last said")]
    queue_wait: Annotated[float | None, Field(description="longest wait of an element, s")]
    estimated_node_hours: float | None
    estimated_cost: float | None
    node_hours: Annotated[float | None, Field(description="measured from its elements' run times")]
    cost: float | None
    submitted_at: Time | None
    ended_at: Time | None


def batch_job_view(row: Any) -> BatchJobView:
    return read_views.batch_job_view(row)  # type: ignore[no-any-return]


same_fields(BatchJobView, read_views.BATCH_JOB_FIELDS)


class TaskDetail(TaskView):
    task_dir: str
    attempts: Annotated[
        list[AttemptView], Field(description="the code and models of each attempt that ran")
    ]
    history: list[TaskEventView]
    running: Annotated[
        list[SubtaskView], Field(description="subtasks running now, with worker and heartbeat")
    ]
    batch_jobs: Annotated[
        list[BatchJobView], Field(description="its job arrays, oldest first (executor: slurm)")
    ]


class TaskRow(TaskView):
    """A task as the console's pages list it."""

    restartable: bool
    duration: Annotated[float | None, Field(description="seconds since it was created")]


@with_config(_CLOSED)
class FailedSubtask(TypedDict):
    index: int
    error: str


class TaskNeedingAttention(TaskView):
    """A task on the console's restart page: failed, or running (which may be halted)."""

    restartable: bool
    failed_subtask_errors: list[FailedSubtask]


class SubtaskRow(SubtaskView):
    """A subtask as the console's task page lists it."""

    duration: float | None
    error_line: Annotated[str, Field(description="the first line of its error")]
    input_count: int


@with_config(_CLOSED)
class LogEntry(TypedDict):
    index: int
    path: str
    text: Annotated[str, Field(description="the algorithm's stdout and stderr")]


# -- what an operation did -------------------------------------------------------------------


@with_config(_CLOSED)
class OutcomeView(TypedDict):
    """What a restart or halt did (or, in a dry run, would do) to one task."""

    task_id: int
    mode: str
    ok: bool
    message: str
    start_from: str
    subtasks: list[int]
    downstream: Annotated[
        list[int],
        Field(
            description="tasks that consumed what this task stored, directly or through"
            " others: what running it again may make stale"
        ),
    ]


# -- definitions, parameters, alerts ---------------------------------------------------------


@with_config(_CLOSED)
class PipelineView(TypedDict):
    name: str
    version: int
    nodes: list[str]
    description: str
    imported_at: Time


@with_config(_CLOSED)
class ParameterView(TypedDict):
    name: str
    type: str
    value: Any


@with_config(_CLOSED)
class ParameterSetView(TypedDict):
    name: str
    version: int
    locked: bool
    parameters: list[ParameterView]


@with_config(_CLOSED)
class ParameterSetChange(TypedDict):
    """What importing a parameter library does, or would do, to one of its sets."""

    name: str
    action: Literal["created", "updated", "unchanged"]
    changes: Annotated[dict[str, Any], Field(description="the values it sets, by parameter name")]


def parameter_set_view(row: Any) -> ParameterSetView:
    return build(  # type: ignore[no-any-return]
        ParameterSetView,
        row,
        parameters=[
            {"name": key, "type": declared["type"], "value": declared["value"]}
            for key, declared in sorted(row.values.items())
        ],
    )


@with_config(_CLOSED)
class AlertView(TypedDict):
    id: int
    at: str
    severity: str
    instance_id: int | None
    task_id: int | None
    message: str
    acknowledged: bool
    cleared_at: Annotated[
        Time, Field(description="when the condition it is about ended (none: it lasts)")
    ]


def alert_view(row: Any) -> AlertView:
    return build(  # type: ignore[no-any-return]
        AlertView, row, acknowledged=row.acknowledged_at is not None
    )


# -- the datastore ---------------------------------------------------------------------------


@with_config(_CLOSED)
class FileView(TypedDict):
    """One stored version of a datastore file and its producer."""

    id: int
    path: Annotated[str, Field(description="under the datastore root")]
    data_file_type: str
    unit_of_work: str
    size: int
    sha256: str
    origin: Literal["task", "received", "found"]
    receipt: Annotated[
        str, Field(description="the receipt's manifest or directory, for received files")
    ]
    instance_id: int | None
    task_id: int | None
    subtask_index: int | None
    attempt: int | None
    node: str
    definition_version: int | None
    parameter_versions: dict[str, int]
    stored_at: Time
    superseded_at: Time
    current: Annotated[bool, Field(description="whether its bytes are the ones on disk")]
    pruned_at: Annotated[
        Time, Field(description="when retention removed its bytes (its row stays)")
    ]
    stale: Annotated[
        bool,
        Field(
            description="its producing task is stale: made from inputs stored again since"
            " with other bytes"
        ),
    ]


def file_view(row: Any, stale: bool = False) -> FileView:
    return build(  # type: ignore[no-any-return]
        FileView, row, current=row.superseded_at is None, stale=bool(stale)
    )


@with_config(_CLOSED)
class LineageStep(TypedDict):
    file: FileView
    definition_version: int | None
    parameters: Annotated[dict[str, FrozenParameterSet], Field(description="the producing task's")]
    models: Annotated[
        list[LineageModel], Field(description="the model versions its producing attempt used")
    ]
    code_version: Annotated[
        dict[str, Any] | None,
        Field(description="the code of its producing attempt (null: not recorded)"),
    ]
    event: Annotated[
        str | None, Field(description="the event that started its instance (null: a person)")
    ]
    inputs: Annotated[
        list[int], Field(description="ids of the files its producing subtask consumed")
    ]


@with_config(_CLOSED)
class LineageModel(TypedDict):
    model_type: str
    version: str
    sha256: str
    name: str


@with_config(_CLOSED)
class LineageView(TypedDict):
    path: str
    steps: Annotated[
        list[LineageStep], Field(description="the file first, then its inputs' producers")
    ]


@with_config(_CLOSED)
class ReceivedFile(TypedDict):
    path: str
    size: int
    sha256: str


@with_config(_CLOSED)
class ReceiptView(TypedDict):
    receipt: str
    data_file_type: str
    unit_of_work: str
    files: list[ReceivedFile]
    acknowledgement: Annotated[str | None, Field(description="written beside the manifest")]


@with_config(_CLOSED)
class ModelView(TypedDict):
    """One version of a model in the registry."""

    model_type: str
    version: str
    timestamp: Annotated[str, Field(description="from the file name, where it carries one")]
    name: Annotated[str, Field(description="the file's original name, which algorithms see")]
    sha256: str
    size: int
    receipt: str
    received_at: Time


def model_view(row: Any) -> ModelView:
    return build(ModelView, row)  # type: ignore[no-any-return]


@with_config(_CLOSED)
class ModelReceipt(TypedDict):
    model: ModelView
    new: Annotated[bool, Field(description="false: the same bytes were received already")]


@with_config(_CLOSED)
class DeliveryView(TypedDict):
    """A delivery received: a directory laid out as the datastore, with its manifest."""

    receipt: str
    units: Annotated[dict[str, list[str]], Field(description="units of work by data file type")]
    files: list[ReceivedFile]
    already: Annotated[
        int, Field(description="files whose current version was this receipt's bytes already")
    ]
    models: list[ModelView]
    acknowledgement: Annotated[str | None, Field(description="written beside the manifest")]


@with_config(_CLOSED)
class EventHandlerView(TypedDict):
    name: str
    pipeline: str
    directory: str
    enabled: bool
    last_event: Annotated[
        EventView | None, Field(description="the newest event it saw (null: none yet)")
    ]


@with_config(_CLOSED)
class EventView(TypedDict):
    id: int
    handler: str
    labels: list[str]
    state: Annotated[str, Field(description="receiving, submitted or failed")]
    message: str
    instance_id: int | None
    created_at: Time
    updated_at: Time


def pipeline_event_view(row: Any) -> EventView:
    return build(EventView, row)  # type: ignore[no-any-return]


@with_config(_CLOSED)
class ArchitectureView(TypedDict):
    """A kind of compute node of a remote environment."""

    name: str
    description: str
    cores: int
    ram_gigabytes: float
    cost: Annotated[float | None, Field(description="a node-hour, in the cost unit")]
    bandwidth_gbps: float | None


@with_config(_CLOSED)
class BatchQueueView(TypedDict):
    """A queue (Slurm's partition) of a remote environment."""

    name: str
    description: str
    max_wall_time_hours: float | None
    max_nodes: int | None
    auto_selectable: bool
    reserved: bool


@with_config(_CLOSED)
class EnvironmentView(TypedDict):
    """A remote environment (Ziggy's), as the newest definitions declare it."""

    name: str
    batch_system: str
    implemented: Annotated[bool, Field(description="false: a node cannot run on it here")]
    cost_unit: str
    description: str
    architectures: list[ArchitectureView]
    queues: list[BatchQueueView]
    pipelines: Annotated[list[str], Field(description="the pipelines declaring it")]


def environment_view(name: str, environment: Any, pipelines: list[str]) -> EnvironmentView:
    """The view of a ``RemoteEnvironment`` declared as ``name``."""
    return build(  # type: ignore[no-any-return]
        EnvironmentView,
        environment,
        name=name,
        implemented=environment.batch_system in IMPLEMENTED,
        architectures=[
            build(ArchitectureView, a, name=n) for n, a in environment.architectures.items()
        ],
        queues=[build(BatchQueueView, q, name=n) for n, q in environment.queues.items()],
        pipelines=pipelines,
    )


def submit_preview_text(planned: SubmitPreview) -> str:
    """What a submit would do, in lines (the CLI's ``--dry-run`` and the console's page)."""
    sets = ", ".join(f"{name} version {v}" for name, v in planned["parameter_sets"].items())
    pinned = "".join(f", model {kind} version {v}" for kind, v in planned["models"].items())
    lines = [
        f"dry run: an instance of {planned['pipeline']} would run"
        f" {', '.join(planned['nodes'])}, with {sets or 'no parameter sets'}{pinned};"
        " nothing submitted"
    ]
    for node, tasks in planned["tasks"].items():
        lines.append(f"  {planned_line(node, tasks)}")
    for estimate in planned["batch_estimates"]:
        lines.append(f"  {estimate['node']} on slurm: {estimate['text']}")
    if planned["left_out"]:
        lines.append(f"  not run: {', '.join(planned['left_out'])} ({LEFT_OUT})")
    return "\n".join(lines)


def planned_line(node: str, tasks: list[PlannedTaskView]) -> str:
    """A node's tasks in a dry run: ``flip: 2 tasks (set-1, set-2); subtasks 4, 4``."""
    if not tasks:
        return f"{node}: no task (none of its inputs is in the datastore now)"
    units = ", ".join(t["unit_of_work"] for t in tasks[:20]) + (" ..." if len(tasks) > 20 else "")
    line = f"{node}: {counted(len(tasks), 'task')} ({units})"
    if any(t["subtasks"] is None for t in tasks):
        return f"{line}; subtasks counted once its parents store"
    counts = [t["subtasks"] or 0 for t in tasks]
    total = f" ({sum(counts)} in all)" if len(counts) > 1 else ""
    return f"{line}; subtasks {', '.join(map(str, counts[:20]))}{total}"


#: Why a node of the pipeline is not run by an instance.
LEFT_OUT = "not between the start and end nodes"


def submitted_line(submitted: SubmittedInstance) -> str:
    """One line about a submitted instance (the CLI's and Flower's operation's answer)."""
    line = (
        f"instance {submitted['id']} of {submitted['pipeline']} submitted with"
        f" {len(submitted['tasks'])} tasks ({submitted['state']})"
    )
    if submitted["left_out"]:
        line += f"; not run: {', '.join(submitted['left_out'])} ({LEFT_OUT})"
    return f"{line}; {submitted['message']}" if submitted["message"] else line


# -- retention -------------------------------------------------------------------------------


@with_config(_CLOSED)
class DatastorePruneView(TypedDict):
    """What ``datastore prune`` removed (or, in a dry run, would remove)."""

    dry_run: bool
    keep_last: int
    keep_since: str
    versions: int
    objects: int
    bytes: int
    left_behind: int


@with_config(_CLOSED)
class TaskDirsPruneView(TypedDict):
    """What ``taskdirs prune`` removed (or would remove)."""

    dry_run: bool
    older_than: str
    directories: int
    bytes: int
