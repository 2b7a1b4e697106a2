"""The HTTP API's request bodies, and its error answer. Its responses are the operations'
own views (``pipeline.operations.views``), the fields of the CLI's ``--json`` output."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator
from pydantic.fields import FieldInfo

from pipeline.domain.execution import NAME_PATTERN, ExecutionSettings
from pipeline.domain.limits import MAX_NAME_LENGTH, MAX_TASKS_PER_REQUEST, Id, Priority
from pipeline.operations.modes import MODES

Name = Annotated[str, Field(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH, examples=["sample"])]
#: A restart mode by name: the schema lists every mode there is.
ModeName = Annotated[
    Literal[*MODES],  # type: ignore[valid-type]
    Field(description="; ".join(f"{m.name}: from {m.starts_from}" for m in MODES.values())),
]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Error(_Strict):
    """Every error answer: one line naming what was wrong."""

    detail: str


class Health(_Strict):
    status: str = "ok"
    #: Whether beat's reconciler runs (nothing recovers lost work while it does not).
    reconciler_running: bool
    #: "reconciler ran at T on HOST", "reconciler not running since T: ...", or why it is unknown.
    reconciler: str


# -- requests --------------------------------------------------------------------------------


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


class SubmitRequest(_Strict):
    pipeline: Name
    start_node: Name | None = Field(default=None, description="first node to run")
    end_node: Name | None = Field(default=None, description="last node to run")
    priority: Priority | None = Field(default=None, description="0 runs first, 9 last")
    models: dict[str, str] = Field(
        default_factory=dict,
        max_length=100,
        description="model versions to pin, by model type (the newest of every other type)",
    )
    units: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="run only the units of work whose whole name matches this regexp",
    )
    exclude: str | None = Field(
        default=None,
        min_length=1,
        max_length=500,
        description="leave out the units of work whose whole name matches this regexp",
    )
    # Keys unconstrained in the schema (OpenAPI cannot say a key's pattern): a name no
    # node has is refused as unknown (404), as it is by the CLI.
    execution: dict[str, ExecutionChanges] = Field(  # type: ignore[valid-type]
        default_factory=dict,
        max_length=1000,
        description="execution settings to change for this instance, by node (frozen with it;"
        " batch.environment names a remote environment)",
    )
    dry_run: bool = Field(
        default=False,
        description="say every node's tasks and subtask counts (200); submit nothing",
    )


class TaskRestart(_Strict):
    task_id: Id
    mode: ModeName


#: What a restart's ``downstream`` does.
DOWNSTREAM = "run the tasks downstream again too, in order, as they become stale"


class RestartRequest(_Strict):
    tasks: list[TaskRestart] = Field(
        min_length=1, max_length=MAX_TASKS_PER_REQUEST, description="each task with its own mode"
    )
    execution: ExecutionChanges | None = None  # type: ignore[valid-type]
    dry_run: bool = Field(default=False, description="say what would run; change nothing")
    downstream: bool = Field(default=False, description=DOWNSTREAM)


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


class DeliveryRequest(_Strict):
    """A delivery already on the API's host: a directory laid out as the datastore, with its
    manifest at its top."""

    directory: str = Field(min_length=1, max_length=4096, description="on the API's host")
    pipeline: Name | None = None


class ModelImportRequest(_Strict):
    """A model file already on the API's host."""

    file: str = Field(min_length=1, max_length=4096, description="on the API's host")
    model_type: Name
    pipeline: Name | None = None


class ParameterLibraryImport(_Strict):
    """A Ziggy parameter library file already on the API's host (as `pipeline params
    import`): what it would do to each set, done only with ``apply``."""

    file: str = Field(min_length=1, max_length=4096, description="on the API's host")
    apply: bool = Field(default=False, description="false: a preview, nothing changes")


class DeliveryComplete(_Strict):
    """The labels of an event's deliveries: each a directory in the handler's directory."""

    labels: list[Annotated[str, Field(min_length=1, max_length=500)]] = Field(
        min_length=1, max_length=1000
    )


class DatastorePruneRequest(_Strict):
    keep_last: int | None = Field(default=None, ge=1, le=1_000_000)
    keep_days: float | None = Field(
        default=None,
        ge=0,
        le=36_500,
        strict=True,
        description="keep what the last this many days used",
    )
    dry_run: bool = Field(default=False, description="say what would go; remove nothing")

    @field_validator("keep_last", mode="before")
    @classmethod
    def _not_a_boolean(cls, value: object) -> object:
        if isinstance(value, bool):
            raise ValueError("Input should be a valid integer")
        return value


class TaskDirsPruneRequest(_Strict):
    older_than_days: float = Field(ge=0, le=36_500, strict=True, description="last changed before")
    dry_run: bool = Field(default=False, description="say what would go; remove nothing")


class RestartFailedRequest(_Strict):
    mode: ModeName
    execution: ExecutionChanges | None = None  # type: ignore[valid-type]
    dry_run: bool = Field(default=False, description="say what would run; change nothing")
    downstream: bool = Field(default=False, description=DOWNSTREAM)
