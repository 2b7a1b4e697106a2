"""Ziggy's restart modes, one rule each: which tasks it takes, where it restarts them from,
which subtasks run again, and how it is applied.

Every mode is a ``RestartMode`` in ``MODES``. The CLI's help, the HTTP API's schema and
Flower's restart page list the modes from here, and a test holds the table of modes in
docs/operator-guide.md against it: a new mode is one class added to ``MODES``, plus its
tests.

A mode plans under the task's row lock, from the task and its subtasks' states, and
refuses (``Refused``) a task it cannot take; a dry run stops there. Applying a plan
rebuilds the task's chain from the planned step under a new attempt, so every message
of the chain it replaces becomes stale, unless the mode says otherwise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

from sqlalchemy.orm import Session

from pipeline.domain.lifecycle import EXECUTION_STEPS, Event, PState, state_label
from pipeline.domain.limits import parse_id
from pipeline.domain.models import Task
from pipeline.domain.states import IN_FLIGHT, UNFINISHED, SubtaskState
from pipeline.engine.task_state import move, reset_counts, send_waiting
from pipeline.errors import InvalidInput, Refused, shown
from pipeline.messaging.messages import InFlight
from pipeline.messaging.outbox import Outbox
from pipeline.recovery.reattach import reattach_locked

#: The event of a restart back to each step a plan may name.
RESTART_EVENTS = {
    PState.INITIALIZING: Event.RESTART_MARSHALING,
    PState.ALGORITHM_SUBMITTING: Event.RESTART_SUBMITTING,
    PState.STORING: Event.RESTART_STORING,
}
#: Every subtask: what marshaling again runs.
EVERY_STATE = frozenset(SubtaskState)
#: Subtasks that have not ended, neither succeeded nor failed: what continuing runs.
NOT_ENDED = UNFINISHED - {SubtaskState.FAILED}


@dataclass(frozen=True)
class Plan:
    """What a restart does to one task.

    Attributes:
      p_state: the step the task goes back to.
      rerun: the subtasks that run again, for the operator to see.
      message: what the restart does, in a few words.
      reset: the states of the subtasks that go back to NEW (``rerun``), their counts with
        them.
    """

    p_state: PState
    rerun: list[int]
    message: str
    reset: frozenset[SubtaskState] = field(default=frozenset())

    @classmethod
    def rerunning(
        cls, p_state: PState, reset: frozenset[SubtaskState], message: str, states: Mapping
    ) -> Plan:
        """Back to ``p_state``, the subtasks in ``reset`` states running again."""
        rerun = sorted(index for index, state in states.items() if state in reset)
        return cls(p_state, rerun, message, reset)


@dataclass(frozen=True)
class Applying:
    """What a restart is applied with, in the transaction that decided it.

    Attributes:
      session: the transaction, holding the task's row lock.
      messages: its outbox.
      note: the task's history entry (``restart: resubmit with priority=1``).
      execution: the task's execution settings from now on.
      live: what is in flight on the task's queue, for a mode that needs the broker.
      submitting: the restarted tasks back in ALGORITHM_SUBMITTING, whose subtasks the
        restart queues together once every task is decided (``executors.queue_subtasks``).
      resetting: the tasks whose subtasks in these states run again: their rows are
        reset together once every task is decided (``task_state.reset_rows``), before
        any is queued.
    """

    session: Session
    messages: Outbox
    note: str
    execution: dict[str, Any]
    live: InFlight | None = None
    submitting: list[Task] = field(default_factory=list)
    resetting: dict[frozenset[SubtaskState], list[int]] = field(default_factory=dict)


class RestartMode:
    """One way to restart a task.

    Attributes:
      name: the mode as operators type it.
      starts_from: where it takes a task up again (the "from" of the modes table in
        docs/operator-guide.md).
      runs: which subtasks run (the table's "which subtasks run").
      needs_broker: it is applied from what the broker and the workers hold, read before
        the restart's transaction (and not at all in a dry run).
    """

    name: ClassVar[str]
    starts_from: ClassVar[str]
    runs: ClassVar[str]
    needs_broker: ClassVar[bool] = False

    def plan(self, task: Task, states: Mapping[int, str]) -> Plan:
        """Where the mode restarts ``task`` from, given its subtasks' states by index."""
        raise NotImplementedError

    def check_changes(self, changes: Mapping[str, Any]) -> None:
        """Refuse execution setting changes the mode cannot make (it makes them all)."""

    def apply(self, task: Task, plan: Plan, applying: Applying) -> Plan:
        """Rebuild the locked task's chain from ``plan.p_state`` under a new attempt, with
        its new execution settings; the stage message that starts it goes to the outbox
        (or, back in ALGORITHM_SUBMITTING, the task to ``applying.submitting``). Returns
        what was done (the plan)."""
        task.execution = applying.execution
        task.halted = False
        task.auto_resubmits = 0
        # Moved first: whether a restart may take the task reads its failed count, which
        # running its failed subtasks again resets.
        move(applying.session, task, RESTART_EVENTS[plan.p_state], applying.note, refresh=False)
        if plan.reset:
            reset_counts(task, plan.reset)
            applying.resetting.setdefault(plan.reset, []).append(task.id)
        if plan.p_state == PState.ALGORITHM_SUBMITTING:
            applying.submitting.append(task)
            return plan
        send_waiting(applying.messages, task)
        return plan

    @staticmethod
    def require_failed(task: Task) -> PState:
        """The task's step, if a restart may take it (``lifecycle.restartable``)."""
        step = task.p_state
        if task.restartable:
            return step
        reason = "complete without failures" if step == PState.COMPLETE else f"running ({step})"
        raise Refused(f"task {task.id} is {reason}: only failed tasks can be restarted")


class RestartFromBeginning(RestartMode):
    name = "restart-from-beginning"
    starts_from = "marshaling (inputs looked up again)"
    runs = "all; earlier outcomes forgotten"

    def plan(self, task: Task, states: Mapping[int, str]) -> Plan:
        self.require_failed(task)
        message = "marshal again, run every subtask"
        return Plan.rerunning(PState.INITIALIZING, EVERY_STATE, message, states)


class Resubmit(RestartMode):
    name = "resubmit"
    starts_from = "right after marshaling"
    runs = "only failed and never-run ones; refused when all succeeded"

    def plan(self, task: Task, states: Mapping[int, str]) -> Plan:
        step = self.require_failed(task)
        if step in (PState.INITIALIZING, PState.MARSHALING):
            raise Refused(
                f"task {task.id} failed while marshaling: use restart-from-beginning or"
                " resume-current-step"
            )
        if all(state == SubtaskState.COMPLETE for state in states.values()):
            raise Refused(
                f"every subtask of task {task.id} already succeeded: nothing to resubmit"
                " (restart-from-beginning runs them all again)"
            )
        message = "run failed and never-run subtasks"
        return Plan.rerunning(PState.ALGORITHM_SUBMITTING, UNFINISHED, message, states)


class ResumeCurrentStep(RestartMode):
    name = "resume-current-step"
    starts_from = (
        "where it stopped: at ALGORITHM_COMPLETE it stores the successful subtasks and"
        " abandons the failed ones (the task ends COMPLETE with its failed count, the"
        " instance goes on); at STORING it retries the store; at MARSHALING it marshals"
        " again; in execution it continues"
    )
    runs = "those not yet finished"

    def plan(self, task: Task, states: Mapping[int, str]) -> Plan:
        step = self.require_failed(task)
        if step == PState.COMPLETE:
            raise Refused(
                f"task {task.id} is COMPLETE: no step to resume (resubmit reruns its failed"
                " subtasks)"
            )
        if step in (PState.INITIALIZING, PState.MARSHALING):
            return Plan.rerunning(PState.INITIALIZING, EVERY_STATE, "marshal again", states)
        if step == PState.ALGORITHM_COMPLETE:
            return Plan(
                PState.STORING, [], "store the successful subtasks, abandon the failed ones"
            )
        if step == PState.STORING:
            return Plan(PState.STORING, [], "retry storing")
        return Plan.rerunning(PState.ALGORITHM_SUBMITTING, NOT_ENDED, "continue execution", states)


class ResumeMonitoring(RestartMode):
    name = "resume-monitoring"
    starts_from = (
        "a task still executing: subtasks whose messages are alive (on the broker or a"
        " worker) are kept, lost ones dispatched again"
    )
    runs = "the lost ones"
    needs_broker = True

    def plan(self, task: Task, states: Mapping[int, str]) -> Plan:
        step = task.p_state
        if step not in EXECUTION_STEPS or task.error:
            label = state_label(task.p_state, task.error)
            raise Refused(
                f"task {task.id} is not executing ({label}): nothing to monitor"
                " (resume-current-step continues a failed step)"
            )
        in_flight = sorted(index for index, state in states.items() if state in IN_FLIGHT)
        return Plan(step, in_flight, "reattach monitoring")

    def check_changes(self, changes: Mapping[str, Any]) -> None:
        if changes:
            raise Refused(f"{self.name} reattaches running work: it changes no settings")

    def apply(self, task: Task, plan: Plan, applying: Applying) -> Plan:
        """Keep the in-flight subtasks whose messages are alive; dispatch the lost ones
        again, at the task's current attempt."""
        if applying.live is None:
            raise ValueError(f"{self.name} is applied with what is in flight")
        result = reattach_locked(
            applying.session, task, applying.live, applying.note, applying.messages
        )
        return Plan(plan.p_state, result.lost, result.summary)


#: Every restart mode, by name, in the order operators see them.
MODES: dict[str, RestartMode] = {
    mode.name: mode
    for mode in (RestartFromBeginning(), Resubmit(), ResumeCurrentStep(), ResumeMonitoring())
}


def parse_mode(text: str | RestartMode) -> RestartMode:
    if isinstance(text, RestartMode):
        return text
    try:
        return MODES[text]
    except KeyError:
        raise InvalidInput(
            f"unknown restart mode {shown(text)} (one of {', '.join(MODES)})"
        ) from None


def parse_request(
    item: int | str | tuple[int, str], default_mode: str | None
) -> tuple[int, RestartMode]:
    """A task to restart, named as ``TASK`` (restarted in ``default_mode``), ``TASK:MODE``
    or a (task, mode) pair."""
    if isinstance(item, tuple):
        task, mode = str(item[0]), item[1]
    else:
        task, _, mode = str(item).strip().partition(":")
    if not task.strip().isdigit():
        raise InvalidInput(f"{shown(item)} is not TASK or TASK:MODE")
    if not (mode or default_mode):
        raise InvalidInput(f"no mode for task {task}: give a mode for all tasks or {task}:MODE")
    return parse_id(task, "task"), parse_mode(mode or str(default_mode))
