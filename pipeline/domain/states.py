"""States of instances, subtasks and nodes, as Ziggy names them (a task's are its
lifecycle's, ``pipeline.domain.lifecycle``)."""

from __future__ import annotations

from enum import StrEnum


class InstanceState(StrEnum):
    INITIALIZED = "INITIALIZED"
    PROCESSING = "PROCESSING"
    ERRORS_RUNNING = "ERRORS_RUNNING"
    ERRORS_STALLED = "ERRORS_STALLED"
    TRANSITION_FAILED = "TRANSITION_FAILED"
    #: Every task done, but some stale: their outputs are not what the current inputs make.
    STALE = "STALE"
    COMPLETED = "COMPLETED"


#: Instance states after which nothing moves without an operator.
STOPPED_STATES = frozenset(
    {
        InstanceState.COMPLETED,
        InstanceState.ERRORS_STALLED,
        InstanceState.TRANSITION_FAILED,
        InstanceState.STALE,
    }
)


class SubtaskState(StrEnum):
    NEW = "NEW"  # marshaled, never dispatched
    QUEUED = "QUEUED"  # a message for it is on the broker
    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    FAILED = "FAILED"


#: Subtasks out on the broker or on a worker.
IN_FLIGHT = frozenset({SubtaskState.QUEUED, SubtaskState.RUNNING})
#: Subtasks that have not succeeded: what a resubmit runs again.
UNFINISHED = frozenset(SubtaskState) - {SubtaskState.COMPLETE}


class NodeState(StrEnum):
    """Progress of one node within an instance; guards child-task creation."""

    PENDING = "PENDING"  # its tasks do not exist yet
    RUNNING = "RUNNING"  # its tasks exist
    DONE = "DONE"  # every task COMPLETE; children may start


def derive_instance_state(
    *,
    all_nodes_done: bool,
    any_error: bool,
    any_active: bool,
    any_started: bool,
    any_stale: bool = False,
) -> InstanceState:
    """The instance state implied by its tasks (TRANSITION_FAILED is set, never derived)."""
    if any_error:
        return InstanceState.ERRORS_RUNNING if any_active else InstanceState.ERRORS_STALLED
    if all_nodes_done and not any_active:
        return InstanceState.STALE if any_stale else InstanceState.COMPLETED
    if any_started:
        return InstanceState.PROCESSING
    return InstanceState.INITIALIZED


class BatchJobState(StrEnum):
    """A job array on a batch system, as the pipeline follows it."""

    SUBMITTING = "SUBMITTING"  # recorded; its submission not answered yet
    PENDING = "PENDING"  # every element still queued
    RUNNING = "RUNNING"  # some element running
    ENDED = "ENDED"  # every element ended (or the controller forgot it)
    CANCELLED = "CANCELLED"  # cancelled by the pipeline (a halt, a task moved on)


#: Job arrays the monitor still follows.
ACTIVE_BATCH_JOBS = frozenset(
    {BatchJobState.SUBMITTING, BatchJobState.PENDING, BatchJobState.RUNNING}
)
