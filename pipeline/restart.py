"""Restarting failed tasks, each in one of Ziggy's four modes, and restarting an instance.

A restart bumps the task's attempt number, so every message of the chain it replaces
becomes stale, and rebuilds the chain from the stage its mode names. The decision is
made under the task's row lock: of two operators restarting the same task at once, the
second finds it running and is refused, so one new chain starts.

A restart reruns with the instance's frozen parameter values; only execution settings
may change with it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from pydantic import ValidationError
from sqlalchemy import select, update

from pipeline import dispatch
from pipeline.database import transaction
from pipeline.definitions import ExecutionSettings
from pipeline.engine import resubmit_failed
from pipeline.errors import InvalidInput, NotFound, PipelineError, Refused
from pipeline.inflight import in_flight
from pipeline.models import PipelineInstance, Subtask, Task, utcnow
from pipeline.reattach import reattach
from pipeline.states import EXECUTION_STEPS, InstanceState, PState, SubtaskState, task_state_label
from pipeline.tasks import (
    RESTARTABLE,
    lock_task,
    locked_instance,
    record,
    refresh_instance_state,
)
from pipeline.transition import advance


class Mode(StrEnum):
    RESTART_FROM_BEGINNING = "restart-from-beginning"
    RESUBMIT = "resubmit"
    RESUME_CURRENT_STEP = "resume-current-step"
    RESUME_MONITORING = "resume-monitoring"


@dataclass
class Outcome:
    """What a restart did (or, in a dry run, would do) to one task."""

    task_id: int
    mode: str
    ok: bool
    message: str
    start_from: str = ""
    subtasks: list[int] = field(default_factory=list)
    #: The error that refused it, so the HTTP API can answer with that error's own status.
    refusal: PipelineError | None = field(default=None, repr=False, compare=False)

    def as_dict(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "refusal"}

    def line(self) -> str:
        """One line for an operator: ``task 5 resume-current-step: retry storing``."""
        subject = f"task {self.task_id}" if self.task_id else "instance"
        return f"{subject} {self.mode if self.ok else 'refused'}: {self.message}"


def describe(outcomes: list[Outcome]) -> str:
    """What a restart or halt did, on one line (Flower's pages and the Celery tasks' results)."""
    return "; ".join(outcome.line() for outcome in outcomes)


@dataclass(frozen=True)
class Plan:
    """The new P-state, which subtasks go back to NEW, and what to tell the operator."""

    p_state: PState
    rerun: list[int]
    message: str


def parse_mode(text: str) -> Mode:
    try:
        return Mode(text)
    except ValueError:
        modes = ", ".join(mode.value for mode in Mode)
        raise InvalidInput(f"unknown restart mode {text!r} (one of {modes})") from None


def parse_request(item: str | int, default_mode: str | None) -> tuple[int, Mode]:
    """A task named as ``TASK`` (restarted in ``default_mode``) or ``TASK:MODE``."""
    task, _, mode = str(item).strip().partition(":")
    if not task.isdigit():
        raise InvalidInput(f"{item!r} is not TASK or TASK:MODE")
    if not (mode or default_mode):
        raise InvalidInput(f"no mode for task {task}: give a mode for all tasks or {task}:MODE")
    return int(task), parse_mode(mode or str(default_mode))


def check_settings(changes: dict[str, Any], frozen_parameters: dict[str, Any]) -> dict[str, Any]:
    """Validate execution setting changes; refuse any attempt to change an algorithm parameter."""
    parameter_names = {key for values in frozen_parameters.values() for key in values["values"]}
    allowed = set(ExecutionSettings.model_fields)
    for key in changes:
        if key in parameter_names:
            raise Refused(
                f"{key} is an algorithm parameter: a restart reruns with the instance's frozen"
                " values; change the parameter set (pipeline params set) and submit a new instance"
            )
        if key not in allowed:
            raise InvalidInput(
                f"unknown execution setting {key!r} (one of {', '.join(sorted(allowed))})"
            )
    return changes


def _merged_settings(current: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    try:
        return ExecutionSettings.model_validate({**current, **changes}).model_dump()
    except ValidationError as exc:
        error = exc.errors()[0]
        raise InvalidInput(f"execution setting {error['loc'][0]}: {error['msg']}") from None


def plan(task: Task, states: dict[int, str], mode: Mode) -> Plan:
    """Where ``mode`` restarts ``task`` from, given its subtasks' states; Refused if it can't."""
    step = PState(task.p_state)
    if mode is Mode.RESUME_MONITORING:
        if step not in EXECUTION_STEPS or task.error:
            label = task_state_label(task.p_state, task.error)
            raise Refused(
                f"task {task.id} is not executing ({label}): nothing to monitor"
                " (resume-current-step continues a failed step)"
            )
        lost = [i for i, s in states.items() if s in (SubtaskState.QUEUED, SubtaskState.RUNNING)]
        return Plan(step, lost, "reattach monitoring")
    restartable = task.error or (step == PState.COMPLETE and task.failed_subtasks > 0)
    if not restartable:
        reason = "complete without failures" if step == PState.COMPLETE else f"running ({step})"
        raise Refused(f"task {task.id} is {reason}: only failed tasks can be restarted")
    unfinished = sorted(i for i, s in states.items() if s != SubtaskState.COMPLETE)
    if mode is Mode.RESTART_FROM_BEGINNING:
        return Plan(PState.INITIALIZING, sorted(states), "marshal again, run every subtask")
    if mode is Mode.RESUBMIT:
        if step in (PState.INITIALIZING, PState.MARSHALING):
            raise Refused(
                f"task {task.id} failed while marshaling: use restart-from-beginning or"
                " resume-current-step"
            )
        if not unfinished:
            raise Refused(
                f"every subtask of task {task.id} already succeeded: nothing to resubmit"
                " (restart-from-beginning runs them all again)"
            )
        return Plan(PState.ALGORITHM_SUBMITTING, unfinished, "run failed and never-run subtasks")
    return _plan_resume(task, step, states)


def _plan_resume(task: Task, step: PState, states: dict[int, str]) -> Plan:
    if step == PState.COMPLETE:
        raise Refused(
            f"task {task.id} is COMPLETE: no step to resume (resubmit reruns its failed subtasks)"
        )
    if step in (PState.INITIALIZING, PState.MARSHALING):
        return Plan(PState.INITIALIZING, sorted(states), "marshal again")
    if step == PState.ALGORITHM_COMPLETE:
        return Plan(PState.STORING, [], "store the successful subtasks, abandon the failed ones")
    if step == PState.STORING:
        return Plan(PState.STORING, [], "retry storing")
    pending = [
        i for i, s in states.items() if s not in (SubtaskState.COMPLETE, SubtaskState.FAILED)
    ]
    return Plan(PState.ALGORITHM_SUBMITTING, sorted(pending), "continue execution")


def restart(
    requests: list[tuple[int, Mode | str]],
    settings: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Restart each (task, mode) pair; refusals are reported and the others go ahead.

    Every mode but resume-monitoring is decided and applied for all the tasks in one
    transaction, their messages sent together after it commits: restarting the 1,000
    failed tasks of an instance takes one transaction, not 1,000. Resume-monitoring asks
    the broker and the workers what is alive, task by task.
    """
    parsed = [
        (task_id, parse_mode(mode) if isinstance(mode, str) else mode) for task_id, mode in requests
    ]
    changes = settings or {}
    outcomes = _restart_many(
        [(task_id, mode) for task_id, mode in parsed if mode is not Mode.RESUME_MONITORING],
        changes,
        dry_run,
    )
    for task_id, mode in parsed:
        if mode is Mode.RESUME_MONITORING:
            outcomes.append(
                _guarded(task_id, mode, lambda t=task_id: _monitor_one(t, changes, dry_run))
            )
    return _in_request_order(parsed, outcomes)


def _in_request_order(parsed: list[tuple[int, Mode]], outcomes: list[Outcome]) -> list[Outcome]:
    """Outcomes in the order the requests came, however they were processed."""
    pending: dict[tuple[int, str], list[Outcome]] = {}
    for outcome in outcomes:
        pending.setdefault((outcome.task_id, outcome.mode), []).append(outcome)
    return [pending[(task_id, mode.value)].pop(0) for task_id, mode in parsed]


def _guarded(task_id: int, mode: Mode, call: Any) -> Outcome:
    try:
        return call()
    except (Refused, NotFound, InvalidInput) as exc:
        return Outcome(task_id, mode.value, False, str(exc), refusal=exc)


def _lock_tasks(session: Any, task_ids: list[int]) -> dict[int, tuple[PipelineInstance, Task]]:
    """Lock the tasks and their instances, instance rows first and each kind in id order
    (the order every transaction takes them in, so none deadlock)."""
    instance_ids = sorted(
        set(session.scalars(select(Task.instance_id).where(Task.id.in_(task_ids))))
    )
    instances = {
        instance.id: instance
        for instance in session.scalars(
            select(PipelineInstance)
            .where(PipelineInstance.id.in_(instance_ids))
            .order_by(PipelineInstance.id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    }
    tasks = session.scalars(
        select(Task)
        .where(Task.id.in_(task_ids))
        .order_by(Task.id)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    return {task.id: (instances[task.instance_id], task) for task in tasks}


def _restart_many(
    requests: list[tuple[int, Mode]], changes: dict[str, Any], dry_run: bool
) -> list[Outcome]:
    if not requests:
        return []
    messages: list[tuple[str, list[Any], dict[str, Any]]] = []
    with transaction() as session:
        locked = _lock_tasks(session, [task_id for task_id, _ in requests])
        states: dict[int, dict[int, str]] = {task_id: {} for task_id in locked}
        for task_id, index, state in session.execute(
            select(Subtask.task_id, Subtask.index, Subtask.state).where(
                Subtask.task_id.in_(list(locked))
            )
        ):
            states[task_id][index] = state
        # One flush at commit: the per-task subtask UPDATEs need none of the pending rows.
        with session.no_autoflush:
            outcomes = [
                _guarded(
                    task_id,
                    mode,
                    lambda t=task_id, m=mode: _restart_locked(
                        session, locked, states, t, m, changes, dry_run, messages
                    ),
                )
                for task_id, mode in requests
            ]
        if dry_run:
            session.rollback()
            return outcomes
        touched = {locked[o.task_id][0].id: locked[o.task_id][0] for o in outcomes if o.ok}
        for instance in touched.values():
            refresh_instance_state(session, instance)
    dispatch.send_stages(messages)
    return outcomes


def _restart_locked(
    session: Any,
    locked: dict[int, tuple[PipelineInstance, Task]],
    states: dict[int, dict[int, str]],
    task_id: int,
    mode: Mode,
    changes: dict[str, Any],
    dry_run: bool,
    messages: list[tuple[str, list[Any], dict[str, Any]]],
) -> Outcome:
    """Decide and (unless ``dry_run``) apply one task's restart; its message goes to
    ``messages``, sent once the transaction commits."""
    if task_id not in locked:
        raise NotFound(f"unknown task {task_id}")
    instance, task = locked[task_id]
    check_settings(changes, instance.parameters)
    execution = _merged_settings(task.execution, changes)
    chosen = plan(task, states[task_id], mode)
    outcome = Outcome(task_id, mode.value, True, chosen.message, chosen.p_state.value, chosen.rerun)
    if not dry_run:
        _apply(session, task, mode, chosen, execution, changes)
        stage = dispatch.STAGE_FOR_STEP[chosen.p_state]
        messages.append((stage, [task_id, task.attempt], execution))
    return outcome


def _monitor_one(task_id: int, changes: dict[str, Any], dry_run: bool) -> Outcome:
    """Resume-monitoring of one task: checked under its lock, then reattached."""
    mode = Mode.RESUME_MONITORING
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        check_settings(changes, instance.parameters)
        execution = _merged_settings(task.execution, changes)
        states = dict(
            session.execute(
                select(Subtask.index, Subtask.state).where(Subtask.task_id == task_id)
            ).all()
        )
        chosen = plan(task, states, mode)
        if changes:
            raise Refused("resume-monitoring reattaches running work: it changes no settings")
        outcome = Outcome(
            task_id, mode.value, True, chosen.message, chosen.p_state.value, chosen.rerun
        )
        if dry_run:
            session.rollback()
            return outcome
        attempt, queue = task.attempt, execution["queue"]
    return _resume_monitoring(task_id, attempt, queue, outcome)


def _apply(
    session: Any,
    task: Task,
    mode: Mode,
    chosen: Plan,
    execution: dict[str, Any],
    changes: dict[str, Any],
) -> None:
    """Apply a restart to a locked task (the caller refreshes its instance's state)."""
    note = f"restart: {mode.value}"
    if changes:
        note += " with " + ", ".join(f"{key}={value}" for key, value in changes.items())
    task.execution = execution
    task.halted = False
    task.auto_resubmits = 0
    if mode is Mode.RESUBMIT:
        resubmit_failed(session, task, note)
        return
    if chosen.rerun:
        session.execute(
            update(Subtask)
            .where(Subtask.task_id == task.id, Subtask.index.in_(chosen.rerun))
            .values(state=SubtaskState.NEW)
            .execution_options(synchronize_session=False)
        )
    if chosen.p_state == PState.INITIALIZING:
        task.completed_subtasks = task.failed_subtasks = 0
    task.attempt += 1
    task.error, task.error_message = False, ""
    record(session, task, chosen.p_state, note)


def _resume_monitoring(task_id: int, attempt: int, queue: str, outcome: Outcome) -> Outcome:
    """Keep the in-flight subtasks whose messages are alive; dispatch the lost ones again."""
    result = reattach(task_id, attempt, in_flight(queue), "restart: resume-monitoring")
    outcome.subtasks, outcome.message = result.lost, result.summary
    return outcome


def restart_failed(
    instance_id: int,
    mode: Mode | str,
    settings: dict[str, Any] | None = None,
    dry_run: bool = False,
) -> list[Outcome]:
    """Restart every failed task of an instance with one mode; retry a failed transition."""
    mode = parse_mode(mode) if isinstance(mode, str) else mode
    with transaction() as session:
        instance = session.get(PipelineInstance, instance_id)
        if instance is None:
            raise NotFound(f"unknown instance {instance_id}")
        transition_failed = instance.state == InstanceState.TRANSITION_FAILED
        failed = list(
            session.scalars(
                select(Task.id)
                .where(Task.instance_id == instance_id, RESTARTABLE)
                .order_by(Task.id)
            )
        )
    if transition_failed:
        return [_retry_transition(instance_id, dry_run)]
    if not failed:
        raise Refused(f"instance {instance_id} has no failed tasks")
    return restart([(task_id, mode) for task_id in failed], settings, dry_run)


def _retry_transition(instance_id: int, dry_run: bool) -> Outcome:
    outcome = Outcome(0, "retry-transition", True, "retry creating the next nodes' tasks")
    if dry_run:
        return outcome
    with locked_instance(instance_id) as (session, instance):
        instance.state, instance.message = InstanceState.PROCESSING, ""
        instance.updated_at = utcnow()
    advance(instance_id)
    return outcome
