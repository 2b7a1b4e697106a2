"""The batch executor (``lifecycle.Executor.SLURM``): a node's subtasks run as one job
array per task attempt on a batch system (``pipeline.engine.batch_system``), never one
job per subtask.

The chain stays ``marshal -> execute -> monitor -> store`` on the Celery workers at the
head. Queueing a task's subtasks records a ``BatchJob`` (its token, known before it is
submitted, names the job on the batch system and every subtask it carries) and calls for
``BATCH_SUBMIT``; once that transaction committed, ``submit`` writes the job's manifest
into the task directory and submits it (a job is never submitted for work the database
does not know). A compute node runs its elements from the shared file system
(``pipeline.engine.batch_element``), reaching neither broker nor database.

Beat's reconciler follows every job with one query of the batch system per cycle
(``watch``): it records the outcomes the elements wrote, keeps each job's state, queue wait
and elapsed time, and when a job ended (completed, failed, cancelled by an
administrator, killed at its walltime, its node lost), the subtasks it left without an
outcome are run again in a new job or failed, as ``batch.lost_subtasks`` says. A
controller that does not answer is an alert, and nothing is decided until it answers
again: jobs keep running meanwhile, and the next answer tells how they went, so a cluster
stopped and started while jobs run picks them up. A job whose task moved on (halted,
restarted) or that no row knows is cancelled: nothing the pipeline does leaves a job
behind in the queue.
"""

from __future__ import annotations

import hashlib
import logging
import math
import sys
import uuid
from collections.abc import Iterable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, object_session

from pipeline.database import transaction
from pipeline.domain.context import event_fields
from pipeline.domain.definitions import parse
from pipeline.domain.lifecycle import EXECUTION_STEPS, Event
from pipeline.domain.models import (
    BatchJob,
    PipelineDefinition,
    PipelineInstance,
    Subtask,
    Task,
    utcnow,
)
from pipeline.domain.states import ACTIVE_BATCH_JOBS, BatchJobState, SubtaskState
from pipeline.domain.words import counted
from pipeline.engine import alerts, batch_cost, batch_element, model_registry, taskdir
from pipeline.engine.batch_system import (
    ArrayRequest,
    BatchRefused,
    BatchUnreachable,
    JobStatus,
    batch_system,
)
from pipeline.engine.datastore_ledger import versions_given
from pipeline.engine.executors import end_with_none_left, mark_queued
from pipeline.engine.leases import Claim
from pipeline.engine.locks import lock_task, lock_task_only
from pipeline.engine.runner import SubtaskOutcome
from pipeline.engine.stages import (
    Step,
    begin_subtasks,
    checked_outputs,
    clear_outputs,
    finish_subtasks,
    node_parameter_sets,
    node_parameters,
    subtask_directories,
)
from pipeline.engine.task_state import HOST, dispatch_again, is_current, move, note
from pipeline.messaging import outbox
from pipeline.messaging.messages import BATCH_SUBMIT, InFlight, Message
from pipeline.messaging.outbox import Outbox
from pipeline.messaging.publisher import publisher
from pipeline.settings import get_settings

log = logging.getLogger(__name__)
#: The alert's cause while the batch system does not answer.
UNREACHABLE = "service:batch"
#: Where a task's jobs keep their manifests, scripts, element logs and outcomes.
JOBS_DIR = ".batch"
#: The error of a subtask whose job ended without its outcome, and may not run again.
ENDED_WITHOUT_OUTCOME = "batch job {job} ended ({state}) without its outcome"


def job_name() -> str:
    """The job name all of this cluster's jobs share: what the one query asks for."""
    settings = get_settings()
    digest = hashlib.sha256(str(settings.home).encode()).hexdigest()[:10]
    return settings.batch_job_name or f"pipeline-{digest}"


def job_directory(task_dir: str, token: str) -> Path:
    return Path(task_dir) / JOBS_DIR / token


# -- the executor's module (``pipeline.engine.executors.ExecutorModule``) --------------------


def queue_subtasks(
    session: Session, tasks: Sequence[Task], messages: Outbox, host: str = ""
) -> None:
    """Record one job array for the NEW subtasks of each of these locked tasks and call
    for its submission; each task goes to ALGORITHM_QUEUED, or with none left to run, to
    ALGORITHM_COMPLETE and monitor."""
    queued = mark_queued(session, tasks)
    for task in tasks:
        if not queued[task.id]:
            end_with_none_left(session, task, messages, host)
            continue
        job = _new_job(session, task, [index for index, _ in queued[task.id]], messages)
        message = f"{counted(job.subtasks, 'subtask')} in a job array of {job.elements}"
        cost = "" if job.estimated_cost is None else f", cost {job.estimated_cost:.2f}"
        estimated = f"estimated {job.estimated_node_hours:.3g} node-hours{cost}"
        move(session, task, Event.QUEUED, f"{message} ({estimated})", host)


def redispatch(session: Session, task: Task, subtasks: Sequence[Subtask], messages: Outbox) -> None:
    """Send these lost subtasks of the locked task out again, in a job array of their own,
    under new dispatch numbers (a late outcome of the lost run is then ignored)."""
    if not subtasks:
        return
    dispatch_again(session, task, subtasks)
    _new_job(session, task, [subtask.index for subtask in subtasks], messages)


def alive(queues: Iterable[str]) -> InFlight:
    """The tokens of the jobs the monitor still follows: queued, running, or not submitted
    yet. Whether a job ended is ``watch``'s decision alone (it records what the elements
    wrote first, then runs the rest again or fails them as ``batch.lost_subtasks`` says);
    a subtask is lost here only when no followed job carries it. Asked from the database:
    a controller that does not answer loses nothing meanwhile."""
    return InFlight(set(_following()), set())


def _following() -> dict[str, tuple[int, str]]:
    """The jobs the database follows (not ended): their task and state, by token."""
    with transaction() as session:
        rows = session.execute(
            select(BatchJob.token, BatchJob.task_id, BatchJob.state).where(
                BatchJob.state.in_(list(ACTIVE_BATCH_JOBS))
            )
        )
        return {token: (task_id, state) for token, task_id, state in rows}


def lost(task: Task, subtasks: Sequence[Subtask], live: InFlight) -> list[Subtask]:
    """The task's in-flight subtasks whose job is neither queued nor running, and that left
    no outcome (an outcome is recorded by the monitor's next cycle)."""
    return [
        subtask
        for subtask in subtasks
        if subtask.message_id not in live.message_ids
        and not batch_element.outcome_path(
            job_directory(task.task_dir, subtask.message_id), subtask.index, subtask.dispatch
        ).exists()
    ]


def withdraw(task: Task, subtasks: Sequence[Subtask], messages: Outbox) -> None:
    """Cancel the jobs of a task being halted (``scancel``). A batch system that does not
    answer now cancels them at the monitor's next answer: their rows say cancelled."""
    session = object_session(task)
    assert session is not None
    jobs = list(
        session.scalars(
            select(BatchJob).where(
                BatchJob.task_id == task.id, BatchJob.state.in_(list(ACTIVE_BATCH_JOBS))
            )
        )
    )
    for job in jobs:
        job.state, job.ended_at, job.reason = BatchJobState.CANCELLED, utcnow(), "halted"
    submitted = [job for job in jobs if job.job_id]
    try:
        _cancel(submitted)
    except BatchUnreachable as exc:
        note(session, task, f"jobs not cancelled yet ({exc}): the monitor cancels them")


# -- submission ------------------------------------------------------------------------------


def _new_job(session: Session, task: Task, indices: list[int], messages: Outbox) -> BatchJob:
    """Record a job array for these queued subtasks of the locked task (each subtask's
    ``message_id`` its token) and call for its submission."""
    settings = task.settings
    elements = math.ceil(len(indices) / settings.batch.subtasks_per_job)
    job = BatchJob(
        task_id=task.id,
        attempt=task.attempt,
        token=uuid.uuid4().hex,
        system=settings.executor,
        subtasks=len(indices),
        elements=elements,
        partition=settings.batch.partition,
        seen={},
    )
    pipeline = session.get(PipelineInstance, task.instance_id).pipeline
    estimated = batch_cost.for_task(session, task, pipeline, len(indices))
    job.estimated_node_hours, job.estimated_cost = estimated.node_hours, estimated.cost
    session.add(job)
    for start in range(0, len(indices), 500):
        session.execute(
            update(Subtask)
            .where(Subtask.task_id == task.id, Subtask.index.in_(indices[start : start + 500]))
            .values(message_id=job.token)
            .execution_options(synchronize_session=False)
        )
    messages.add(Message(BATCH_SUBMIT, [task.id, task.attempt], settings.queue, 0))
    return job


def submit(task_id: int, attempt: int, host: str = "") -> Step:
    """Submit the task attempt's jobs not submitted yet (``BATCH_SUBMIT``'s stage). One
    the batch system refuses fails the task; one it does not answer for is submitted by
    the monitor once it answers again."""
    with transaction() as session:
        tokens = list(
            session.scalars(
                select(BatchJob.token).where(
                    BatchJob.task_id == task_id,
                    BatchJob.attempt == attempt,
                    BatchJob.state == BatchJobState.SUBMITTING,
                )
            )
        )
    step = Step()
    for token in tokens:
        step.messages += _submit_one(token, host)
    return step


def _submit_one(token: str, host: str) -> list[Message]:
    """Write the job's manifest and submit it; the messages a refusal called for."""
    refusal: BatchRefused | None = None
    with transaction() as session:
        job = session.scalars(select(BatchJob).where(BatchJob.token == token)).one()
        task = session.get(Task, job.task_id)
        if job.state != BatchJobState.SUBMITTING:
            return []
        if not is_current(task, job.attempt, *EXECUTION_STEPS):
            job.state, job.ended_at, job.reason = BatchJobState.CANCELLED, utcnow(), "moved on"
            return []
        try:
            request = _request(session, task, job)
        except BatchRefused as exc:  # its subtasks' directories could not be made
            refusal = exc
    if refusal is not None:
        return _refused(token, refusal, host)
    try:
        job_id = batch_system(job.system).submit_array(request)
    except BatchUnreachable as exc:
        with transaction() as session:
            session.execute(update(BatchJob).where(BatchJob.token == token).values(reason=str(exc)))
            _unreachable(session, exc)
        return []
    except BatchRefused as exc:
        return _refused(token, exc, host)
    with transaction() as session:
        job = session.scalars(select(BatchJob).where(BatchJob.token == token)).one()
        job.job_id, job.submitted_at = job_id, utcnow()
        if job.state == BatchJobState.SUBMITTING:
            job.state = BatchJobState.PENDING
            return []
    _cancel([job])  # halted while it was being submitted
    return []


def _request(session: Session, task: Task, job: BatchJob) -> ArrayRequest:
    """The job's array request, the directories of its subtasks that have none made
    (``subtask_directories``) and its manifest written into its directory."""
    instance = session.get(PipelineInstance, task.instance_id)
    definition = parse(instance.definition)
    node = definition.node(task.node)
    subtasks = session.execute(
        select(Subtask.index, Subtask.dispatch, Subtask.inputs)
        .where(
            Subtask.task_id == task.id,
            Subtask.message_id == job.token,
            Subtask.state == SubtaskState.QUEUED,
        )
        .order_by(Subtask.index)
    ).all()
    pins = model_registry.node_pins(instance, node)
    models = {kind: pin["name"] for kind, pin in pins.items()}
    given = versions_given(session, task.id, task.attempt, [index for index, _, _ in subtasks])
    unready = subtask_directories(task, given, pins)
    if unready:
        index, reason = min(unready.items())
        raise BatchRefused(f"subtask {index}: {reason}")
    for index, number, inputs in subtasks:
        if number > 1:  # run before: its outputs may be kept bytes now
            directory = taskdir.subtask_dir(Path(task.task_dir), index)
            clear_outputs(definition, node, directory, [*inputs, *models.values()])
    batch = task.settings.batch
    per = batch.subtasks_per_job
    directory = job_directory(task.task_dir, job.token)
    manifest = batch_element.write_manifest(
        directory,
        {
            "algorithm": node.model_dump(mode="json")["algorithm"],
            "python_path": list(definition.python_path or ()),
            "timeout": task.settings.subtask_timeout,
            "parameters": node_parameters(instance, definition, task.node),
            "parameter_sets": node_parameter_sets(instance, definition, task.node),
            "calls": node.calls,
            "memory_limit": node.subtask_memory,
            "unit_of_work": task.unit_of_work,
            "node": task.node,
            "models": models,
            "event": event_fields(instance.event),
            "task_dir": task.task_dir,
            "subtask_dir_format": taskdir.SUBTASK_DIR_FORMAT,
            "elements": [
                [list(row) for row in subtasks[start : start + per]]
                for start in range(0, len(subtasks), per)
            ],
        },
    )
    return ArrayRequest(
        name=job_name(),
        comment=job.token,
        command=[sys.executable, "-m", "pipeline.engine.batch_element", str(manifest)],
        elements=math.ceil(len(subtasks) / per),
        directory=directory,
        partition=batch.partition,
        account=batch.account,
        cores=batch.cores,
        memory_gb=batch.memory_gb,
        walltime=batch.walltime,
        # Ziggy's maxWorkers: an element runs its subtasks one after another.
        max_running=min(filter(None, (batch.max_jobs, node.max_workers)), default=None),
        options=batch.sbatch_options,
    )


def _refused(token: str, exc: BatchRefused, host: str) -> list[Message]:
    """The batch system refused the job: the task fails with its answer (a restart may
    change the batch settings)."""
    with outbox.transaction(deliver=lambda _: None) as (session, messages):
        job = session.scalars(select(BatchJob).where(BatchJob.token == token)).one()
        instance, task = lock_task(session, job.task_id)
        job.state, job.ended_at, job.reason = BatchJobState.ENDED, utcnow(), str(exc)
        if is_current(task, job.attempt, *EXECUTION_STEPS):
            move(session, task, Event.FAILED, f"job array refused: {exc}", host, instance=instance)
    return messages.messages


def _cancel(jobs: Sequence[BatchJob]) -> None:
    """Cancel these jobs, those of each batch system in one call."""
    by_system: dict[str, list[str]] = {}
    for job in jobs:
        if job.job_id:
            by_system.setdefault(job.system, []).append(job.job_id)
    for system, job_ids in by_system.items():
        batch_system(system).cancel(job_ids)


# -- the monitor cycle -----------------------------------------------------------------------


def _query() -> list[JobStatus]:
    """Every job of this cluster, asked in one call."""
    return batch_system("slurm").query(job_name())


def watch(isolation: Any) -> dict[str, int]:
    """One monitor cycle over every job the database follows (module docstring): one
    query of the batch system, whatever the number of jobs; nothing when none is out."""
    following = _following()
    if not following:
        return {}
    try:
        statuses = _query()
    except BatchUnreachable as exc:
        with transaction() as session:
            _unreachable(session, exc)
        return {"batch_unreachable": 1}
    with transaction() as session:
        alerts.clear(session, UNREACHABLE)
    by_token: dict[str, list[JobStatus]] = {}
    for status in statuses:
        by_token.setdefault(status.comment, []).append(status)
    counts = {"batch_jobs": len(following), "batch_outcomes": 0, "batch_lost": 0}
    try:
        for token, (task_id, _) in following.items():
            elements = by_token.get(token, [])
            found = isolation.task(task_id, lambda t=token, e=elements: follow(t, e))
            for key, value in (found or {}).items():
                counts[key] += value
        counts["batch_orphans"] = _cancel_orphans(by_token, set(following))
    except BatchUnreachable as exc:  # stopped answering mid-cycle: the next one goes on
        with transaction() as session:
            _unreachable(session, exc)
    return counts


def follow(token: str, elements: list[JobStatus]) -> dict[str, int]:
    """One job's part of a monitor cycle, given its elements as the query answered."""
    with transaction() as session:
        job = session.scalars(select(BatchJob).where(BatchJob.token == token)).one()
        state, created, submitted = job.state, job.created_at, job.submitted_at
    grace = timedelta(seconds=get_settings().stale_after)
    if state == BatchJobState.SUBMITTING:
        if elements:  # submitted, but the submission was not recorded: adopt it
            _seen(token, elements)
        elif created < utcnow() - grace:
            _submit_one(token, HOST)
        return {}
    recorded = record_outcomes(token)
    ended = not any(status.active for status in elements) and (
        bool(elements) or (submitted is not None and submitted < utcnow() - grace)
    )
    if not _seen(token, elements):
        return {"batch_outcomes": recorded}
    if not ended:
        return {"batch_outcomes": recorded}
    recorded += record_outcomes(token)  # written just before the element ended
    return {"batch_outcomes": recorded, "batch_lost": _ended(token)}


def _seen(token: str, elements: list[JobStatus]) -> bool:
    """Keep what the query said of the job's elements; whether the monitor follows it on:
    its task is still at the job's attempt, or is past it with every subtask of the job
    ended (its last elements exiting after writing their outcomes: left to end as they
    do). Otherwise the job is cancelled: its work is no longer wanted."""
    with transaction() as session:
        job = session.scalars(select(BatchJob).where(BatchJob.token == token)).one()
        task = session.get(Task, job.task_id)
        seen = dict(job.seen or {})
        for status in elements:
            key = str(status.element if status.element is not None else 0)
            seen[key] = [status.state, status.elapsed, status.queued, status.nodes]
            job.job_id = job.job_id or status.job_id
            job.partition = job.partition or status.partition
        job.seen = seen
        if any(status.state == "RUNNING" for status in elements):
            job.state = BatchJobState.RUNNING
        elif job.state == BatchJobState.SUBMITTING and elements:
            job.state = BatchJobState.PENDING
        job.reason = next((s.reason for s in elements if s.reason not in ("", "None")), "")
        batch_cost.measure(job, task.settings.batch)
        if is_current(task, job.attempt, *EXECUTION_STEPS) or _done(session, task, job):
            return True
        job.state, job.ended_at = BatchJobState.CANCELLED, utcnow()
        job.reason = "its task moved on"
        cancel = [job] if any(status.active for status in elements) else []
    _cancel(cancel)
    return False


def _done(session: Session, task: Task, job: BatchJob) -> bool:
    """Whether the job's task is at its attempt with none of the job's subtasks queued."""
    queued = session.scalar(
        select(Subtask.index)
        .where(
            Subtask.task_id == task.id,
            Subtask.message_id == job.token,
            Subtask.state == SubtaskState.QUEUED,
        )
        .limit(1)
    )
    return task.attempt == job.attempt and queued is None


def record_outcomes(token: str) -> int:
    """Record the outcomes the job's elements wrote for its subtasks still queued, as a
    worker records its own (outputs kept, counts, monitor's decision); how many."""
    with transaction() as session:
        job = session.scalars(select(BatchJob).where(BatchJob.token == token)).one()
        task = session.get(Task, job.task_id)
        waiting = session.execute(
            select(Subtask.index, Subtask.dispatch).where(
                Subtask.task_id == job.task_id,
                Subtask.message_id == token,
                Subtask.state == SubtaskState.QUEUED,
            )
        ).all()
        directory, attempt = job_directory(task.task_dir, token), job.attempt
    outcomes_dir = directory / batch_element.OUTCOMES
    try:
        written = {entry.name for entry in outcomes_dir.iterdir()}
    except FileNotFoundError:
        return 0
    ended: dict[Claim, SubtaskOutcome] = {}
    for index, number in waiting:
        path = batch_element.outcome_path(directory, index, number)
        if path.name in written:
            outcome = batch_element.read_outcome(path)
            if outcome is not None:
                ended[Claim(job.task_id, attempt, index, number)] = outcome
    if not ended:
        return 0
    runs = begin_subtasks(list(ended), HOST, about_to_run=False)
    finished = finish_subtasks(
        [(run.claim, checked_outputs(run, ended[run.claim])) for run in runs]
    )
    if finished.messages:
        publisher().publish(finished.messages)
    return len(runs)


def _ended(token: str) -> int:
    """The job ended: its subtasks left without an outcome run again in a new job or
    fail, as ``batch.lost_subtasks`` says (run again at most ``lost_subtask_retries``
    times); how many were lost."""
    retries = get_settings().lost_subtask_retries
    failing: list[Claim] = []
    with outbox.transaction() as (session, messages):
        job = session.scalars(select(BatchJob).where(BatchJob.token == token)).one()
        task = lock_task_only(session, job.task_id)
        job.state, job.ended_at = BatchJobState.ENDED, utcnow()
        batch_cost.measure(job, task.settings.batch)
        if not is_current(task, job.attempt, *EXECUTION_STEPS):
            return 0
        lost = list(
            session.scalars(
                select(Subtask).where(
                    Subtask.task_id == task.id,
                    Subtask.message_id == token,
                    Subtask.state == SubtaskState.QUEUED,
                )
            )
        )
        if not lost:
            return 0
        states = sorted({state for state, *_ in job.seen.values()}) or ["gone from the queue"]
        how = f"batch job {job.job_id} ended ({', '.join(states)})"
        again = []
        for subtask in lost:
            if task.settings.batch.lost_subtasks == "rerun" and subtask.attempts < retries:
                subtask.attempts += 1
                again.append(subtask)
            else:
                failing.append(Claim(task.id, task.attempt, subtask.index, subtask.dispatch))
        redispatch(session, task, again, messages)
        indices = ", ".join(str(s.index) for s in lost[:10]) + (" ..." if len(lost) > 10 else "")
        what = f"{counted(len(again), 'subtask')} run again, {len(failing)} failed"
        message = f"{how} without outcomes for subtasks {indices}: {what}"
        note(session, task, message)
        alerts.raise_alert(session, task, alerts.WARNING, message)
        error = ENDED_WITHOUT_OUTCOME.format(job=job.job_id, state=", ".join(states))
    if failing:
        runs = begin_subtasks(failing, HOST, about_to_run=False)
        finished = finish_subtasks([(run.claim, SubtaskOutcome(False, error)) for run in runs])
        if finished.messages:
            publisher().publish(finished.messages)
    return len(lost)


def _cancel_orphans(by_token: dict[str, list[JobStatus]], following: set[str]) -> int:
    """Cancel the jobs still queued or running that no followed row owns: their task
    moved on (a halt whose cancel went unanswered), or their submission was rolled back.
    A job known to no row is given ``stale_after`` first (its row may not be committed)."""
    candidates = {
        token: statuses
        for token, statuses in by_token.items()
        if token not in following and any(status.active for status in statuses)
    }
    if not candidates:
        return 0
    with transaction() as session:
        known = set(
            session.scalars(select(BatchJob.token).where(BatchJob.token.in_(list(candidates))))
        )
    grace = get_settings().stale_after
    orphans = sorted(
        {
            status.job_id
            for token, statuses in candidates.items()
            for status in statuses
            if token in known or status.queued + status.elapsed > grace
        }
    )
    if orphans:
        log.warning("batch: cancelling jobs no task follows: %s", ", ".join(orphans))
        batch_system("slurm").cancel(orphans)
    return len(orphans)


def _unreachable(session: Session, exc: BatchUnreachable) -> None:
    alerts.raise_once(
        session,
        UNREACHABLE,
        alerts.ERROR,
        f"{exc}: jobs are followed again once it answers (nothing is lost meanwhile)",
    )


def status() -> dict[str, Any] | None:
    """Whether the batch system answers, as ``cluster status`` shows it (a row named for
    it, ``alive`` when it answers); None when no pipeline's node runs on one."""
    with transaction() as session:
        specs = session.scalars(select(PipelineDefinition.spec))
        used = any(
            (node.get("execution") or {}).get("executor") == "slurm"
            for spec in specs
            for node in spec.get("nodes", [])
        )
    if not used:
        return None
    try:
        message = batch_system("slurm").answers()
    except BatchUnreachable as exc:
        return {"name": "slurm", "pid": None, "alive": False, "url": None, "message": str(exc)}
    return {"name": "slurm", "pid": None, "alive": True, "url": None, "message": message}
