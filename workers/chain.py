"""The Celery tasks of a pipeline task's chain, thin entry points over ``pipeline.engine``.

Each carries the pipeline task id and attempt in its arguments, so Flower's task list
shows which pipeline task and stage a Celery task belongs to. Being fenced, a stage run
again after its work was done does nothing, so: a stage that meets a deadlock or a lost
database connection runs again at once, in the worker (``database.retrying``, for
``database_retry_seconds``); one that meets a longer outage of the database or the broker
goes back to the broker and is retried by Celery with backoff, freeing the worker's slot.

A stage returns the messages it calls for, committed; this module decides where they
go. The short stages of the same task (execute, monitor after the last subtask, store
after monitor) run right after it in the same Celery task rather than through the broker
(``RUN_HERE``); every other message is published. Each hop through the broker costs a
publish and a wait (about 2 ms on an idle machine, much more under load): a one-subtask
task's chain takes two messages, not five. The state changes stay one transaction each,
so a worker that dies between two leaves the task waiting in its step, for beat's
reconciler to send its message again as it does for any lost one.

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
from pipeline.engine import batch, deliveries, stages
from pipeline.engine.leases import Claim
from pipeline.engine.stages import Step
from pipeline.errors import Unreachable
from pipeline.messaging.broker import publish_now
from pipeline.messaging.celery_app import celery_app
from pipeline.messaging.messages import (
    BATCH_SUBMIT,
    EXECUTE,
    FAN_OUT,
    GROUP,
    MARSHAL,
    MONITOR,
    RECONCILE,
    STORE,
    SUBTASK,
    SUBTASKS,
    Message,
)
from pipeline.messaging.publisher import publisher
from pipeline.operations.delivery import receive_waiting
from pipeline.recovery.reconcile import reconcile

app = celery_app()
# Ziggy's data receipt node receives its delivery as the operations do.
deliveries.use_receiver(receive_waiting)

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
#: The stages a worker runs itself, right after the stage of the same task that called
#: for them, instead of publishing their message.
RUN_HERE: dict[str, Callable[..., Step]] = {
    EXECUTE: stages.execute,
    MONITOR: stages.monitor,
    STORE: stages.store,
    BATCH_SUBMIT: batch.submit,
}


def _run_stage(stage: Callable[..., Step], task_id: int, attempt: int, host: str) -> list[str]:
    """Run one stage, then the messages it called for; the failures recorded, each naming
    its task."""
    step = retrying()(stage)(task_id, attempt, host=host)
    return step.failures + _go_on(step.messages, host)


def _go_on(messages: list[Message], host: str) -> list[str]:
    """Publish the messages a stage called for, and run here those ``RUN_HERE`` runs; the
    failures they recorded. One that meets an outage longer than the database retries
    goes to the broker as the message it would have been, for Celery to retry with
    backoff."""
    failures: list[str] = []
    here = [message for message in messages if message.name in RUN_HERE]
    elsewhere = [message for message in messages if message.name not in RUN_HERE]
    unsent: Unreachable | None = None
    try:
        if elsewhere:
            publisher().publish(elsewhere)
    except Unreachable as exc:  # the stages run here need no broker: they go on first
        unsent = exc
    for message in here:
        try:
            failures += _run_stage(RUN_HERE[message.name], *message.args, host)
        except TRANSIENT:
            publisher().publish([message])
    if unsent is not None:
        raise unsent  # Celery retries the message; the reconciler sends what was not sent
    return failures


def _run_subtasks(claims: list[Claim], host: str) -> None:
    """Run one message's subtasks (see ``stages.run_subtasks``), then the messages they
    called for (a task whose last subtask ended goes on to store); a failure recorded ends
    the Celery task as a failure."""
    kept: list[Message] = []

    def hand_over(messages: list[Message]) -> None:
        """Messages called for while others of this message still wait to run: for any
        worker at once; with the broker out of reach, this worker runs them at the end."""
        try:
            publisher().publish(messages)
        except Unreachable:
            kept.extend(messages)

    step = stages.run_subtasks(claims, host, hand_over)
    failures = step.failures + _go_on(kept + step.messages, host)
    if failures:
        raise RecordedFailure.of(failures)


def _stage_task(stage: Callable[..., Step], task_id: int, attempt: int, host: str) -> None:
    """A stage's Celery task: a failure the stage recorded ends it as a Celery failure."""
    failures = _run_stage(stage, task_id, attempt, host)
    if failures:
        raise RecordedFailure.of(failures)


@app.task(name=MARSHAL, **STAGE_OPTIONS)
def marshal(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.marshal, task_id, attempt, self.request.hostname)


@app.task(name=EXECUTE, **STAGE_OPTIONS)
def execute(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.execute, task_id, attempt, self.request.hostname)


@app.task(name=BATCH_SUBMIT, **STAGE_OPTIONS)
def batch_submit(self: Any, task_id: int, attempt: int) -> None:
    """Submit a task attempt's job arrays to its batch system (``engine.batch``)."""
    _stage_task(batch.submit, task_id, attempt, self.request.hostname)


@app.task(name=SUBTASK, **STAGE_OPTIONS)
def run_subtask(self: Any, task_id: int, attempt: int, index: int, number: int) -> None:
    _run_subtasks([Claim(task_id, attempt, index, number)], self.request.hostname)


@app.task(name=SUBTASKS, **STAGE_OPTIONS)
def run_subtasks(self: Any, task_id: int, attempt: int, pairs: list[list[int]]) -> None:
    """A batch: one message, one claim, outcomes recorded together (see dispatch.batch_size)."""
    claims = [Claim(task_id, attempt, index, number) for index, number in pairs]
    _run_subtasks(claims, self.request.hostname)


@app.task(name=GROUP, **STAGE_OPTIONS)
def run_subtask_group(self: Any, entries: list[list[int]]) -> None:
    """The one subtask each of several tasks, claimed together, run one after another and
    recorded together, each outcome its own task's; a halted task's is not run (its
    attempt moved on), and one halted while running is stopped at its next lease
    renewal."""
    _run_subtasks([Claim(*entry) for entry in entries], self.request.hostname)


@app.task(name=MONITOR, **STAGE_OPTIONS)
def monitor(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.monitor, task_id, attempt, self.request.hostname)


@app.task(name=STORE, **STAGE_OPTIONS)
def store(self: Any, task_id: int, attempt: int) -> None:
    _stage_task(stages.store, task_id, attempt, self.request.hostname)


@app.task(name=FAN_OUT, **STAGE_OPTIONS)
def fan_out(self: Any, messages: list[list[Any]]) -> None:
    """Publish the messages a caller handed on (see ``broker.CeleryPublisher``)."""
    publish_now([Message.from_list(fields) for fields in messages])


@app.task(name=RECONCILE, ignore_result=True, send_events=False)
def reconcile_pipelines() -> dict[str, int]:
    """Run by Celery beat: reclaim lost work, re-send the messages of tasks waiting on a
    lost one, retry lost transitions.

    It sends no task events (nor does beat send its ``task-sent``, see ``celery_app``):
    run every few seconds, it would fill Flower's task list. Each run records its
    heartbeat instead (``pipeline.recovery.heartbeat``), which ``cluster status``, the
    console and ``/metrics`` show.
    """
    return reconcile()
