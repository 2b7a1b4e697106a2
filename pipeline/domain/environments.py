"""Remote environments (Ziggy's ``remoteEnvironment``): a batch system's centre as its
operators describe it, its node architectures (cores, RAM, price of a node-hour) and its
queues (wall time and node limits, reserved or not), declared with a pipeline's
definitions.

A node runs on one when its batch settings name it (``batch.environment``, with
``batch.architecture`` and ``batch.queue``): ``settle`` turns those names into the batch
settings a job array is submitted with (the queue is the partition, the architecture
gives the cores and memory of a job and the price of its node-hours), refusing in one
line what the centre cannot run. It is asked when a node's settings are frozen with an
instance (submit) and when a restart changes them, never later: a declaration changed
since changes no instance already submitted.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from pipeline.domain.lifecycle import Executor
from pipeline.domain.limits import MAX_NAME_LENGTH, PositiveCount, Price
from pipeline.errors import InvalidInput, NotFound, Refused, shown

#: The batch systems a node can run on here (the executors but Celery's own workers).
IMPLEMENTED = tuple(e.value for e in Executor if e != Executor.CELERY)
#: The batch settings a remote environment decides; an operator names its architecture
#: and queue instead.
SETTLED = ("partition", "cores", "memory_gb", "cost_per_node_hour", "cost_unit")


class _Declared(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = Field(default="", max_length=10_000)


class Architecture(_Declared):
    """A kind of compute node: a job of the node's gets all of one."""

    cores: PositiveCount
    ram_gigabytes: float = Field(gt=0, le=1_000_000, allow_inf_nan=False)
    #: The price of a node-hour, in the environment's cost unit (None: not priced).
    cost: Price | None = None
    bandwidth_gbps: float | None = Field(default=None, gt=0, allow_inf_nan=False)


class BatchQueue(_Declared):
    """A queue (Slurm's partition) of the centre."""

    max_wall_time_hours: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    #: Nodes a job may hold at once: here, elements of an array running at once.
    max_nodes: PositiveCount | None = None
    #: Chosen when no queue is named (Ziggy's auto-selection), if its limit fits.
    auto_selectable: bool = True
    #: A queue reserved for a group, named when it is granted: not selected by name here.
    reserved: bool = False


class RemoteEnvironment(_Declared):
    """A centre: its batch system, the unit of its prices, its architectures and queues."""

    batch_system: str = Field(max_length=MAX_NAME_LENGTH)
    cost_unit: str = Field(default="", max_length=MAX_NAME_LENGTH)
    architectures: dict[str, Architecture] = Field(default_factory=dict)
    queues: dict[str, BatchQueue] = Field(default_factory=dict)

    def settle(
        self, name: str, executor: str, batch: Mapping[str, Any], given: Collection[str] = ()
    ) -> dict[str, Any]:
        """``batch`` (the settings of a node that names this environment ``name``) with what
        its architecture and queue decide (``SETTLED``, and the queue chosen when none is
        named). Refused in one line: a batch system not implemented here, a node not on
        it, unknown names, a reserved queue, a walltime or ``max_jobs`` over the queue's
        limit, or a setting of ``given`` (the keys an operator set) that it decides."""
        where = f"remote environment {shown(name)}"
        if self.batch_system not in IMPLEMENTED:
            raise Refused(
                f"{where} runs on batch system {shown(self.batch_system)}: only"
                f" {', '.join(IMPLEMENTED)} is implemented here"
            )
        if executor != self.batch_system:
            raise InvalidInput(
                f"{where} runs on {self.batch_system}, the node on {executor}: set"
                f" executor={self.batch_system}, or no environment (batch.environment=)"
            )
        for key in SETTLED:
            if "batch." + key in given:
                raise InvalidInput(
                    f"batch.{key}: set by architecture {shown(batch['architecture'])} of {where}"
                    " and its queue; choose another batch.architecture or batch.queue, or"
                    " batch.environment="
                )
        architecture = self._architecture(where, batch["architecture"])
        walltime = hours(batch["walltime"])
        queue_name = batch["queue"] or self._auto_queue(where, walltime)
        queue = _named(where, "queue", queue_name, self.queues)
        if queue.reserved:
            raise Refused(
                f"queue {shown(queue_name)} of {where} is reserved: name its partition"
                " (batch.partition=NAME) without batch.environment once it is granted"
            )
        limit = queue.max_wall_time_hours
        if limit is not None and walltime > limit:
            raise InvalidInput(
                f"batch.walltime {batch['walltime']}: over queue {shown(queue_name)}'s limit of"
                f" {limit:g} hours ({where})"
            )
        max_jobs = batch.get("max_jobs")
        if queue.max_nodes is not None and max_jobs is not None and max_jobs > queue.max_nodes:
            raise InvalidInput(
                f"batch.max_jobs {max_jobs}: over queue {shown(queue_name)}'s limit of"
                f" {queue.max_nodes} nodes ({where})"
            )
        return {
            **batch,
            "queue": queue_name,
            "partition": queue_name,
            "cores": architecture.cores,
            "memory_gb": architecture.ram_gigabytes,
            "cost_per_node_hour": architecture.cost,
            "cost_unit": self.cost_unit,
            "max_jobs": max_jobs if max_jobs is not None else queue.max_nodes,
        }

    def _architecture(self, where: str, name: str) -> Architecture:
        if not name:
            raise InvalidInput(
                f"{where}: name batch.architecture, one of {', '.join(sorted(self.architectures))}"
            )
        return _named(where, "architecture", name, self.architectures)

    def _auto_queue(self, where: str, walltime: float) -> str:
        """The auto-selectable queue with the shortest limit that fits ``walltime``."""
        fitting = [
            (queue.max_wall_time_hours or float("inf"), name)
            for name, queue in self.queues.items()
            if queue.auto_selectable
            and not queue.reserved
            and (queue.max_wall_time_hours or float("inf")) >= walltime
        ]
        if not fitting:
            raise InvalidInput(
                f"{where}: no auto-selectable queue takes a walltime of {walltime:g} hours:"
                " name batch.queue"
            )
        return min(fitting)[1]


def _named(where: str, what: str, name: str, known: Mapping[str, Any]) -> Any:
    if name not in known:
        raise NotFound(f"{where} has no {what} {shown(name)} (one of {', '.join(sorted(known))})")
    return known[name]


def hours(walltime: str) -> float:
    """``HH:MM:SS`` in hours."""
    h, m, s = (int(part) for part in walltime.split(":"))
    return h + m / 60 + s / 3600


def unsettled(batch: Mapping[str, Any]) -> str:
    """Why batch settings that name no environment cannot stand ("" when they can): an
    architecture or queue named without one."""
    for key in ("architecture", "queue"):
        if batch.get(key) and not batch.get("environment"):
            return (
                f"batch.{key} {shown(batch[key])}: a remote environment's {key}; name the"
                " environment too (batch.environment)"
            )
    return ""
