"""A task's life: its P-states, the events that move it, and the one table of which event
moves which state where (Ziggy's ProcessingStep, with its transitions written down).

A task's state is its P-state and its error flag. A failure sets the flag and leaves the
P-state where it failed (``ERROR - ALGORITHM_COMPLETE``); a restart clears it and puts the
task back to the step its mode names; some events start a new attempt, which makes every
message of the old one stale (the fence). ``next_state`` is the only place that says
whether an event may happen in a state, and where it leads: the engine's one mutator
(``pipeline.engine.task_state.move``) applies it, and an event the table does not allow
raises ``IllegalTransition`` rather than leaving a task somewhere no stage expects it.

Each step in which a task waits for a stage to take it up names that stage
(``WAITING``): what a restart sends to start a rebuilt chain, and what beat's
reconciler sends again when the first message was lost. ``restartable`` and ``running``
are written once, for task rows and for SQL alike.

A new P-state, or a new kind of execution, is an entry here and in its own module.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Protocol


class PState(StrEnum):
    """A task's processing step. A failure does not change it: it sets the error flag."""

    INITIALIZING = "INITIALIZING"
    MARSHALING = "MARSHALING"
    ALGORITHM_SUBMITTING = "ALGORITHM_SUBMITTING"
    ALGORITHM_QUEUED = "ALGORITHM_QUEUED"
    ALGORITHM_EXECUTING = "ALGORITHM_EXECUTING"
    ALGORITHM_COMPLETE = "ALGORITHM_COMPLETE"
    STORING = "STORING"
    COMPLETE = "COMPLETE"


class Stage(StrEnum):
    """The stages of a task's chain, ``marshal -> execute -> monitor -> store``: each one
    a message, taken up by a worker (the subtasks' messages are the execution's own)."""

    MARSHAL = "marshal"
    EXECUTE = "execute"
    MONITOR = "monitor"
    STORE = "store"


class Executor(StrEnum):
    """Where a node's subtasks run, from ALGORITHM_SUBMITTING to ALGORITHM_COMPLETE. Each
    is one module of the engine (``EXECUTORS``) that sends a task's subtasks out, sends
    lost ones again, finds which are still alive, and withdraws them on a halt: the steps
    and events of the table are the same for every executor."""

    #: Celery workers, a message per subtask or batch (``pipeline.engine.dispatch``).
    CELERY = "celery"
    #: A Slurm batch system, one job array per task attempt (``pipeline.engine.batch``).
    SLURM = "slurm"


#: The engine's module of each executor.
EXECUTORS: dict[Executor, str] = {
    Executor.CELERY: "pipeline.engine.dispatch",
    Executor.SLURM: "pipeline.engine.batch",
}


class Event(StrEnum):
    """What happens to a task."""

    #: A worker takes up the marshal.
    MARSHAL = "marshal"
    #: Its subtasks are made, each with its inputs.
    MARSHALED = "marshaled"
    #: Its subtasks' messages are sent.
    QUEUED = "queued"
    #: A worker starts one of its subtasks.
    STARTED = "started"
    #: Every subtask has ended (or none was left to run).
    ENDED = "ended"
    #: Monitor accepts the outcomes (failures within ``max_failed_subtasks``): store.
    ACCEPTED = "accepted"
    #: Monitor runs the failed subtasks again (``max_auto_resubmits``).
    RESUBMITTED = "resubmitted"
    #: Its outputs are in the datastore.
    STORED = "stored"
    #: The worker marshaling it was lost: marshal again.
    MARSHAL_LOST = "marshal lost"
    #: A step failed: the error flag is set where it stands.
    FAILED = "failed"
    #: An operator halted it: the error flag, and its messages stale.
    HALTED = "halted"
    #: An operator's restart from marshaling (restart-from-beginning, or marshaling again).
    RESTART_MARSHALING = "restart: marshal"
    #: An operator's restart right after marshaling (resubmit, continue execution).
    RESTART_SUBMITTING = "restart: submit"
    #: An operator's restart at storing (store what succeeded, or store again).
    RESTART_STORING = "restart: store"


class Requires(StrEnum):
    """Which tasks an event may happen to, whatever their step."""

    #: Tasks without the error flag: the chain's own events.
    NO_ERROR = "no error"
    #: Tasks a restart may take (``restartable``).
    RESTARTABLE = "restartable"


@dataclass(frozen=True)
class Rule:
    """What an event does besides moving the P-state.

    Attributes:
      requires: which tasks it may happen to.
      new_attempt: the task gets a new attempt number, so every message of the old one
        is stale.
      error: the error flag it leaves (None: unchanged).
    """

    requires: Requires = Requires.NO_ERROR
    new_attempt: bool = False
    error: bool | None = None


RULES: dict[Event, Rule] = {
    Event.MARSHAL: Rule(),
    Event.MARSHALED: Rule(),
    Event.QUEUED: Rule(),
    Event.STARTED: Rule(),
    Event.ENDED: Rule(),
    Event.ACCEPTED: Rule(),
    Event.RESUBMITTED: Rule(new_attempt=True),
    Event.STORED: Rule(),
    Event.MARSHAL_LOST: Rule(new_attempt=True),
    Event.FAILED: Rule(error=True),
    Event.HALTED: Rule(new_attempt=True, error=True),
    Event.RESTART_MARSHALING: Rule(Requires.RESTARTABLE, new_attempt=True, error=False),
    Event.RESTART_SUBMITTING: Rule(Requires.RESTARTABLE, new_attempt=True, error=False),
    Event.RESTART_STORING: Rule(Requires.RESTARTABLE, new_attempt=True, error=False),
}

_S = PState
#: The steps a task runs through, in order, and the steps in which it is not done.
STEPS = tuple(PState)
UNDONE = tuple(step for step in STEPS if step != _S.COMPLETE)
#: Steps in which subtasks are out on the workers.
EXECUTION_STEPS = frozenset({_S.ALGORITHM_QUEUED, _S.ALGORITHM_EXECUTING})

#: The steps in which a task's attempt may still store what its subtasks recorded as they
#: ended (past them, or with the error flag, the attempt never stores).
MAY_STORE = frozenset(
    {
        _S.ALGORITHM_SUBMITTING,
        _S.ALGORITHM_QUEUED,
        _S.ALGORITHM_EXECUTING,
        _S.ALGORITHM_COMPLETE,
        _S.STORING,
    }
)

#: The table: (step, event) -> the step it leads to. Nothing else moves a task.
TRANSITIONS: dict[tuple[PState, Event], PState] = {
    (_S.INITIALIZING, Event.MARSHAL): _S.MARSHALING,
    (_S.MARSHALING, Event.MARSHALED): _S.ALGORITHM_SUBMITTING,
    (_S.MARSHALING, Event.MARSHAL_LOST): _S.INITIALIZING,
    (_S.ALGORITHM_SUBMITTING, Event.QUEUED): _S.ALGORITHM_QUEUED,
    (_S.ALGORITHM_SUBMITTING, Event.ENDED): _S.ALGORITHM_COMPLETE,
    (_S.ALGORITHM_QUEUED, Event.STARTED): _S.ALGORITHM_EXECUTING,
    (_S.ALGORITHM_QUEUED, Event.ENDED): _S.ALGORITHM_COMPLETE,
    (_S.ALGORITHM_EXECUTING, Event.ENDED): _S.ALGORITHM_COMPLETE,
    (_S.ALGORITHM_COMPLETE, Event.ACCEPTED): _S.STORING,
    (_S.ALGORITHM_COMPLETE, Event.RESUBMITTED): _S.ALGORITHM_SUBMITTING,
    (_S.STORING, Event.STORED): _S.COMPLETE,
    # A failure or a halt freezes the step; a restart takes a failed task from any step
    # (a complete one only with failed subtasks, see ``restartable``).
    **{(step, Event.FAILED): step for step in UNDONE},
    **{(step, Event.HALTED): step for step in UNDONE},
    **{(step, Event.RESTART_MARSHALING): _S.INITIALIZING for step in STEPS},
    **{(step, Event.RESTART_SUBMITTING): _S.ALGORITHM_SUBMITTING for step in STEPS},
    **{(step, Event.RESTART_STORING): _S.STORING for step in STEPS},
}

#: The stage each waiting step needs to move on: the message a restart sends to start the
#: rebuilt chain, and the one beat's reconciler sends again when the first was lost.
WAITING: dict[PState, Stage] = {
    _S.INITIALIZING: Stage.MARSHAL,
    _S.ALGORITHM_SUBMITTING: Stage.EXECUTE,
    _S.ALGORITHM_COMPLETE: Stage.MONITOR,
    _S.STORING: Stage.STORE,
}


class TaskLike(Protocol):
    """What the rules read of a task: a row, or its columns in a query."""

    p_state: Any
    error: Any
    failed_subtasks: Any
    stale: Any


class IllegalTransition(Exception):
    """An event the table does not allow in the task's state: a bug, not an operator's
    mistake (operators are refused, in their words, before an event is tried)."""


def _either(a: Any, b: Any) -> Any:
    """``a or b`` of values, ``a OR b`` of columns."""
    if isinstance(a, bool):
        return a or bool(b)
    from sqlalchemy import or_

    return or_(a, b)


def _both(a: Any, b: Any) -> Any:
    if isinstance(a, bool):
        return a and bool(b)
    from sqlalchemy import and_

    return and_(a, b)


def _not(a: Any) -> Any:
    return not a if isinstance(a, bool) else ~a


def restartable(task: TaskLike) -> Any:
    """A restart may take the task: its error flag is set, or it is COMPLETE with failed
    subtasks (abandoned by resume-current-step, or within ``max_failed_subtasks``) or
    stale (its inputs changed since it consumed them)."""
    return _either(
        task.error,
        _both(task.p_state == _S.COMPLETE, _either(task.failed_subtasks > 0, task.stale)),
    )


def running(task: TaskLike) -> Any:
    """The task still moves through its steps: a halt may stop it."""
    return _both(_not(task.error), task.p_state != _S.COMPLETE)


def done(task: TaskLike) -> Any:
    """The task is COMPLETE without the error flag: its node may go on to its children."""
    return _both(task.p_state == _S.COMPLETE, _not(task.error))


def current(task: TaskLike) -> Any:
    """Done, and its outputs made from its parents' current outputs (not stale)."""
    return _both(done(task), _not(task.stale))


def next_state(task: TaskLike, event: Event) -> PState:
    """The step ``event`` leads ``task`` to; ``IllegalTransition`` if it may not happen."""
    rule = RULES[event]
    target = TRANSITIONS.get((PState(task.p_state), event))
    allowed = restartable(task) if rule.requires == Requires.RESTARTABLE else not task.error
    if target is None or not allowed:
        raise IllegalTransition(
            f"{event.value!r} cannot happen to a task at {state_label(task.p_state, task.error)}"
        )
    return target


def changes_instance(source: PState, target: PState, rule: Rule, error: bool) -> bool:
    """May a move change the instance state its tasks imply? It does when it sets or
    clears the error flag, or leaves or enters INITIALIZING or COMPLETE (what
    ``states.derive_instance_state`` reads)."""
    flag_changes = rule.error is not None and rule.error != error
    ends = {_S.INITIALIZING, _S.COMPLETE}
    return flag_changes or source in ends or target in ends


def state_label(p_state: str, error: bool, stale: bool = False) -> str:
    """The state as an operator reads it: ``ERROR - ALGORITHM_COMPLETE``, ``STORING`` or
    ``STALE - COMPLETE``."""
    if error:
        return f"ERROR - {p_state}"
    return f"STALE - {p_state}" if stale else str(p_state)


def counts_label(total: int, completed: int, failed: int) -> str:
    """Subtask counts as Ziggy shows them: ``3/4 (1)``."""
    return f"{completed}/{total} ({failed})"
