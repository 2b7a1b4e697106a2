"""SQLAlchemy models: the database is the source of truth for pipeline state."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    DateTime,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    false,
    text,
)
from sqlalchemy.ext.hybrid import hybrid_property
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

from pipeline.domain import lifecycle
from pipeline.domain.execution import ExecutionSettings
from pipeline.domain.lifecycle import PState
from pipeline.domain.states import BatchJobState, InstanceState, NodeState, SubtaskState


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite returns naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_result_value(self, value: datetime | None, dialect: Any) -> datetime | None:
        if value is not None and value.tzinfo is None:
            value = value.replace(tzinfo=UTC)
        return value


def utcnow() -> datetime:
    return datetime.now(UTC)


#: A P-state column: the enum in Python, its name as text in the database (no native enum
#: type and no CHECK constraint, so a new P-state needs no migration).
PStateColumn = Enum(
    PState,
    native_enum=False,
    create_constraint=False,
    length=32,
    values_callable=lambda states: [state.value for state in states],
)


class Base(DeclarativeBase):
    type_annotation_map = {datetime: UTCDateTime, dict[str, Any]: JSON, list[Any]: JSON}


class PipelineDefinition(Base):
    """One imported version of a pipeline definition file."""

    __tablename__ = "pipeline_definitions"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]
    digest: Mapped[str] = mapped_column(String(64))
    spec: Mapped[dict[str, Any]]
    source: Mapped[str] = mapped_column(Text, default="")
    imported_at: Mapped[datetime] = mapped_column(default=utcnow)


class ParameterSet(Base):
    """One version of a parameter set; ``locked`` once an instance used it."""

    __tablename__ = "parameter_sets"
    __table_args__ = (UniqueConstraint("name", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    version: Mapped[int]
    #: ``{key: {"type": "bool", "value": false}}``
    values: Mapped[dict[str, Any]]
    locked: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineInstance(Base):
    """One launch of a definition, with frozen copies of the definition and parameters."""

    __tablename__ = "pipeline_instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    definition_id: Mapped[int] = mapped_column(ForeignKey("pipeline_definitions.id"))
    pipeline: Mapped[str] = mapped_column(String(200))
    definition_version: Mapped[int]
    state: Mapped[str] = mapped_column(String(32), default=InstanceState.INITIALIZED)
    start_node: Mapped[str | None] = mapped_column(String(200))
    end_node: Mapped[str | None] = mapped_column(String(200))
    priority: Mapped[int | None]
    definition: Mapped[dict[str, Any]]
    #: ``{set name: {"version": n, "values": {key: value}}}``
    parameters: Mapped[dict[str, Any]]
    message: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)
    #: The model versions it pinned at submit: ``{type: {"version", "name", "sha256",
    #: "size"}}`` (None: submitted before models existed, or it uses none).
    models: Mapped[dict[str, Any] | None]
    #: The units of work it runs for (None: every unit the datastore holds).
    units: Mapped[list[Any] | None]
    #: ``submit --units REGEX`` / ``--exclude REGEX``: every node's units of work must match
    #: the first and not the second (whole names; None: no such rule).
    units_regexp: Mapped[str | None] = mapped_column(Text)
    units_exclude: Mapped[str | None] = mapped_column(Text)
    #: The event that started it: ``{"id", "handler", "labels", "deliveries"}`` (None:
    #: submitted by a person).
    event: Mapped[dict[str, Any] | None]

    nodes: Mapped[list[InstanceNode]] = relationship(back_populates="instance")


class InstanceNode(Base):
    """A node's progress within an instance; child tasks are created once, under its lock."""

    __tablename__ = "instance_nodes"
    __table_args__ = (UniqueConstraint("instance_id", "node"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("pipeline_instances.id"))
    node: Mapped[str] = mapped_column(String(200))
    state: Mapped[str] = mapped_column(String(16), default=NodeState.PENDING)

    instance: Mapped[PipelineInstance] = relationship(back_populates="nodes")


class Task(Base):
    """One unit of work on one node: a P-state, an error flag and subtask counts."""

    __tablename__ = "tasks"
    __table_args__ = (
        UniqueConstraint("instance_id", "node", "unit_of_work"),
        Index("ix_tasks_state", "p_state", "error"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    instance_id: Mapped[int] = mapped_column(ForeignKey("pipeline_instances.id"), index=True)
    node: Mapped[str] = mapped_column(String(200))
    unit_of_work: Mapped[str] = mapped_column(String(500))
    p_state: Mapped[PState] = mapped_column(PStateColumn, default=PState.INITIALIZING)
    error: Mapped[bool] = mapped_column(default=False)
    error_message: Mapped[str] = mapped_column(Text, default="")
    halted: Mapped[bool] = mapped_column(default=False)
    #: Its inputs were stored again, with other bytes, after it consumed them: its outputs
    #: are not what its parents' current outputs make (``engine.staleness``).
    stale: Mapped[bool] = mapped_column(default=False, server_default=false())
    stale_reason: Mapped[str] = mapped_column(Text, default="", server_default="")
    #: Run again from the beginning once every task it consumes from is done and current
    #: (``pipeline restart --downstream``).
    rerun: Mapped[bool] = mapped_column(default=False, server_default=false())
    #: Fences every Celery message: a message carrying another attempt is stale.
    attempt: Mapped[int] = mapped_column(default=1)
    auto_resubmits: Mapped[int] = mapped_column(default=0)
    total_subtasks: Mapped[int] = mapped_column(default=0)
    completed_subtasks: Mapped[int] = mapped_column(default=0)
    failed_subtasks: Mapped[int] = mapped_column(default=0)
    #: Its subtasks on the broker and running (NEW ones are the rest of the total): with
    #: the two counts above, its subtasks by state, kept as they change
    #: (``engine.task_state.count_subtasks``) for ``/metrics`` to sum over the tasks.
    queued_subtasks: Mapped[int] = mapped_column(default=0, server_default="0")
    running_subtasks: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Its subtask rows' dispatches after the first (lost work, resubmits), summed.
    redispatches: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Its finished subtasks' run times as a histogram (``domain.run_times``): how many
    #: ran, their time in all (microseconds), and how many ran at most each bucket's bound
    #: and above the one before (columns the database sums by node at a scrape).
    runs: Mapped[int] = mapped_column(default=0, server_default="0")
    run_micros: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    runs_le_0_1: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_0_5: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_1: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_5: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_10: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_30: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_60: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_300: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_1800: Mapped[int] = mapped_column(default=0, server_default="0")
    runs_le_3600: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Its restarts by mode, ``{mode: n}`` (None: never restarted).
    restarts: Mapped[dict[str, Any] | None]
    #: Lost subtasks dispatched again and lost marshals redone by beat's reconciler.
    lost_work_recoveries: Mapped[int] = mapped_column(default=0, server_default="0")
    #: Effective execution settings (the node's, as changed by restarts).
    execution: Mapped[dict[str, Any]]
    task_dir: Mapped[str] = mapped_column(Text, default="")
    worker_host: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)

    @hybrid_property
    def restartable(self) -> bool:
        """A restart may take it (``lifecycle.restartable``; a SQL condition on the class)."""
        return lifecycle.restartable(self)  # type: ignore[no-any-return]

    @hybrid_property
    def done(self) -> bool:
        """COMPLETE without the error flag (``lifecycle.done``; SQL on the class)."""
        return lifecycle.done(self)  # type: ignore[no-any-return]

    @hybrid_property
    def current(self) -> bool:
        """Done and not stale (``lifecycle.current``; SQL on the class)."""
        return lifecycle.current(self)  # type: ignore[no-any-return]

    @hybrid_property
    def running(self) -> bool:
        """It still moves through its steps (``lifecycle.running``; SQL on the class)."""
        return lifecycle.running(self)  # type: ignore[no-any-return]

    @property
    def settings(self) -> ExecutionSettings:
        """Its execution settings, typed, those stored before a setting existed at its
        default: made once for each value of ``execution`` (a restart replaces it), since
        a transaction reads them several times a task, and a restart has 1,000 tasks."""
        made = self.__dict__.get("_settings")
        if made is None or made[0] is not self.execution:
            made = (self.execution, ExecutionSettings.stored(self.execution))
            self.__dict__["_settings"] = made
        return made[1]


class Subtask(Base):
    """One piece of a task's work; its outcome survives restarts."""

    __tablename__ = "subtasks"
    __table_args__ = (
        UniqueConstraint("task_id", "index"),
        Index("ix_subtasks_task_state", "task_id", "state"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    index: Mapped[int] = mapped_column(Integer)
    state: Mapped[str] = mapped_column(String(16), default=SubtaskState.NEW)
    #: Times the algorithm was started on this subtask.
    attempts: Mapped[int] = mapped_column(default=0)
    #: Fences subtask messages: bumped at each dispatch.
    dispatch: Mapped[int] = mapped_column(default=0)
    #: The Celery message carrying its current dispatch (one message may carry a batch).
    message_id: Mapped[str] = mapped_column(String(200), default="", server_default="")
    error: Mapped[str] = mapped_column(Text, default="")
    inputs: Mapped[list[Any]]
    #: Files of the node's output types it left in its directory (set when it succeeds).
    outputs: Mapped[int | None]
    #: Those outputs as kept in the object store when it succeeded: ``[data file type,
    #: name, SHA-256, size, modification time (ns), inode]`` each (the store places them).
    kept: Mapped[list[Any] | None]
    worker_host: Mapped[str] = mapped_column(String(200), default="")
    worker_pid: Mapped[int | None]
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]


class BatchJob(Base):
    """One job array on a batch system: a task attempt's subtasks (or those of it sent
    again), each subtask's ``message_id`` naming the job's ``token``."""

    __tablename__ = "batch_jobs"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    attempt: Mapped[int]
    #: Its identity, given to the batch system as the job's comment (known before it is
    #: submitted, so a job whose submission was not recorded is still recognised).
    token: Mapped[str] = mapped_column(String(64), unique=True)
    #: The batch system (the executor's name: ``slurm``).
    system: Mapped[str] = mapped_column(String(32))
    #: The batch system's job id ("" until submitted).
    job_id: Mapped[str] = mapped_column(String(64), default="")
    subtasks: Mapped[int]
    elements: Mapped[int]
    partition: Mapped[str] = mapped_column(String(200), default="")
    state: Mapped[str] = mapped_column(String(16), default=BatchJobState.SUBMITTING)
    #: Why it is in that state, in a line (the controller's reason, a refusal).
    reason: Mapped[str] = mapped_column(Text, default="")
    #: Each element as last seen: ``{element: [state, elapsed s, queued s, nodes]}``.
    seen: Mapped[dict[str, Any]] = mapped_column(default=dict)
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    submitted_at: Mapped[datetime | None]
    ended_at: Mapped[datetime | None]
    #: Node-hours and cost estimated before it was submitted, and measured once it ran.
    estimated_node_hours: Mapped[float | None] = mapped_column(Float)
    estimated_cost: Mapped[float | None] = mapped_column(Float)
    node_hours: Mapped[float | None] = mapped_column(Float)
    cost: Mapped[float | None] = mapped_column(Float)


class TaskEvent(Base):
    """A task's history: every transition, restart and halt, with time and worker host."""

    __tablename__ = "task_events"

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"), index=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    p_state: Mapped[PState] = mapped_column(PStateColumn)
    error: Mapped[bool] = mapped_column(default=False)
    attempt: Mapped[int]
    host: Mapped[str] = mapped_column(String(200), default="")
    message: Mapped[str] = mapped_column(Text, default="")


class Alert(Base):
    """Something an operator should know about that no command reported: lost work, say."""

    __tablename__ = "alerts"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(default=utcnow)
    severity: Mapped[str] = mapped_column(String(16))
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline_instances.id"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"))
    message: Mapped[str] = mapped_column(Text)
    acknowledged_at: Mapped[datetime | None]
    #: The condition it is about, when it lasts (``disk:/srv/pipeline:warning``): raised
    #: once while the condition holds, ``cleared_at`` when it ends.
    cause: Mapped[str] = mapped_column(String(300), default="", server_default="")
    cleared_at: Mapped[datetime | None]


class Heartbeat(Base):
    """The last sign of life of a process that must always run somewhere (beat's reconciler):
    when it last ran, where, and when its silence was last reported as an alert."""

    __tablename__ = "heartbeats"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    at: Mapped[datetime]
    host: Mapped[str] = mapped_column(String(255))
    alerted_at: Mapped[datetime | None]


class DatastoreFile(Base):
    """One stored version of a datastore file and who produced it: a task's subtask, or a
    receipt (files imported by an operator, or found in the datastore unrecorded).

    A later store of the same path supersedes the row rather than replacing it, so a file's
    history is never lost; the current row (``superseded_at`` unset) describes the bytes on
    disk.
    """

    __tablename__ = "datastore_files"
    __table_args__ = (
        Index("ix_datastore_files_path", "path", "sha256", "superseded_at"),
        # The current version of a path: one entry a path, however many versions it has.
        Index(
            "ix_datastore_files_current",
            "path",
            postgresql_where=text("superseded_at IS NULL"),
            sqlite_where=text("superseded_at IS NULL"),
        ),
        Index("ix_datastore_files_instance", "instance_id", "unit_of_work", "data_file_type"),
        Index("ix_datastore_files_placing", "placing", "task_id", "attempt"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    #: Relative to the datastore root.
    path: Mapped[str] = mapped_column(String(1000))
    data_file_type: Mapped[str] = mapped_column(String(200))
    unit_of_work: Mapped[str] = mapped_column(String(500))
    size: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    #: The file's modification time when recorded: a changed file is seen without reading it.
    mtime_ns: Mapped[int] = mapped_column(BigInteger)
    #: ``task`` (stored by a task), ``received`` (imported) or ``found`` (on disk, unrecorded).
    origin: Mapped[str] = mapped_column(String(16))
    #: The receipt's name (its manifest, or the directory imported), for received files.
    receipt: Mapped[str] = mapped_column(Text, default="")
    instance_id: Mapped[int | None] = mapped_column(ForeignKey("pipeline_instances.id"))
    task_id: Mapped[int | None] = mapped_column(ForeignKey("tasks.id"), index=True)
    subtask_index: Mapped[int | None]
    attempt: Mapped[int | None]
    node: Mapped[str] = mapped_column(String(200), default="")
    definition_version: Mapped[int | None]
    #: ``{parameter set: version}`` of the sets the producing task used.
    parameter_versions: Mapped[dict[str, Any]]
    stored_at: Mapped[datetime] = mapped_column(default=utcnow)
    superseded_at: Mapped[datetime | None]
    #: When retention removed its bytes (``pipeline datastore prune``): its row stays.
    pruned_at: Mapped[datetime | None]
    #: Being linked at its path by a store that has not committed yet: not a version until
    #: then (``datastore_ledger``, the store's protocol).
    placing: Mapped[bool] = mapped_column(default=False, server_default=false())


class FileConsumption(Base):
    """A datastore file a subtask was given as input, recorded when its task marshaled."""

    __tablename__ = "file_consumptions"
    __table_args__ = (Index("ix_file_consumptions_task", "task_id", "attempt", "subtask_index"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    #: The task attempt that marshaled: a new marshal records its inputs afresh.
    attempt: Mapped[int]
    subtask_index: Mapped[int]
    file_id: Mapped[int] = mapped_column(ForeignKey("datastore_files.id"), index=True)


class Model(Base):
    """One version of a model (Ziggy's model registry): a file such as a calibration,
    received like data and kept forever; an instance pins the versions it uses."""

    __tablename__ = "models"
    __table_args__ = (UniqueConstraint("model_type", "version"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    model_type: Mapped[str] = mapped_column(String(200))
    version: Mapped[str] = mapped_column(String(200))
    #: From the file name, where its type's pattern has a ``timestamp`` group.
    timestamp: Mapped[str] = mapped_column(String(64), default="", server_default="")
    #: The file's original name, which the algorithm sees.
    name: Mapped[str] = mapped_column(String(500))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(BigInteger)
    receipt: Mapped[str] = mapped_column(Text, default="", server_default="")
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class Dataset(Base):
    """A Ziggy delivery's ``datasetId``, once received: no later manifest may use it again
    (but 0, which any may)."""

    __tablename__ = "datasets"

    dataset_id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    receipt: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(default=utcnow)


class EventHandler(Base):
    """A watched directory whose ready files start its pipeline (Ziggy's event handlers);
    its enabled state is the operator's and survives a cluster restart."""

    __tablename__ = "event_handlers"

    name: Mapped[str] = mapped_column(String(200), primary_key=True)
    pipeline: Mapped[str] = mapped_column(String(200))
    directory: Mapped[str] = mapped_column(Text)
    enabled: Mapped[bool]
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class PipelineEvent(Base):
    """One event a handler saw: all the ready files of its labels present. Keyed by the
    handler and what was delivered, so an event is handled once however often it is seen."""

    __tablename__ = "pipeline_events"
    __table_args__ = (UniqueConstraint("handler", "key"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    handler: Mapped[str] = mapped_column(String(200))
    #: SHA-256 over the labels and their manifests' bytes.
    key: Mapped[str] = mapped_column(String(64))
    labels: Mapped[list[Any]]
    #: ``[{"label", "manifest", "files", "units", "models"}]`` once received.
    deliveries: Mapped[list[Any]]
    #: ``receiving``, ``submitted`` or ``failed``.
    state: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="", server_default="")
    instance_id: Mapped[int | None]
    #: When a scan took it: another scan takes it over only after ``stale_after``.
    claimed_at: Mapped[datetime | None]
    created_at: Mapped[datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(default=utcnow)


class TaskAttempt(Base):
    """What ran one attempt of a task: its code (``domain.code_version``) and the model
    versions its subtasks were given, recorded when the attempt first ran."""

    __tablename__ = "task_attempts"
    __table_args__ = (UniqueConstraint("task_id", "attempt"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    task_id: Mapped[int] = mapped_column(ForeignKey("tasks.id"))
    attempt: Mapped[int]
    code: Mapped[dict[str, Any]]
    #: ``{type: {"version", "name", "sha256", "size"}}``
    models: Mapped[dict[str, Any]]
    recorded_at: Mapped[datetime] = mapped_column(default=utcnow)
