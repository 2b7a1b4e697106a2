"""What a node's subtasks cost on a batch system: estimated before they run (a submit's
dry run, a restart's preview, each job array as it is recorded) and measured after.

The estimate is the node-hours a subtask of the node took in the earlier jobs of its
pipeline (their elements' elapsed times, summed, over the subtasks they carried), or,
when none of its jobs ended yet, ``batch_guess_seconds`` a subtask, said to be a guess.
A job array per task attempt: a node's jobs are its tasks. A node-hour is priced by the
batch settings' ``cost_per_node_hour`` (a remote environment's architecture sets it, with
its cost unit), else by partition (``batch_costs``; ``""`` the default partition); a
partition not priced has node-hours and no cost.

Before a submit, a first node's subtasks are counted from the datastore as marshaling
would choose them; a later node's are not known until its parents ran: they are those
of its earlier tasks (their mean), else as many as its parents' (one a file), said so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from pipeline.domain.definitions import Definition, Grouped, Node
from pipeline.domain.execution import BatchSettings, ExecutionSettings
from pipeline.domain.lifecycle import Executor
from pipeline.domain.models import BatchJob, PipelineInstance, Task
from pipeline.domain.states import BatchJobState
from pipeline.domain.words import counted
from pipeline.engine import datastore_ledger, taskdir
from pipeline.settings import get_settings

#: How a node's subtasks were counted for its estimate.
COUNTED = "counted in the datastore"
AS_BEFORE = "as many as its earlier tasks had"
FROM_PARENTS = "guessed from its parents' (not known until they ran)"


@dataclass(frozen=True)
class Estimate:
    """The node-hours, jobs and cost of running some subtasks of a node on a batch system."""

    node: str
    partition: str
    jobs: int
    subtasks: int
    node_hours: float
    cost: float | None
    #: What the cost is counted in ("": the settings' unit, unnamed).
    cost_unit: str
    #: Node-seconds a subtask: measured, or ``batch_guess_seconds``.
    seconds_per_subtask: float
    #: The subtasks of earlier jobs it was measured over (0: the guess).
    measured: int
    #: How ``subtasks`` was found (``COUNTED``...; empty: the subtasks to run are known).
    subtasks_from: str = ""

    @property
    def basis(self) -> str:
        """Where the figure per subtask comes from, in words."""
        seconds = f"{self.seconds_per_subtask:.3g} s a subtask"
        if self.measured:
            return f"{seconds} as measured over {counted(self.measured, 'subtask')} run before"
        return f"{seconds}, a guess (batch_guess_seconds): none of its jobs ended yet"

    def line(self) -> str:
        """``2 jobs, 8 subtasks, 0.0444 node-hours, cost 0.04 (partition debug; ...)``."""
        unit = f" {self.cost_unit}" if self.cost_unit else ""
        cost = "" if self.cost is None else f", cost {self.cost:.2f}{unit}"
        where = f"partition {self.partition}" if self.partition else "the default partition"
        found = f"; subtasks {self.subtasks_from}" if self.subtasks_from else ""
        return (
            f"{counted(self.jobs, 'job')}, {counted(self.subtasks, 'subtask')},"
            f" {self.node_hours:.3g} node-hours{cost} ({where}; {self.basis}{found})"
        )


def price(node_hours: float, batch: BatchSettings, partition: str) -> float | None:
    """The cost of these node-hours with these batch settings on the partition; None when
    neither they nor the settings price it."""
    rate = batch.cost_per_node_hour
    if rate is None:
        rate = get_settings().batch_costs.get(partition)
    return None if rate is None else node_hours * rate


def measure(job: BatchJob, batch: BatchSettings) -> None:
    """The job's node-hours and cost so far (its task's ``batch`` settings' price), from
    its elements' elapsed times."""
    if not job.seen:
        return
    seconds = sum(elapsed * nodes for _, elapsed, _, nodes in job.seen.values())
    job.node_hours = seconds / 3600
    job.cost = price(job.node_hours, batch, job.partition)


def per_subtask(session: Session, pipeline: str, node: str) -> tuple[float, int]:
    """Node-seconds a subtask of the pipeline's node took in its ended jobs, and over how
    many subtasks; ``(batch_guess_seconds, 0)`` when none ended."""
    hours, subtasks = session.execute(
        select(func.sum(BatchJob.node_hours), func.sum(BatchJob.subtasks))
        .join(Task, Task.id == BatchJob.task_id)
        .join(PipelineInstance, PipelineInstance.id == Task.instance_id)
        .where(
            PipelineInstance.pipeline == pipeline,
            Task.node == node,
            BatchJob.state == BatchJobState.ENDED,
            BatchJob.node_hours.is_not(None),
        )
    ).one()
    if not subtasks:
        return get_settings().batch_guess_seconds, 0
    return float(hours) * 3600 / int(subtasks), int(subtasks)


def estimate(
    session: Session,
    pipeline: str,
    node: str,
    settings: ExecutionSettings,
    subtasks: int,
    jobs: int = 1,
    subtasks_from: str = "",
) -> Estimate:
    """The estimate of running ``subtasks`` of the node in ``jobs`` job arrays with these
    settings (their partition)."""
    seconds, measured = per_subtask(session, pipeline, node)
    node_hours = seconds * subtasks / 3600
    partition = settings.batch.partition
    return Estimate(
        node=node,
        partition=partition,
        jobs=jobs,
        subtasks=subtasks,
        node_hours=node_hours,
        cost=price(node_hours, settings.batch, partition),
        cost_unit=settings.batch.cost_unit,
        seconds_per_subtask=seconds,
        measured=measured,
        subtasks_from=subtasks_from,
    )


def for_task(session: Session, task: Task, pipeline: str, subtasks: int) -> Estimate:
    """The estimate of one job array of ``subtasks`` of the task, with its settings."""
    return estimate(session, pipeline, task.node, task.settings, subtasks)


def before_submit(
    session: Session,
    root: Path,
    instance: PipelineInstance,
    definition: Definition,
    nodes: Sequence[str],
    first_tasks: Sequence[Task],
) -> list[Estimate]:
    """The estimate of each node of ``nodes`` on a batch system, for an instance (not
    committed: a dry run's) whose first nodes' tasks are ``first_tasks`` (module docstring).
    A pipeline with no node on a batch system has none, and its inputs are not looked at."""
    if all(definition.node(name).execution.executor != Executor.SLURM for name in nodes):
        return []
    tasks: dict[str, int] = {}
    per_task: dict[str, float] = {}
    how: dict[str, str] = {}
    for task in first_tasks:
        node = definition.node(task.node)
        files = datastore_ledger.select_inputs(
            session, root, instance, definition, node, task.unit_of_work
        ).files
        tasks[task.node] = tasks.get(task.node, 0) + 1
        per_task[task.node] = per_task.get(task.node, 0) + len(taskdir.split(files, node))
        how[task.node] = COUNTED
    for name in tasks:
        per_task[name] /= tasks[name]
    estimates = []
    for name in nodes:
        node = definition.node(name)
        if name not in tasks:
            tasks[name], per_task[name], how[name] = _later_node(
                session, instance.pipeline, node, tasks, per_task
            )
        if node.execution.executor != Executor.SLURM:
            continue
        estimates.append(
            estimate(
                session,
                instance.pipeline,
                name,
                node.execution,
                math.ceil(tasks[name] * per_task[name]),
                tasks[name],
                how[name],
            )
        )
    return estimates


def _later_node(
    session: Session,
    pipeline: str,
    node: Node,
    tasks: dict[str, int],
    per_task: dict[str, float],
) -> tuple[int, float, str]:
    """A later node's tasks (as many as its parents'), subtasks a task and how they were
    found: its earlier tasks' mean, else its parents' split as the node splits them."""
    parents = [parent for parent in node.after if parent in tasks]
    count = max((tasks[parent] for parent in parents), default=0)
    before = session.scalar(
        select(func.avg(Task.total_subtasks))
        .join(PipelineInstance, PipelineInstance.id == Task.instance_id)
        .where(
            PipelineInstance.pipeline == pipeline,
            Task.node == node.name,
            Task.total_subtasks > 0,
        )
    )
    if before is not None:
        return count, float(before), AS_BEFORE
    files = max((per_task[parent] for parent in parents), default=1.0)
    if node.subtasks == "single":
        return count, 1.0, FROM_PARENTS
    size = node.subtasks.group_size if isinstance(node.subtasks, Grouped) else 1
    return count, float(math.ceil(files / size)), FROM_PARENTS
