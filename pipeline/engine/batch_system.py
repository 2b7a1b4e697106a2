"""A batch system (Slurm, PBS...) as the pipeline needs it: submit one job array, query
every job of the cluster at once, cancel jobs. Nothing else of the engine talks to a
batch system's commands: a new one (PBS) is an implementation of ``BatchSystem``.

A batch system is asked from the head node only; its compute nodes run each element of
an array from the shared file system (``pipeline.engine.batch_element``), reaching
neither the broker nor the database. A controller that does not answer is
``BatchUnreachable``: the caller keeps what it knew and asks again at its next cycle.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from pipeline.errors import PipelineError, Refused

#: Job states of an array element that is still queued or running (Slurm's words; an
#: implementation for another system maps its own states onto these and ``ENDED_STATES``).
ACTIVE_STATES = frozenset(
    {
        "PENDING",
        "CONFIGURING",
        "RUNNING",
        "COMPLETING",
        "SUSPENDED",
        "REQUEUED",
        "REQUEUE_FED",
        "REQUEUE_HOLD",
        "RESIZING",
        "SIGNALING",
        "STAGE_OUT",
        "STOPPED",
        "RESV_DEL_HOLD",
    }
)


class BatchUnreachable(PipelineError):
    """The batch system's controller did not answer (or its command is missing). Not an
    ``Unreachable`` (the database or broker, which Celery retries): the monitor asks again
    at its next cycle."""


class BatchRefused(Refused):
    """The batch system refused what it was asked (an unknown partition or account, a
    walltime over the partition's limit): asking again changes nothing."""


@dataclass(frozen=True)
class ArrayRequest:
    """One job array: ``elements`` elements, element ``n`` running ``command`` with ``n``
    appended as its last argument, in ``directory`` (its logs there too)."""

    #: The name every job of this cluster shares: what ``query`` asks for.
    name: str
    #: This job's own identity (its row's token), shown back by ``query``.
    comment: str
    command: Sequence[str]
    elements: int
    directory: Path
    partition: str = ""
    account: str = ""
    cores: int = 1
    memory_gb: float = 1.0
    #: ``HH:MM:SS``.
    walltime: str = "01:00:00"
    #: Elements running at once at most (None: as many as the system allows).
    max_running: int | None = None
    #: Options passed as they are (``--qos=debug``...).
    options: Sequence[str] = ()


@dataclass(frozen=True)
class JobStatus:
    """One element of a job array as the controller sees it."""

    job_id: str
    #: The element's index in its array (None: not an array).
    element: int | None
    state: str
    comment: str
    #: Seconds it has run (so far, or in all once ended).
    elapsed: float = 0.0
    #: Seconds it waited in the queue (so far, while pending).
    queued: float = 0.0
    reason: str = ""
    partition: str = ""
    nodes: int = 1
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def active(self) -> bool:
        """Still queued or running: its work may still write outcomes."""
        return self.state in ACTIVE_STATES


class BatchSystem(Protocol):
    """What the pipeline asks of a batch system (module docstring)."""

    #: Its name, as the ``executor`` execution setting says it.
    name: str

    def submit_array(self, request: ArrayRequest) -> str:
        """Submit the array (one submission, whatever its size); its job id."""

    def query(self, name: str) -> list[JobStatus]:
        """Every element of every job named ``name`` the controller still knows, queued,
        running or recently ended: one call for all of them."""

    def cancel(self, job_ids: Sequence[str]) -> None:
        """Cancel these jobs (every element of each); one unknown or ended is no error."""

    def answers(self) -> str:
        """A line on the controller (its version, its partitions' states); raises
        ``BatchUnreachable`` when it does not answer."""


#: The batch system each process uses, by name, once one was asked for (see ``use``).
_systems: dict[str, BatchSystem] = {}
#: Each batch system's implementation (``module:class``), loaded when first asked for: an
#: implementation builds on this interface, never the other way round (a PBS one is a
#: line here and a module of its own).
IMPLEMENTATIONS = {"slurm": "pipeline.engine.slurm:Slurm"}


def batch_system(name: str) -> BatchSystem:
    """The batch system of this name (``slurm``): the one installed by ``use``, else the
    real one."""
    if name not in _systems:
        module, _, kind = IMPLEMENTATIONS[name].partition(":")
        _systems[name] = getattr(importlib.import_module(module), kind)()
    return _systems[name]


def use(system: BatchSystem | None, name: str = "slurm") -> BatchSystem | None:
    """Install ``system`` as this process's batch system of its name (None: the real one
    again); the one it replaces."""
    replaced = _systems.pop(name, None)
    if system is not None:
        _systems[name] = system
    return replaced
