"""The Celery tasks of a pipeline task's chain, thin wrappers over ``pipeline.engine``.

Each carries the pipeline task id and attempt in its arguments, so Flower's task list
shows which pipeline task and stage a Celery task belongs to. Being fenced, a stage run
again after its work was done does nothing, so: a stage that meets a deadlock or a lost
database connection runs again at once, in the worker (``database.retrying``, for
``database_retry_seconds``); one that meets a longer outage of the database or the broker
goes back to the broker and is retried by Celery with backoff, freeing the worker's slot.
"""

from __future__ import annotations

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


@app.task(name=dispatch.MARSHAL, **STAGE_OPTIONS)
def marshal(self: Any, task_id: int, attempt: int) -> None:
    retrying()(engine.marshal)(task_id, attempt, host=self.request.hostname)


@app.task(name=dispatch.EXECUTE, **STAGE_OPTIONS)
def execute(self: Any, task_id: int, attempt: int) -> None:
    retrying()(engine.execute)(task_id, attempt, host=self.request.hostname)


@retrying(dispatch.RECORD_OUTCOME_FOR_SECONDS)
def _record_outcome(
    task_id: int, attempt: int, index: int, number: int, outcome: Any, host: str
) -> None:
    """Record an outcome, riding out a database restart: rerunning the subtask costs more."""
    engine.finish_subtask(task_id, attempt, index, number, outcome, host)


@app.task(name=dispatch.SUBTASK, **STAGE_OPTIONS)
def run_subtask(self: Any, task_id: int, attempt: int, index: int, number: int) -> None:
    claim = retrying()(engine.begin_subtask)
    run = claim(task_id, attempt, index, number, host=self.request.hostname)
    if run is None:
        return
    lease = get_settings().lease_seconds
    beat = algorithms.Heartbeat(lambda: engine.heartbeat(task_id, index, number), lease / 3)
    outcome = algorithms.run(run.algorithm, run.context, run.timeout, beat)
    _record_outcome(task_id, attempt, index, number, outcome, self.request.hostname)


@app.task(name=dispatch.MONITOR, **STAGE_OPTIONS)
def monitor(self: Any, task_id: int, attempt: int) -> None:
    retrying()(engine.monitor)(task_id, attempt, host=self.request.hostname)


@app.task(name=dispatch.STORE, **STAGE_OPTIONS)
def store(self: Any, task_id: int, attempt: int) -> None:
    retrying()(engine.store)(task_id, attempt, host=self.request.hostname)


@app.task(name=MONITOR_TASK, ignore_result=True)
def monitor_pipelines() -> dict[str, int]:
    """Run by Celery beat: re-send the messages of tasks that wait on a lost one."""
    return reconcile.reconcile()
