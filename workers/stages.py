"""The Celery tasks of a pipeline task's chain, thin entry points over ``pipeline.engine``.

Each carries the pipeline task id and attempt in its arguments, so Flower's task list
shows which pipeline task and stage a Celery task belongs to. Being fenced, a stage run
again after its work was done does nothing, so: a stage that meets a deadlock or a lost
database connection runs again at once, in the worker (``database.retrying``, for
``database_retry_seconds``); one that meets a longer outage of the database or the broker
goes back to the broker and is retried by Celery with backoff, freeing the worker's slot.

The short stages a stage calls for (execute after marshal, monitor after the last
subtask, store after monitor) run right after it in the same Celery task rather than
through the broker (see ``outbox.continuing``).

A Celery task whose subtask failed (or whose stage failed: marshaling, storing) ends as a
FAILURE with the error as its exception text, so Flower's Failed filter, its counts and
``celery events`` show the pipeline's failures. It raises only after the outcome is
recorded and the next stage is under way: the database stays the record and the chain
goes on, and the exception is an expected one (``throws``), neither retried nor logged
with a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.exc import DBAPIError

from pipeline.database import retrying
from pipeline.engine import stages
from pipeline.engine.leases import Claim
from pipeline.errors import Unreachable
from pipeline.messaging import outbox
from pipeline.messaging.celery_app import MONITOR_TASK, celery_app
from pipeline.recovery.reconcile import reconcile

app = celery_app()

TRANSIENT = (Unreachable, DBAPIError)
#: Failures a Celery task names in its exception text at most; the rest are counted.
FAILURES_NAMED = 5


class RecordedFailure(Exception):
    """A subtask or stage failed, and the pipeline has recorded it: the Celery task ends as
    a failure so Flower reports it; there is nothing to retry."""

    @classmethod
    def of(cls, failures: list[str]) -> RecordedFailure:
        named = failures[:FAILURES_NAMED]
        more = len(failures) - len(named)
        return cls("; ".join(named) + (f"; and {more} more" if more else ""))


STAGE_OPTIONS: dict[str, Any] = {
    "bind": True,
    "throws": (RecordedFailure,),
    "autoretry_for": TRANSIENT,
    "retry_backoff": True,
    "retry_backoff_max": 30,
    "max_retries": 20,
}
#: What runs each stage that a worker continues with instead of sending its message.
CONTINUED_STAGES: dict[str, Callable[..., None]] = {
    outbox.EXECUTE: stages.execute,
    outbox.MONITOR: stages.monitor,
    outbox.STORE: stages.store,
}


def _run_stage(
    stage: Callable[..., str | None], task_id: int, attempt: int, host: str
) -> list[str]:
    """Run one stage, then the stages it called for that this worker continues with; the
    failures they recorded, each naming its task."""
    with outbox.continuing() as held:
        failure = retrying()(stage)(task_id, attempt, host=host)
    own = [f"task {task_id}: {failure}"] if failure else []
    return own + _continue(held, host)


def _continue(held: list[outbox.StageMessage], host: str) -> list[str]:
    """Run held stages here; the failures they recorded. One that meets an outage longer
    than the database retries goes to the broker as the message it would have been, for
    Celery to retry with backoff."""
    failures: list[str] = []
    for name, args, execution in held:
        try:
            failures += _run_stage(CONTINUED_STAGES[name], *args, host)
        except TRANSIENT:
            outbox.publish_stages([(name, args, execution)])
    return failures


def _run_subtasks(claims: list[Claim], host: str) -> None:
    """Run one message's subtasks (see ``stages.run_subtasks``), then the stages they called
    for (a task whose last subtask ended goes on to store); a failure recorded ends the
    Celery task as a failure."""
    with outbox.continuing() as held:
        failures = stages.run_subtasks(claims, host)
    failures += _continue(held, host)
    if failures:
        raise RecordedFailure.of(failures)


def _stage_task(stage: Callable[..., str | None], task_id: int, attempt: int, host: str) -> None:
    """A stage's Celery task: a failure the stage recorded ends it as a Celery failure."""
    failures = _run_stage(stage, task_id, attempt, host)
    if failures:
        raise RecordedFailure.of(failures)


@app.task(name=outbox.MARSHAL, **STAGE_OPTIONS)
def marshal(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.marshal, task_id, attempt, self.request.hostname)


@app.task(name=outbox.EXECUTE, **STAGE_OPTIONS)
def execute(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.execute, task_id, attempt, self.request.hostname)


@app.task(name=outbox.SUBTASK, **STAGE_OPTIONS)
def run_subtask(self: Any, task_id: int, attempt: int, index: int, number: int) -> None:
    _run_subtasks([Claim(task_id, attempt, index, number)], self.request.hostname)


@app.task(name=outbox.SUBTASKS, **STAGE_OPTIONS)
def run_subtasks(self: Any, task_id: int, attempt: int, pairs: list[list[int]]) -> None:
    """A batch: one message, one claim, outcomes recorded together (see outbox.batch_size)."""
    claims = [Claim(task_id, attempt, index, number) for index, number in pairs]
    _run_subtasks(claims, self.request.hostname)


@app.task(name=outbox.GROUP, **STAGE_OPTIONS)
def run_subtask_group(self: Any, entries: list[list[int]]) -> None:
    """The one subtask each of several tasks (see ``outbox.GROUP``), claimed together, run
    one after another and recorded together, each outcome its own task's; a halted task's
    is not run (its attempt moved on), and one halted while running is stopped at its
    next lease renewal."""
    _run_subtasks([Claim(*entry) for entry in entries], self.request.hostname)


@app.task(name=outbox.MONITOR, **STAGE_OPTIONS)
def monitor(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.monitor, task_id, attempt, self.request.hostname)


@app.task(name=outbox.STORE, **STAGE_OPTIONS)
def store(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.store, task_id, attempt, self.request.hostname)


@app.task(name=outbox.FAN_OUT, **STAGE_OPTIONS)
def fan_out(self: Any, messages: list[list[Any]]) -> None:
    """Publish the messages a caller handed on (see ``outbox._handed_on``)."""
    outbox.publish_handed_on(messages)


@app.task(name=MONITOR_TASK, ignore_result=True, send_events=False)
def monitor_pipelines() -> dict[str, int]:
    """Run by Celery beat: reclaim lost work, re-send the messages of tasks waiting on a
    lost one, retry lost transitions.

    It sends no task events (nor does beat send its ``task-sent``, see ``celery_app``):
    run every few seconds, it would fill Flower's task list. Each run records the
    monitor's heartbeat instead (``pipeline.recovery.heartbeat``), which ``cluster
    status``, the console and ``/metrics`` show.
    """
    return reconcile()
