"""The HTTP API's request and response bodies: the fields of the CLI's ``--json`` output.

The service functions return plain dicts (the CLI prints them as JSON); these models
describe the same dicts for the OpenAPI schema. Responses forbid unknown fields, so a
service dict and its model cannot drift apart unnoticed: the tests would get a 500. (The
listings, answered without that check for speed, are held to their models by a test.)
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from pipeline.domain.execution import NAME_PATTERN, ExecutionSettings
from pipeline.domain.lifecycle import PState
from pipeline.domain.limits import MAX_NAME_LENGTH, MAX_TASKS_PER_REQUEST, Id, Priority
from pipeline.domain.states import InstanceState, NodeState, SubtaskState
from pipeline.operations.facade import restart_modes

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH, examples=["sample"])]
#: A restart mode by name: the schema lists every mode there is.
ModeName = Annotated[
    Literal[*(mode.name for mode in restart_modes())],  # type: ignore[valid-type]
    Field(description="; ".join(f"{m.name}: from {m.starts_from}" for m in restart_modes())),
]
Time = Annotated[str | None, Field(description="ISO 8601, UTC, to the second")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Strict):
    """Every error answer: one line naming what was wrong."""

    detail: str


class Health(_Strict):
    status: str = "ok"
    #: Whether beat's monitor runs (nothing recovers lost work while it does not).
    monitor_running: bool
    #: "monitor ran at T on HOST", "monitor not running since T: ...", or why it is unknown.
    monitor: str


# -- responses -------------------------------------------------------------------------------


class Instance(_Strict):
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


class SubmittedInstance(Instance):
    tasks: list[int] = Field(description="ids of the tasks of the first nodes")


class FrozenParameterSet(_Strict):
    version: int
    values: dict[str, Any]


class InstanceDetail(Instance):
    parameters: dict[str, FrozenParameterSet] = Field(description="frozen at submission")
    tasks: int = Field(description="how many tasks the instance has so far")
    total_subtasks: int
    completed_subtasks: int
    failed_subtasks: int
    nodes: dict[str, NodeState]


class Task(_Strict):
    id: int
    instance_id: int
    node: str
    unit_of_work: str
    p_state: PState
    error: bool
    state: str = Field(description="the P-state, or ERROR - P-state when the error flag is set")
    error_message: str
    halted: bool
    attempt: int
    total_subtasks: int
    completed_subtasks: int
    failed_subtasks: int
    counts: str = Field(description="completed/total (failed), e.g. 3/4 (1)")
    worker_host: str
    execution: ExecutionSettings
    updated_at: Time


class RunningSubtask(_Strict):
    """A subtask as its task's detail lists it among those running."""

    index: int
    state: SubtaskState
    attempts: int
    error: str
    inputs: list[str]
    #: Files of the node's output types it left; unset until it succeeds.
    outputs: int | None
    worker_host: str
    worker_pid: int | None
    started_at: Time
    finished_at: Time
    heartbeat_at: Time


class Subtask(RunningSubtask):
    """A subtask as its task's listing shows it (its fields in the order of the CLI's
    ``--json``, which prints what the API answers when it reads through the API)."""

    #: The datastore paths its task's last marshal gave it.
    consumed: list[str]


class TaskEvent(_Strict):
    at: Time
    p_state: PState
    error: bool
    attempt: int
    host: str
    message: str


class TaskDetail(Task):
    task_dir: str
    history: list[TaskEvent]
    running: list[RunningSubtask] = Field(
        description="subtasks running now, with worker and heartbeat"
    )


class LogEntry(_Strict):
    index: int
    path: str
    text: str = Field(description="the algorithm's stdout and stderr")


class Outcome(_Strict):
    """What a restart or halt did (or, in a dry run, would do) to one task."""

    task_id: int
    mode: str
    ok: bool
    message: str
    start_from: str
    subtasks: list[int]


class Pipeline(_Strict):
    name: str
    version: int
    nodes: list[str]
    description: str
    imported_at: Time


class Parameter(_Strict):
    name: str
    type: str
    value: Any


class ParameterSet(_Strict):
    name: str
    version: int
    locked: bool
    parameters: list[Parameter]


class Alert(_Strict):
    id: int
    at: str
    severity: str
    instance_id: int | None
    task_id: int | None
    message: str
    acknowledged: bool


class DatastoreFile(_Strict):
    """One stored version of a datastore file and its producer."""

    id: int
    path: str = Field(description="under the datastore root")
    data_file_type: str
    unit_of_work: str
    size: int
    sha256: str
    origin: Literal["task", "received", "found"]
    receipt: str = Field(description="the receipt's manifest or directory, for received files")
    instance_id: int | None
    task_id: int | None
    subtask_index: int | None
    attempt: int | None
    node: str
    definition_version: int | None
    parameter_versions: dict[str, int]
    stored_at: Time
    superseded_at: Time
    current: bool = Field(description="whether its bytes are the ones on disk")


class LineageStep(_Strict):
    file: DatastoreFile
    definition_version: int | None
    parameters: dict[str, FrozenParameterSet] = Field(description="the producing task's")
    inputs: list[int] = Field(description="ids of the files its producing subtask consumed")


class Lineage(_Strict):
    path: str
    steps: list[LineageStep] = Field(description="the file first, then its inputs' producers")


class ReceivedFile(_Strict):
    path: str
    size: int
    sha256: str


class Receipt(_Strict):
    receipt: str
    data_file_type: str
    unit_of_work: str
    files: list[ReceivedFile]
    acknowledgement: str | None = Field(description="written beside the manifest")


# -- requests --------------------------------------------------------------------------------


class SubmitRequest(_Strict):
    pipeline: Name
    start_node: Name | None = Field(default=None, description="first node to run")
    end_node: Name | None = Field(default=None, description="last node to run")
    priority: Priority | None = Field(default=None, description="0 runs first, 9 last")


def _all_optional(model: type[BaseModel], name: str, doc: str) -> type[BaseModel]:
    """``model`` with every field optional and unset by default, its constraints kept.

    Unknown keys are let through so that the restart itself refuses them by name (an
    algorithm parameter is refused with the reason), as it does for the CLI; the schema
    still says they are not allowed, since they are refused.
    """
    fields: dict[str, Any] = {
        key: (info.annotation | None, FieldInfo.merge_field_infos(info, default=None))
        for key, info in model.model_fields.items()
    }
    config = ConfigDict(extra="allow", json_schema_extra={"additionalProperties": False})
    return create_model(name, __config__=config, __doc__=doc, **fields)


ExecutionChanges = _all_optional(
    ExecutionSettings,
    "ExecutionChanges",
    "Execution settings to change with a restart; algorithm parameters stay frozen.",
)


class TaskRestart(_Strict):
    task_id: Id
    mode: ModeName


class RestartRequest(_Strict):
    tasks: list[TaskRestart] = Field(
        min_length=1, max_length=MAX_TASKS_PER_REQUEST, description="each task with its own mode"
    )
    execution: ExecutionChanges | None = None  # type: ignore[valid-type]
    dry_run: bool = Field(default=False, description="say what would run; change nothing")


class ImportRequest(_Strict):
    """Files already on the API's host, received into the datastore as ``pipeline
    datastore import`` does."""

    directory: str = Field(min_length=1, max_length=4096, description="on the API's host")
    data_file_type: Name
    unit_of_work: str = Field(min_length=1, max_length=500)
    manifest: str | None = Field(
        default=None, min_length=1, max_length=4096, description="sha256sum format"
    )
    pipeline: Name | None = None


class RestartFailedRequest(_Strict):
    mode: ModeName
    execution: ExecutionChanges | None = None  # type: ignore[valid-type]
    dry_run: bool = Field(default=False, description="say what would run; change nothing")
