"""Execution settings (Ziggy's remote execution parameters): where and how a node's
subtasks run, the only values a restart may change. One typed object with its defaults,
here: a node declares them, a task keeps its own copy (changed by restarts), and every
reader takes them through ``ExecutionSettings.stored``, so no default is written twice.
"""

from __future__ import annotations

import shlex
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from pipeline.domain.lifecycle import Executor
from pipeline.domain.limits import (
    MAX_NAME_LENGTH,
    Count,
    PositiveCount,
    Price,
    Priority,
    Seconds,
)

#: What a pipeline, node, parameter set or queue may be called.
NAME_PATTERN = r"^[A-Za-z][A-Za-z0-9_.-]*$"
#: The queue of a node whose settings name none.
DEFAULT_QUEUE = "default"


#: A walltime as a batch system takes it: ``HH:MM:SS`` (hours may exceed 24).
WALLTIME_PATTERN = r"^[0-9]{1,4}:[0-5][0-9]:[0-5][0-9]$"


class BatchSettings(BaseModel):
    """How a node's subtasks run on a batch system (``executor: slurm``): Ziggy's remote
    parameters. Each task attempt is one job array of ``ceil(subtasks / subtasks_per_job)``
    elements."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    partition: str = Field(default="", max_length=MAX_NAME_LENGTH, description="unset: the default")
    account: str = Field(default="", max_length=MAX_NAME_LENGTH, description="unset: the default")
    cores: PositiveCount = Field(default=1, description="cores per job")
    memory_gb: float = Field(default=1.0, gt=0, le=1_000_000, allow_inf_nan=False)
    walltime: str = Field(default="01:00:00", pattern=WALLTIME_PATTERN, description="HH:MM:SS")
    max_jobs: PositiveCount | None = Field(
        default=None, description="array elements running at once; unset: no limit"
    )
    subtasks_per_job: PositiveCount = Field(
        default=1, description="subtasks each array element runs, one after another"
    )
    sbatch_options: list[str] = Field(default_factory=list, description="passed as they are")
    environment: str = Field(
        default="",
        max_length=MAX_NAME_LENGTH,
        description="a remote environment (Ziggy's): its queue is the partition, its"
        " architecture the cores and memory of a job and the price of a node-hour",
    )
    architecture: str = Field(
        default="", max_length=MAX_NAME_LENGTH, description="of the remote environment"
    )
    queue: str = Field(
        default="",
        max_length=MAX_NAME_LENGTH,
        description="of the remote environment; unset: the shortest auto-selectable queue"
        " the walltime fits",
    )
    cost_per_node_hour: Price | None = Field(
        default=None, description="the price of a node-hour; unset: batch_costs by partition"
    )
    cost_unit: str = Field(default="", max_length=MAX_NAME_LENGTH, description="of the price")
    lost_subtasks: Literal["rerun", "fail"] = Field(
        default="rerun",
        description="a subtask whose job ended without its outcome (cancelled, killed at its"
        " walltime, its node lost): run again (up to lost_subtask_retries times), or failed",
    )


class ExecutionSettings(BaseModel):
    """Ziggy's remote execution parameters: the only values a restart may change. Each is
    finite and within its limit (``pipeline.domain.limits``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    queue: str = Field(default=DEFAULT_QUEUE, pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH)
    subtask_timeout: Seconds = Field(default=3600.0, description="seconds per subtask")
    max_failed_subtasks: Count = 0
    max_auto_resubmits: Count = 0
    priority: Priority = Field(default=5, description="0 runs first, 9 last")
    batch_size: PositiveCount | None = Field(
        default=None,
        description="subtasks per message; unset: one each for small tasks, batches for big ones",
    )
    require_outputs: bool = Field(
        default=False,
        description="a subtask that leaves no file of the node's output types fails",
    )
    executor: Executor = Field(
        default=Executor.CELERY,
        description="where the subtasks run: celery (the workers), slurm (a batch system)",
    )
    batch: BatchSettings = Field(
        default=BatchSettings(), description="the job arrays of executor: slurm"
    )

    @classmethod
    def stored(cls, execution: Mapping[str, Any]) -> ExecutionSettings:
        """A task's stored settings as read back, those it lacks at their defaults, without
        validating them again (they were when stored; a task is read at every message)."""
        values = with_execution_defaults(execution)
        batch = BatchSettings.model_construct(**{**_BATCH_DEFAULTS, **(values["batch"] or {})})
        return cls.model_construct(**{**values, "batch": batch})


#: Every batch setting at its default.
_BATCH_DEFAULTS = BatchSettings().model_dump()


#: Every execution setting at its default (see ``with_execution_defaults``).
_EXECUTION_DEFAULTS = ExecutionSettings().model_dump()


def with_execution_defaults(execution: Mapping[str, Any]) -> dict[str, Any]:
    """Stored execution settings with those they lack at their defaults, as a new dict: a
    task stored before a setting existed has no value for it (its migration adds none);
    ``{}`` gives the defaults."""
    return {**_EXECUTION_DEFAULTS, **execution}


#: A restart's change of one batch setting, the others kept: ``batch.partition=long``.
BATCH_PREFIX = "batch."


def changeable() -> list[str]:
    """What a restart may change: every execution setting, and each batch setting alone as
    ``batch.NAME``."""
    return [
        *ExecutionSettings.model_fields,
        *(BATCH_PREFIX + n for n in BatchSettings.model_fields),
    ]


def with_changes(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Stored settings with a restart's ``changes`` (keys from ``changeable``), validated
    (pydantic's ``ValidationError``): ``batch`` replaces the batch settings, ``batch.NAME``
    changes one of them; ``batch.sbatch_options`` given as text is split as a shell would."""
    values = with_execution_defaults(current)
    values.update(
        (key, value) for key, value in changes.items() if key in ExecutionSettings.model_fields
    )
    batch = dict(values["batch"] or {})
    for key, value in changes.items():
        name = key.removeprefix(BATCH_PREFIX)
        if key.startswith(BATCH_PREFIX):
            batch[name] = (
                shlex.split(value) if name == "sbatch_options" and isinstance(value, str) else value
            )
    values["batch"] = batch
    return ExecutionSettings.model_validate(values).model_dump()
