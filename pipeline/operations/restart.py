"""Restarting failed tasks, each in one of the restart modes (``modes``), and restarting an
instance whose transition failed.

Every task of one request is decided and applied in one transaction, under the task rows'
locks, the subtasks of those that run again queued together in it, and their messages
are published together once it commits: restarting the 1,000 failed tasks of an instance
takes one transaction, not 1,000, and its subtasks' messages go out at once. Of two
operators restarting the same task at once, the second finds it running and is refused, so
one chain starts.

A restart reruns with the instance's frozen parameter values; only execution settings may
change with it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.environments import RemoteEnvironment
from pipeline.domain.execution import BATCH_PREFIX, ExecutionSettings, changeable
from pipeline.domain.lifecycle import Executor, PState
from pipeline.domain.limits import MAX_ID, check_id
from pipeline.domain.models import PipelineInstance, Subtask, Task, TaskAttempt, utcnow
from pipeline.domain.states import InstanceState, SubtaskState
from pipeline.engine import attempts, batch_cost, executors, staleness
from pipeline.engine.executors import queue_subtasks
from pipeline.engine.locks import lock_rows, locked_instance
from pipeline.engine.stages import instance_definition
from pipeline.engine.task_state import (
    count_restart,
    history_in_bulk,
    refresh_instance_state,
    reset_rows,
    wait_to_rerun,
)
from pipeline.engine.transitions import advance
from pipeline.errors import InvalidInput, NotFound, Refused, Unreachable
from pipeline.messaging import outbox
from pipeline.messaging.messages import InFlight
from pipeline.messaging.outbox import Outbox
from pipeline.messaging.publisher import publisher
from pipeline.operations import environments
from pipeline.operations.modes import Applying, Plan, RestartMode, parse_mode
from pipeline.operations.outcomes import Outcome, Report

#: The outcome's mode when a restart retries an instance's failed transition.
RETRY_TRANSITION = "retry-transition"


def check_settings(changes: Mapping[str, Any], frozen_parameters: dict[str, Any]) -> None:
    """Refuse an algorithm parameter among execution setting changes, or an unknown key."""
    parameter_names = {key for values in frozen_parameters.values() for key in values["values"]}
    for key in changes:
        if key in parameter_names:
            raise Refused(
                f"{key} is an algorithm parameter: a restart reruns with the instance's frozen"
                " values; change the parameter set (pipeline params set) and submit a new instance"
            )
    environments.check_keys(changes)


def check_values(changes: Mapping[str, Any]) -> None:
    """Refuse, before any task is looked at, a change of an execution setting to a value it
    cannot take (infinite, out of range, a boolean for a number), or to a remote
    environment no definition declares: one line naming it."""
    known = {key: value for key, value in changes.items() if key in changeable()}
    environments.merged({}, known)
    named = known.get(BATCH_PREFIX + "environment") or (known.get("batch") or {}).get("environment")
    if named:
        with transaction() as session:
            environments.find(session, named)


def restart(
    requests: Sequence[tuple[int, RestartMode | str]],
    settings: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    downstream: bool = False,
) -> Report:
    """Restart each (task, mode) pair; refusals are reported and the others go ahead.

    What a mode that needs the broker (resume-monitoring) compares against is read first,
    from the broker and the workers; then every task is decided and applied in one
    transaction. Each outcome lists the tasks downstream of its task; with
    ``downstream``, they run again from the beginning, in order, as they become stale
    (``engine.staleness``). A stale task whose inputs are not current yet waits for them.
    """
    parsed = [(task_id, parse_mode(mode)) for task_id, mode in requests]
    changes = dict(settings or {})
    check_values(changes)
    if not dry_run and _any_restartable([task_id for task_id, _ in parsed]):
        # Refused before anything changes when the broker does not answer: a restart
        # whose messages cannot be sent is no restart. (Asked only when a task may go
        # ahead: an unknown or running task is refused for what it is.)
        publisher().check()
    live = {} if dry_run else _in_flight_for([t for t, mode in parsed if mode.needs_broker])
    unsent: list[Unreachable] = []
    with outbox.transaction(deliver=outbox.sending_or_noting(unsent)) as (session, messages):
        locked = _lock_tasks(session, [task_id for task_id, _ in parsed])
        states = _subtask_states(session, list(locked))
        below = staleness.downstream_of_each(session, list(locked))
        submitting: list[Task] = []
        before = attempts.newest_of_each(session, {t.id: t.attempt for _, t in locked.values()})
        applied = Applied(dry_run, downstream, messages, live, submitting, below, before)
        with history_in_bulk(session):
            # One flush at commit: the per-task subtask UPDATEs need none of the pending rows.
            with session.no_autoflush:
                outcomes = [
                    _guarded(
                        task_id,
                        mode,
                        lambda t=task_id, m=mode: _restart_locked(
                            session,
                            locked,
                            states,
                            t,
                            m,
                            changes,
                            applied,
                        ),
                    )
                    for task_id, mode in parsed
                ]
            if not dry_run:
                for states, task_ids in applied.resetting.items():
                    reset_rows(session, task_ids, states)
                attempts.record_all(session, applied.running)
                queue_subtasks(session, submitting, messages)
        if dry_run:
            session.rollback()
            return Report(outcomes)
        touched = {locked[o.task_id][0].id: locked[o.task_id][0] for o in outcomes if o.ok}
        for instance in touched.values():
            refresh_instance_state(session, instance)
    if unsent:  # the broker went away since it answered: the reconciler sends them later
        for outcome in outcomes:
            if outcome.ok:
                outcome.message += f" (queued: {outbox.QUEUED_FOR_RECONCILER})"
    return Report(outcomes)


def _any_restartable(task_ids: list[int]) -> bool:
    valid = [task_id for task_id in task_ids if isinstance(task_id, int) and 0 < task_id <= MAX_ID]
    if not valid:
        return False
    with transaction() as session:
        found = session.scalar(select(Task.id).where(Task.id.in_(valid), Task.restartable).limit(1))
    return found is not None


def _guarded(task_id: int, mode: RestartMode, call: Any) -> Outcome:
    try:
        return call()
    except (Refused, NotFound, InvalidInput) as exc:
        return Outcome.refused(task_id, mode.name, exc)


def _in_flight_for(task_ids: list[int]) -> dict[str, InFlight]:
    """What is still out with the executor of each of these tasks, by executor."""
    if not task_ids:
        return {}
    with transaction() as session:
        stored = session.scalars(select(Task.execution).where(Task.id.in_(task_ids))).all()
    return executors.alive(map(ExecutionSettings.stored, stored))


def _lock_tasks(session: Session, task_ids: list[int]) -> dict[int, tuple[PipelineInstance, Task]]:
    """Lock the tasks and their instances, instance rows first (the order every transaction
    takes them in, so none deadlock)."""
    instance_ids = set(session.scalars(select(Task.instance_id).where(Task.id.in_(task_ids))))
    instances = lock_rows(session, PipelineInstance, instance_ids)
    tasks = lock_rows(session, Task, task_ids)
    return {task.id: (instances[task.instance_id], task) for task in tasks.values()}


def _subtask_states(session: Session, task_ids: list[int]) -> dict[int, dict[int, str]]:
    """Each task's subtask states, by index."""
    states: dict[int, dict[int, str]] = {task_id: {} for task_id in task_ids}
    for task_id, index, state in session.execute(
        select(Subtask.task_id, Subtask.index, Subtask.state).where(Subtask.task_id.in_(task_ids))
    ):
        states[task_id][index] = state
    return states


@dataclass(frozen=True)
class Applied:
    """How one request's restarts are applied: for real or not, with their downstream
    tasks or not, into which outbox, against what is in flight."""

    dry_run: bool
    downstream: bool
    messages: Outbox
    live: dict[str, InFlight]
    submitting: list[Task]
    #: The tasks downstream of each task asked for (``staleness.downstream_of_each``).
    below: dict[int, list[int]]
    #: The newest attempt recorded of each task, up to its current one (whose code a
    #: restart's is compared with).
    before: dict[int, TaskAttempt]
    #: The code of each (instance, node) as found now, once per request.
    codes: dict[tuple[int, str], dict[str, Any]] = field(default_factory=dict)
    #: The remote environments found in the newest definitions, once per request.
    environments: dict[str, RemoteEnvironment] = field(default_factory=dict)
    #: The tasks whose new attempts are recorded once all are decided (in bulk).
    running: list[attempts.Running] = field(default_factory=list)
    #: The tasks whose subtasks in these states run again, reset once all are decided.
    resetting: dict[frozenset[SubtaskState], list[int]] = field(default_factory=dict)


def _restart_locked(
    session: Session,
    locked: dict[int, tuple[PipelineInstance, Task]],
    states: dict[int, dict[int, str]],
    task_id: int,
    mode: RestartMode,
    changes: dict[str, Any],
    applied: Applied,
) -> Outcome:
    """Decide and (unless a dry run) apply one task's restart."""
    if task_id not in locked:
        raise NotFound(f"unknown task {task_id}")
    instance, task = locked[task_id]
    check_settings(changes, instance.parameters)
    execution = environments.merged(task.execution, changes)
    if changes:
        given = {*changes, *(BATCH_PREFIX + key for key in changes.get("batch") or {})}
        execution = environments.settled(
            session, execution, given, instance.definition, applied.environments
        )
    plan = mode.plan(task, states[task_id])
    mode.check_changes(changes)
    definition = instance_definition(instance)
    node = definition.node(task.node)
    code = applied.codes.get((instance.id, task.node))
    if code is None:  # looked at now: the operator may have just fixed it
        code = attempts.code_of(node, definition.python_path, fresh=True)
        applied.codes[(instance.id, task.node)] = code
    changed = attempts.difference(applied.before.get(task.id), code)
    if changed:  # said in the preview; the record of the new attempt writes it in the history
        plan = replace(plan, message=f"{plan.message}; {changed}")
    later = applied.below.get(task_id, [])
    waits_for = staleness.waits_for(session, [task.id])[task.id] if task.stale else []
    if waits_for:
        plan = replace(
            plan,
            message="runs again once task"
            + ("s " if len(waits_for) > 1 else " ")
            + ", ".join(map(str, waits_for))
            + " above it are current",
        )
    if applied.dry_run:
        plan = _with_estimate(session, instance, task, execution, plan)
    else:
        note = f"restart: {mode.name}"
        if changes:
            note += " with " + ", ".join(f"{key}={value}" for key, value in changes.items())
        if waits_for:
            task.execution = execution
            wait_to_rerun(session, task, f"{note}: {plan.message}")
        else:
            found = applied.live.get(task.settings.executor)
            applying = Applying(
                session,
                applied.messages,
                note,
                execution,
                found,
                applied.submitting,
                applied.resetting,
            )
            plan = mode.apply(task, plan, applying)
            applied.running.append((instance, task, node, code, changed))
        count_restart(task, mode.name)
        if applied.downstream:
            for below in lock_rows(session, Task, later).values():
                wait_to_rerun(session, below, f"waits to run again after task {task_id}")
    return Outcome(task_id, mode.name, True, plan.message, plan.p_state.value, plan.rerun, later)


def _with_estimate(
    session: Session, instance: PipelineInstance, task: Task, execution: dict[str, Any], plan: Plan
) -> Plan:
    """A preview's plan that submits subtasks to a batch system, with what they are
    expected to take there (``batch_cost``), with the settings the restart leaves."""
    settings = ExecutionSettings.stored(execution)
    submits = plan.p_state in (PState.INITIALIZING, PState.ALGORITHM_SUBMITTING)
    if settings.executor != Executor.SLURM or not submits or not plan.rerun:
        return plan
    found = batch_cost.estimate(session, instance.pipeline, task.node, settings, len(plan.rerun))
    return replace(plan, message=f"{plan.message}; on slurm: {found.line()}")


def restart_failed(
    instance_id: int,
    mode: RestartMode | str,
    settings: Mapping[str, Any] | None = None,
    dry_run: bool = False,
    downstream: bool = False,
) -> Report:
    """Restart every failed or stale task of an instance with one mode; retry a failed
    transition."""
    mode = parse_mode(mode)
    check_id(instance_id, "instance")
    with transaction() as session:
        instance = session.get(PipelineInstance, instance_id)
        if instance is None:
            raise NotFound(f"unknown instance {instance_id}")
        transition_failed = instance.state == InstanceState.TRANSITION_FAILED
        failed = list(
            session.scalars(
                select(Task.id)
                .where(Task.instance_id == instance_id, Task.restartable)
                .order_by(Task.id)
            )
        )
    if transition_failed:
        if not dry_run:
            publisher().check()  # refused unchanged when its messages could not go
        return Report([_retry_transition(instance_id, dry_run)])
    if not failed:
        raise Refused(f"instance {instance_id} has no failed tasks")
    return restart([(task_id, mode) for task_id in failed], settings, dry_run, downstream)


def _retry_transition(instance_id: int, dry_run: bool) -> Outcome:
    outcome = Outcome(0, RETRY_TRANSITION, True, "retry creating the next nodes' tasks")
    if dry_run:
        return outcome
    with locked_instance(instance_id) as (_, instance):
        instance.state, instance.message = InstanceState.PROCESSING, ""
        instance.updated_at = utcnow()
    advance(instance_id)
    return outcome
