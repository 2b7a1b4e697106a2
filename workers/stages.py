"""The Celery tasks of a pipeline task's chain, thin wrappers over ``pipeline.engine``.

Each carries the pipeline task id and attempt in its arguments, so Flower's task list
shows which pipeline task and stage a Celery task belongs to. Being fenced, a stage run
again after its work was done does nothing, so: a stage that meets a deadlock or a lost
database connection runs again at once, in the worker (``database.retrying``, for
``database_retry_seconds``); one that meets a longer outage of the database or the broker
goes back to the broker and is retried by Celery with backoff, freeing the worker's slot.

The short stages a stage calls for (execute after marshal, monitor after the last
subtask, store after monitor) run right after it in the same Celery task rather than
through the broker (see ``dispatch.continuing``).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from config.settings import get_settings
from pipeline import algorithms, dispatch, engine, reconcile
from pipeline.database import retrying
from pipeline.errors import Unreachable
from workers.app import MONITOR_TASK, app

TRANSIENT = (Unreachable, DBAPIError)
STAGE_OPTIONS: dict[str, Any] = {
    "bind": True,
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 20,
}


#: What runs each stage that a worker continues with instead of sending its message.
CONTINUED_STAGES: dict[str, Callable[..., None]] = {
    dispatch.EXECUTE: engine.execute,
    dispatch.MONITOR: engine.monitor,
    dispatch.STORE: engine.store,
}


def _run_stage(stage: Callable[..., None], task_id: int, attempt: int, host: str) -> None:
    """Run one stage, then the stages it called for that this worker continues with."""
    with dispatch.continuing() as held:
        retrying()(stage)(task_id, attempt, host=host)
    _continue(held, host)


def _continue(held: list[dispatch.StageMessage], host: str) -> None:
    """Run held stages here. One that meets an outage longer than the database retries goes
    to the broker as the message it would have been, for Celery to retry with backoff."""
    for name, args, execution in held:
        try:
            _run_stage(CONTINUED_STAGES[name], *args, host)
        except TRANSIENT:
            dispatch.send(name, args, execution)


@app.task(name=dispatch.MARSHAL, **STAGE_OPTIONS)
def marshal(self: Any, task_id: int, attempt: int) -> None:
    _run_stage(engine.marshal, task_id, attempt, self.request.hostname)


@app.task(name=dispatch.EXECUTE, **STAGE_OPTIONS)
def execute(self: Any, task_id: int, attempt: int) -> None:
    _run_stage(engine.execute, task_id, attempt, self.request.hostname)


#: A batch records the outcomes of the subtasks it has run at least this often (seconds):
#: short subtasks share one transaction, and a worker that dies loses little work.
RECORD_EVERY_SECONDS = 1.0


@retrying(dispatch.RECORD_OUTCOME_FOR_SECONDS)
def _record_outcomes(
    task_id: int, attempt: int, outcomes: list[tuple[int, int, Any]], host: str
) -> bool:
    """Record outcomes, riding out a database restart: rerunning the subtasks costs more."""
    return engine.finish_subtasks(task_id, attempt, outcomes, host)


def _run_claimed(task_id: int, attempt: int, pairs: list[tuple[int, int]], host: str) -> None:
    """Claim the message's subtasks, run them one after another in a child process (one
    that crashes or hangs fails only its subtask, see ``algorithms.run_many``), and record
    their outcomes in groups; stop early when the task has moved on (halted, restarted)."""
    runs = retrying()(engine.begin_subtasks)(task_id, attempt, pairs, host=host)
    if not runs:
        return
    claimed = [(run.context.index, run.number) for run in runs]
    lease = get_settings().lease_seconds
    beat = algorithms.Heartbeat(lambda: engine.heartbeat(task_id, claimed), lease / 3)
    pending: list[tuple[int, int, Any]] = []
    recorded_at = time.monotonic()
    first = runs[0]
    outcomes = algorithms.run_many(first.algorithm, [r.context for r in runs], first.timeout, beat)
    for run, outcome in zip(runs, outcomes, strict=True):
        pending.append((run.context.index, run.number, outcome))
        if time.monotonic() - recorded_at >= RECORD_EVERY_SECONDS:
            if not _record_outcomes(task_id, attempt, pending, host):
                return
            pending, recorded_at = [], time.monotonic()
    if pending:
        _record_outcomes(task_id, attempt, pending, host)


@app.task(name=dispatch.SUBTASK, **STAGE_OPTIONS)
def run_subtask(self: Any, task_id: int, attempt: int, index: int, number: int) -> None:
    host = self.request.hostname
    with dispatch.continuing() as held:  # the last subtask of a task goes on to monitor
        _run_claimed(task_id, attempt, [(index, number)], host)
    _continue(held, host)


@app.task(name=dispatch.SUBTASKS, **STAGE_OPTIONS)
def run_subtasks(self: Any, task_id: int, attempt: int, pairs: list[list[int]]) -> None:
    """A batch: one message, one claim, outcomes recorded together (see dispatch.batch_size)."""
    host = self.request.hostname
    with dispatch.continuing() as held:
        _run_claimed(task_id, attempt, [(index, number) for index, number in pairs], host)
    _continue(held, host)


@app.task(name=dispatch.MONITOR, **STAGE_OPTIONS)
def monitor(self: Any, task_id: int, attempt: int) -> None:
    _run_stage(engine.monitor, task_id, attempt, self.request.hostname)


@app.task(name=dispatch.STORE, **STAGE_OPTIONS)
def store(self: Any, task_id: int, attempt: int) -> None:
    _run_stage(engine.store, task_id, attempt, self.request.hostname)


@app.task(name=dispatch.FAN_OUT, **STAGE_OPTIONS)
def fan_out(self: Any, messages: list[list[Any]]) -> None:
    """Send the stage messages a bulk restart handed on (see ``dispatch.send_stages``)."""
    dispatch.send_stages([(name, args, execution) for name, args, execution in messages], True)


@app.task(name=MONITOR_TASK, ignore_result=True)
def monitor_pipelines() -> dict[str, int]:
    """Run by Celery beat: re-send the messages of tasks that wait on a lost one."""
    return reconcile.reconcile()
