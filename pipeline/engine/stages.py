"""The four stages of a task's chain: ``marshal -> execute (fan out subtasks) -> monitor
-> store``.

Each function here is one stage, called by its Celery task (``workers.chain``) with the
task's attempt number: it checks that the message still applies (the fence), does its
work, records the transition in one transaction, and returns what it recorded (a
``Step``): the failure, if any, and the messages it calls for, committed. Its Celery task
decides which of them to publish and which to run itself. A duplicate, late or stale
message changes nothing.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from functools import partial
from itertools import chain
from pathlib import Path
from typing import Any, NamedTuple

from sqlalchemy import Row, bindparam, delete, select, update
from sqlalchemy.orm import Session

from pipeline.database import add_rows, refresh_statistics, retrying, transaction
from pipeline.domain.context import SubtaskContext, event_fields
from pipeline.domain.definitions import Definition, Node, parse
from pipeline.domain.lifecycle import EXECUTION_STEPS, Event, PState
from pipeline.domain.models import PipelineInstance, Subtask, Task, utcnow
from pipeline.domain.states import UNFINISHED, SubtaskState
from pipeline.domain.words import counted
from pipeline.domain.ziggy import DATA_RECEIPT
from pipeline.engine import (
    attempts,
    code_version,
    datastore,
    datastore_ledger,
    deliveries,
    model_registry,
    runner,
    staleness,
    taskdir,
)
from pipeline.engine.alerts import WARNING, raise_alert
from pipeline.engine.dispatch import RECORD_OUTCOME_FOR_SECONDS
from pipeline.engine.executors import queue_subtasks
from pipeline.engine.leases import Claim, LeaseRenewal, StepLease, renew_subtask_leases
from pipeline.engine.locks import lock_rows, lock_task, lock_task_only
from pipeline.engine.runner import SubtaskOutcome
from pipeline.engine.task_state import (
    count_runs,
    count_subtasks,
    history_in_bulk,
    is_current,
    move,
    note,
    refresh_instance_state,
    reset_subtasks,
    send_waiting,
    subtasks_made,
)
from pipeline.engine.transitions import advance_within
from pipeline.errors import PipelineError, Unreachable
from pipeline.messaging import outbox
from pipeline.messaging.messages import Message
from pipeline.messaging.outbox import Outbox
from pipeline.settings import get_settings

log = logging.getLogger(__name__)
#: Parsed definitions a worker process keeps, by database and instance (an instance's
#: definition is frozen, and a worker runs many subtasks of the same few instances).
DEFINITION_CACHE_SIZE = 16
_definitions: dict[tuple[str, int], Definition] = {}
#: A batch records the outcomes of the subtasks it has run at least this often (seconds):
#: short subtasks share one transaction, and a worker that dies loses little work.
RECORD_EVERY_SECONDS = 1.0


def node_parameters(
    instance: PipelineInstance, definition: Definition, node: str
) -> dict[str, Any]:
    """The frozen values of every parameter set ``node`` uses, as one flat mapping."""
    values: dict[str, Any] = {}
    for set_values in node_parameter_sets(instance, definition, node).values():
        values.update(set_values)
    return values


def node_parameter_sets(
    instance: PipelineInstance, definition: Definition, node: str
) -> dict[str, dict[str, Any]]:
    """The frozen values of each parameter set ``node`` uses, by set."""
    return {
        set_name: instance.parameters[set_name]["values"]
        for set_name in definition.node(node).parameter_sets
    }


@dataclass
class Step:
    """What a stage recorded: the failures (``task T: <error>``, ``task T subtask N:
    <error>``) and the messages it calls for, committed, in the order called for."""

    failures: list[str] = field(default_factory=list)
    messages: list[Message] = field(default_factory=list)

    def transaction(self) -> Any:
        """A transaction whose messages, once it commits, are this step's to return."""
        return outbox.transaction(deliver=self.take)

    def take(self, committed: Outbox) -> None:
        if committed.revoked:  # a stage revokes nothing: only an operator's halt does
            raise ValueError("a stage's transaction revoked messages")
        self.messages += committed.messages


def _fail_step(task_id: int, attempt: int, step: PState, message: str, host: str) -> Step:
    """Set the error flag if the step is still this attempt's; the failure, once recorded."""
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, step):
            return Step()
        move(session, task, Event.FAILED, message, host, instance=instance)
        return Step([f"task {task_id}: {message}"])


# -- marshal ---------------------------------------------------------------------------------


@contextmanager
def collector_paused() -> Iterator[None]:
    """The cycle collector off while the body runs, then as it was. For work that makes
    objects by the hundred thousand and no cycles: a marshal of 20,000 files ran the
    collector 384 times (0.13 to 0.34 s of its 1.2 to 1.8), for nothing refcounting does
    not free; what cycles the body leaves (a session's) are collected after."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def marshal(task_id: int, attempt: int, host: str = "") -> Step:
    """Choose the task's inputs from the ledger, make its task directory and create its
    subtasks, each recorded with the files it consumes, and queue them. Each subtask's
    directory is made when it runs (``subtask_directories``). Without the cycle
    collector (``collector_paused``)."""
    with collector_paused():
        return _marshal(task_id, attempt, host)


def _marshal(task_id: int, attempt: int, host: str) -> Step:
    with transaction() as session:
        instance, task = lock_task(session, task_id)
        # Claims the step: one marshal per attempt.
        if not is_current(task, attempt, PState.INITIALIZING):
            return Step()
        move(session, task, Event.MARSHAL, host=host, instance=instance)
        task_dir = taskdir.task_directory(instance.id, task)
    if instance_definition(instance).node(task.node).receives:
        return _receive(task_id, attempt, host, instance, task, task_dir)
    try:
        root = datastore.require(get_settings().datastore)
        with StepLease(task_id, attempt, PState.MARSHALING):
            selection, node, models = _choose_inputs(task_id, root)
            fingerprints = {
                c.path: datastore.fingerprint(root, f"{root}/{c.path}")
                for c in selection.files
                if c.file_id is None
            }
            definition = instance_definition(instance)
            code = attempts.code_of(node, definition.python_path)
            paired = taskdir.pairing(
                definition, node, [(c.data_file_type, c.path) for c in selection.files]
            )
            groups = taskdir.split(selection.files, node, paired)
            names = [[c.path.rsplit("/", 1)[-1] for c in group] for group in groups]
            taskdir.prepare(task_dir, names, [name for _, name in models])
    except (OSError, PipelineError) as exc:
        return _fail_step(task_id, attempt, PState.MARSHALING, f"marshaling failed: {exc}", host)

    def record(session: Session, task: Task) -> int:
        ids = datastore_ledger.record_found(session, selection.files, fingerprints)
        create_subtasks(session, task.id, names)
        datastore_ledger.record_consumption(
            session, task.id, attempt, taskdir.split(ids, node, paired)
        )
        return len(names)

    message = f"{len(names)} subtasks" + (f": {selection.nothing}" if selection.nothing else "")
    return _marshaled(task_id, attempt, host, (node, code, task_dir), message, record)


#: The tables a marshal adds a row to for each subtask (and, for found inputs, each
#: input), whose statistics it may refresh (``refresh_statistics``).
MARSHALED_TABLES = ("subtasks", "file_consumptions", "datastore_files")


def _marshaled(
    task_id: int,
    attempt: int,
    host: str,
    ran: tuple[Node, dict[str, Any], Path],
    message: str,
    record: Callable[[Session, Task], int] | None = None,
) -> Step:
    """A marshal's end, if the step is still this attempt's, in one transaction: the code
    that ran (``ran``: the node, its code, the task directory), the subtasks ``record``
    creates (how many), MARSHALED, and the subtasks queued."""
    node, code, task_dir = ran
    step = Step()
    with step.transaction() as (session, messages):
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, PState.MARSHALING):
            return step
        attempts.record(session, instance, task, node, code)
        count = record(session, task) if record is not None else 0
        task.task_dir = str(task_dir)
        subtasks_made(task, count)
        move(session, task, Event.MARSHALED, message, host)
        queue_subtasks(session, [task], messages, host)
    refresh_statistics(MARSHALED_TABLES, count)
    return step


def _receive(
    task_id: int, attempt: int, host: str, instance: PipelineInstance, task: Task, task_dir: Path
) -> Step:
    """Marshaling, for Ziggy's data receipt node: receive the task's delivery
    (``deliveries``), its files recorded with the task. It has no subtasks: it moves on to
    store nothing, and its children find what it received in the datastore."""
    directory = deliveries.directory_of(get_settings().receipt, task.unit_of_work)
    received_by = {
        "instance_id": instance.id,
        "task_id": task_id,
        "attempt": attempt,
        "node": task.node,
        "definition_version": instance.definition_version,
    }
    try:
        with StepLease(task_id, attempt, PState.MARSHALING):
            said = deliveries.receive(directory, instance.pipeline, received_by)
        task_dir.mkdir(parents=True, exist_ok=True)
    except (OSError, PipelineError) as exc:
        return _fail_step(task_id, attempt, PState.MARSHALING, f"data receipt failed: {exc}", host)
    code = {"builtin": DATA_RECEIPT, "product": code_version.product_version()}
    node = instance_definition(instance).node(task.node)
    return _marshaled(task_id, attempt, host, (node, code, task_dir), said)


def _choose_inputs(
    task_id: int, root: Path
) -> tuple[datastore_ledger.Selection, Node, list[tuple[Path, str]]]:
    """The task's inputs (see ``datastore_ledger.select_inputs``), its node, and the
    models its subtasks are given (the versions its instance pinned)."""
    with transaction() as session:
        task = session.get(Task, task_id)
        instance = session.get(PipelineInstance, task.instance_id)
        definition = instance_definition(instance)
        node = definition.node(task.node)
        unit = task.unit_of_work
        selection = datastore_ledger.select_inputs(session, root, instance, definition, node, unit)
        return selection, node, model_registry.given(root, model_registry.node_pins(instance, node))


def create_subtasks(session: Session, task_id: int, groups: list[list[str]]) -> None:
    """Replace the task's subtask rows with one per group of input names, in bulk (one
    DELETE, then ``add_rows``: a task of 100,000 subtasks gets its rows in about a second)."""
    session.execute(delete(Subtask).where(Subtask.task_id == task_id))
    add_rows(
        session,
        Subtask.__table__,
        [{"task_id": task_id, "index": i, "inputs": names} for i, names in enumerate(groups)],
    )


# -- execute ---------------------------------------------------------------------------------


def execute(task_id: int, attempt: int, host: str = "") -> Step:
    """Send out the subtasks that have not run (see ``executors.queue_subtasks``): the
    message of a task left waiting in ALGORITHM_SUBMITTING (the reconciler re-sends it)."""
    step = Step()
    with step.transaction() as (session, messages):
        task = lock_task_only(session, task_id)
        if is_current(task, attempt, PState.ALGORITHM_SUBMITTING):
            queue_subtasks(session, [task], messages, host)
    return step


# -- subtasks --------------------------------------------------------------------------------


@dataclass(frozen=True)
class SubtaskRun:
    """Everything a worker needs to run one subtask, read in the transaction that claimed it."""

    algorithm: str | dict[str, Any]
    context: SubtaskContext
    timeout: float
    #: The dispatch it was claimed under, which its outcome must carry.
    claim: Claim
    definition: Definition
    node: Node
    #: The names of its inputs, which are never taken for its outputs.
    inputs: list[str]
    #: The task's ``require_outputs`` execution setting.
    require_outputs: bool
    #: Whose subtasks may share its algorithm's process (see ``runner.run_many``): the
    #: same instance's same node, in the same database.
    scope: tuple[str, int, str]
    #: The datastore's root, where its outputs are kept as it ends.
    datastore: str
    #: Why its directory could not be made (its inputs' bytes gone, a full disk): it
    #: fails without running. Empty when it is ready to run.
    unready: str = ""


#: Where a worker running a message's subtasks hands the messages of records made while
#: others still wait to run.
HandOver = Callable[[list[Message]], None]


class Finished(NamedTuple):
    """What recording outcomes did: the tasks that moved on (another attempt), and the
    messages called for, committed."""

    moved: set[int]
    messages: list[Message]


#: The error of a subtask that succeeded without output where outputs are required.
NO_OUTPUT_REQUIRED = "produced no output (require_outputs = true)"
#: A subtask's run that ended, to be recorded: the dispatch it ran under, and its outcome.
Ended = tuple[Claim, SubtaskOutcome]


def checked_outputs(run: SubtaskRun, outcome: SubtaskOutcome) -> SubtaskOutcome:
    """Count the outputs of a subtask that succeeded and keep their bytes in the object
    store, in this worker, while others still run (the store then only places them); with
    none where the task's execution settings require them, or one that cannot be kept (a
    full disk, say), it failed."""
    if not outcome.ok or not run.node.outputs:
        return outcome
    found = output_names(run.definition, run.node, run.context.directory, run.inputs)
    if not found and run.require_outputs:
        return SubtaskOutcome(False, NO_OUTPUT_REQUIRED, outputs=0)
    kept = []
    for name, file in found:
        try:
            version = datastore.keep(run.datastore, f"{run.context.directory}/{file}")
        except OSError as exc:
            return SubtaskOutcome(False, f"could not keep output {file}: {exc.strerror or exc}")
        kept.append([name, file, version.sha256, version.size, version.mtime_ns, version.inode])
    if kept:
        datastore.flush_ahead(run.datastore)
    # Not ``dataclasses.replace``, which costs 15 microseconds a subtask.
    return SubtaskOutcome(True, outcome.error, outcome.timed_out, len(found), kept, outcome.details)


def run_subtasks(claims: Sequence[Claim], host: str, hand_over: HandOver) -> Step:
    """Run the subtasks of one message: a batch of one task's, or the one subtask each of
    several tasks of one instance's node (a ``GROUP``). They are claimed together, run
    one after another in a child process (one that crashes or hangs fails only its
    subtask, see ``runner.run_many``) while their leases are renewed, and their outcomes
    recorded in groups; each transaction serves the whole message, each outcome stays its
    own subtask's. A subtask whose task moved on meanwhile (halted, restarted) is not run.

    The messages a record calls for while others of the message still wait to run go to
    ``hand_over`` at once (a finished task's store need not wait for the rest); those of
    the last record are returned, with every failure recorded, ``task T subtask N:
    <the algorithm's error>``, so the Celery task can end as a failure once they are
    safely in the database.
    """
    runs = retrying()(begin_subtasks)(claims, host=host)
    step = Step()
    unready = [run for run in runs if run.unready]
    if unready:
        ready = [run for run in runs if not run.unready]
        failed = [(run.claim, SubtaskOutcome(False, run.unready)) for run in unready]
        moved = _record_outcomes(failed, host, step, ready)
        runs = [run for run in ready if run.claim.task_id not in moved]
    while runs:
        runs = _run_in_turn(runs, host, step, hand_over)
    return step


def _run_in_turn(
    runs: list[SubtaskRun], host: str, step: Step, hand_over: HandOver
) -> list[SubtaskRun]:
    """Run these claimed subtasks in turn in one child, until they are done or a record
    or a lease renewal shows some of those left no longer this worker's (their task was
    halted or restarted: they are not started); those still to run then. Adds what each
    record recorded to ``step``."""
    ran, moved = 0, set[int]()
    #: The subtasks still this worker's at the last lease renewal (None: none renewed yet).
    renewed: set[tuple[int, int]] | None = None

    def renew() -> bool:  # is the subtask running now still this worker's?
        nonlocal renewed
        renewed = renew_subtask_leases([run.claim for run in runs[ran:]])
        return runs[ran].claim.subtask in renewed

    def gone(run: SubtaskRun) -> bool:
        return run.claim.task_id in moved or (
            renewed is not None and run.claim.subtask not in renewed
        )

    beat = LeaseRenewal(renew, get_settings().lease_seconds / 3)
    first = runs[0]
    contexts, code = [run.context for run in runs], first.definition.python_path or ()
    outcomes = runner.run_many(
        first.algorithm, contexts, first.timeout, beat, code, first.scope, first.node.calls
    )
    pending: list[Ended] = []
    recorded_at = time.monotonic()
    try:
        for run, outcome in zip(runs, outcomes, strict=False):  # a stopped child ends it early
            ran += 1
            pending.append((run.claim, checked_outputs(run, outcome)))
            if beat.stopped or time.monotonic() - recorded_at >= RECORD_EVERY_SECONDS:
                moved |= _record_outcomes(pending, host, step, runs[ran:])
                pending, recorded_at = [], time.monotonic()
                if ran < len(runs) and step.messages:  # the others are not waited for
                    hand_over(step.messages)
                    step.messages = []
            if (moved or renewed is not None) and any(gone(later) for later in runs[ran:]):
                break
    finally:
        outcomes.close()  # a child still running what was sent ahead is not kept
    if pending:
        moved |= _record_outcomes(pending, host, step, runs[ran:])
    return [run for run in runs[ran:] if not gone(run)]


def _record_outcomes(
    ended: list[Ended], host: str, step: Step, rest: Sequence[SubtaskRun]
) -> set[int]:
    """Record outcomes (see ``finish_subtasks``), adding the failures recorded, ``task T
    subtask N: <error>``, and the messages called for to ``step``; the tasks that moved
    on, of these outcomes and of the ``rest`` of the message."""
    moved, messages = _finish_retrying(ended, host, [run.claim for run in rest])
    step.messages += messages
    step.failures += [
        f"task {claim.task_id} subtask {claim.index}: {outcome.error}"
        for claim, outcome in ended
        if not outcome.ok and claim.task_id not in moved
    ]
    return moved


@retrying(RECORD_OUTCOME_FOR_SECONDS)
def _finish_retrying(ended: list[Ended], host: str, rest: list[Claim]) -> Finished:
    """Record outcomes, riding out a database restart: rerunning the subtasks costs more."""
    return finish_subtasks(ended, host, rest)


def _claimed_rows(
    session: Session, claims: Iterable[Claim], *more: Any
) -> dict[tuple[int, int], Row[Any]]:
    """The rows of the subtasks these claims name, by (task, index), as plain columns (the
    id, dispatch and state that claiming and recording check, and ``more``)."""
    claims = list(claims)
    rows = session.execute(
        select(
            Subtask.id, Subtask.task_id, Subtask.index, Subtask.dispatch, Subtask.state, *more
        ).where(
            Subtask.task_id.in_(sorted({claim.task_id for claim in claims})),
            Subtask.index.in_(sorted({claim.index for claim in claims})),
        )
    )
    named = {claim.subtask for claim in claims}
    return {(row.task_id, row.index): row for row in rows if (row.task_id, row.index) in named}


def begin_subtasks(
    claims: Sequence[Claim], host: str = "", about_to_run: bool = True
) -> list[SubtaskRun]:
    """Claim the queued subtasks of one message in one transaction, in the message's order;
    those whose dispatch is stale or a duplicate, or whose task moved on, are left out.

    A message's subtasks are all claimed (RUNNING, with a lease) at once and run one after
    another; the worker renews the lease of every claimed subtask that has not finished,
    so a message that outlives the lease is not reclaimed while its worker lives, and the
    unfinished rest of a dead worker's message lapses and is reclaimed subtask by subtask.

    A subtask run again has the outputs of its earlier run cleared first, unless it is not
    ``about_to_run`` (a batch job ran it already: its outcome is being recorded).
    """
    with transaction() as session, history_in_bulk(session):
        attempts = {claim.task_id: claim.attempt for claim in claims}
        tasks = {
            task.id: task
            for task in lock_rows(session, Task, attempts).values()
            if is_current(task, attempts[task.id], *EXECUTION_STEPS)
        }
        wanted = {claim.subtask: claim for claim in claims if claim.task_id in tasks}
        rows = _claimed_rows(
            session, wanted.values(), Subtask.inputs, Subtask.started_at, Subtask.finished_at
        )
        claimed = {
            key: row
            for key, row in rows.items()
            if (row.dispatch, row.state) == (wanted[key].number, SubtaskState.QUEUED)
        }
        if len(claimed) < len(claims):
            log.info(
                "%d of %d subtask dispatches stale or duplicate (tasks %s)",
                len(claims) - len(claimed),
                len(claims),
                sorted(attempts),
            )
        if claimed:  # one statement: the rows are not loaded as objects (a batch is 100)
            now = utcnow()
            session.execute(
                update(Subtask)
                .where(Subtask.id.in_([row.id for row in claimed.values()]))
                .values(
                    state=SubtaskState.RUNNING,
                    attempts=Subtask.attempts + 1,
                    worker_host=host,
                    worker_pid=os.getpid(),
                    started_at=now,
                    heartbeat_at=now,
                    finished_at=None,
                    error="",
                )
                .execution_options(synchronize_session=False)
            )
        by_task: dict[int, list[tuple[Row[Any], Claim]]] = {}  # in the message's order
        for key, claim in wanted.items():
            if key in claimed:
                by_task.setdefault(claim.task_id, []).append((claimed[key], claim))
        instances: dict[int, PipelineInstance] = {}  # held: the session keeps rows weakly
        given: dict[int, dict[int, list[tuple[str, str, int]]]] = {}
        for task_id, claimed_rows in by_task.items():
            if about_to_run:  # the versions of those with no directory yet (never run)
                task_dir = Path(tasks[task_id].task_dir)
                indices = [
                    row.index
                    for row, _ in claimed_rows
                    if not os.path.isdir(taskdir.subtask_dir(task_dir, row.index))
                ]
                given[task_id] = (
                    datastore_ledger.versions_given(
                        session, task_id, tasks[task_id].attempt, indices
                    )
                    if indices
                    else {}
                )
            task = tasks[task_id]
            count_subtasks(task, SubtaskState.QUEUED, SubtaskState.RUNNING, len(claimed_rows))
            # Run before: its last run is no longer one (its end is cleared above).
            count_runs(task, [(row.started_at, row.finished_at) for row, _ in claimed_rows], -1)
            if task.p_state == PState.ALGORITHM_QUEUED:
                move(session, task, Event.STARTED, host=host)
            if task.instance_id not in instances:
                instances[task.instance_id] = session.get(PipelineInstance, task.instance_id)

    # Read from the rows once the transaction ends: its locks are held no longer than needed.
    runs = []
    for task_id, subtasks in by_task.items():
        task = tasks[task_id]
        runs += _subtask_runs(instances[task.instance_id], task, subtasks, given.get(task_id))
    return runs


def _subtask_runs(
    instance: PipelineInstance,
    task: Task,
    subtasks: list[tuple[Row[Any], Claim]],
    given: dict[int, list[tuple[str, str, int]]] | None,
) -> list[SubtaskRun]:
    """What a worker needs to run each of a task's claimed subtasks; with the versions
    ``given`` them (when they are about to run), their directories made first."""
    definition = instance_definition(instance)
    node = definition.node(task.node)
    by_set = node_parameter_sets(instance, definition, task.node)
    parameters = node_parameters(instance, definition, task.node)
    run = partial(
        SubtaskRun,
        algorithm=node.model_dump(mode="json")["algorithm"],
        timeout=task.settings.subtask_timeout,
        definition=definition,
        node=node,
        require_outputs=task.settings.require_outputs,
        scope=(get_settings().db_url, instance.id, task.node),
        datastore=str(get_settings().datastore),
    )
    runs, task_dir = [], Path(task.task_dir)
    pins = model_registry.node_pins(instance, node)
    models = {kind: pin["name"] for kind, pin in pins.items()}
    event = event_fields(instance.event)
    unready = subtask_directories(task, given, pins) if given is not None else {}
    for subtask, claim in subtasks:
        directory = taskdir.subtask_dir(task_dir, subtask.index)
        if claim.number > 1 and given is not None:  # run before: its outputs may be kept now
            clear_outputs(definition, node, directory, [*subtask.inputs, *models.values()])
        context = SubtaskContext(
            directory=directory,
            inputs=[directory / name for name in subtask.inputs],
            parameters=parameters,
            index=subtask.index,
            unit_of_work=task.unit_of_work,
            node=task.node,
            models={kind: directory / name for kind, name in models.items()},
            parameter_sets=by_set,
            memory_limit=node.subtask_memory,
            **event,
        )
        inputs = [*subtask.inputs, *models.values()]
        runs.append(
            run(context=context, claim=claim, inputs=inputs, unready=unready.get(subtask.index, ""))
        )
    return runs


def subtask_directories(
    task: Task, given: dict[int, list[tuple[str, str, int]]], pins: dict[str, Any]
) -> dict[int, str]:
    """Make the directories of the task's subtasks ``given`` these versions (path, SHA-256,
    size, by subtask index: ``datastore_ledger.versions_given``) that have none yet, each
    with their bytes and the pinned models (``taskdir.build``); why, by index, for those
    that could not be made. Done by the worker about to run them, not by the marshal."""
    root = get_settings().datastore
    models = model_registry.given(root, pins)
    unready = {}
    for index, versions in given.items():
        inputs = (
            (datastore.version_bytes(root, path, sha256, size), path.rsplit("/", 1)[-1])
            for path, sha256, size in versions
        )
        try:
            taskdir.build(taskdir.subtask_dir(Path(task.task_dir), index), chain(inputs, models))
        except (OSError, PipelineError) as exc:
            unready[index] = f"its inputs could not be given: {exc}"
    return unready


def clear_outputs(definition: Definition, node: Node, directory: Path, inputs: list[str]) -> None:
    """Remove what an earlier run of a subtask left as outputs before it runs again: once
    kept (``checked_outputs``), an output is a link to stored bytes, which an algorithm
    writing the same name in place would change. The stored bytes keep their own link."""
    with suppress(FileNotFoundError):
        for _, file in output_names(definition, node, directory, inputs):
            with suppress(FileNotFoundError):
                os.unlink(directory / file)


def instance_definition(instance: PipelineInstance) -> Definition:
    """The instance's parsed definition, parsed once per worker process (see the cache)."""
    key = (get_settings().db_url, instance.id)
    if key not in _definitions:
        if len(_definitions) >= DEFINITION_CACHE_SIZE:
            del _definitions[next(iter(_definitions))]
        _definitions[key] = parse(instance.definition)
    return _definitions[key]


def finish_subtasks(ended: Sequence[Ended], host: str = "", rest: Sequence[Claim] = ()) -> Finished:
    """Record outcomes with their tasks' counts in one transaction; with a task's last
    outcome, monitor's decision is taken in it too (ALGORITHM_COMPLETE, then STORING or the
    error flag, each in the task's history), and the instance state refreshed once.

    Each subtask's outcome is still its own (a failed subtask of a batch is failed alone,
    and a resubmit reruns only it); only the transaction is shared, by a batch's subtasks
    or by the tasks of a shared message. Returns the tasks that moved on (another
    attempt), of these outcomes and of the ``rest`` of the message (claims not run yet):
    the rest of their subtasks in the message must not start; and the messages called
    for.
    """
    by_task: dict[int, list[Ended]] = {}
    for claim, outcome in ended:
        by_task.setdefault(claim.task_id, []).append((claim, outcome))
    step = Step()
    with step.transaction() as (session, messages), history_in_bulk(session):
        alerting = {
            claim.task_id for claim, outcome in ended if outcome.ok and outcome.outputs == 0
        }
        instances = _instances_to_lock(session, {t: len(e) for t, e in by_task.items()}, alerting)
        tasks = lock_rows(session, Task, by_task)
        subtasks = _claimed_rows(session, [claim for claim, _ in ended], Subtask.started_at)
        changes: list[dict[str, Any]] = []
        kept: dict[int, list[tuple[int, list[list[Any]]]]] = {}
        moved: set[int] = set()
        counted: list[Task] = []
        for task_id in sorted(by_task):
            task, attempt = tasks[task_id], by_task[task_id][0][0].attempt
            if task.attempt != attempt:
                log.info(
                    "task %s: ignoring %d outcomes from attempt %s",
                    task_id,
                    len(by_task[task_id]),
                    attempt,
                )
                moved.add(task_id)
            elif _count_outcomes(session, task, by_task[task_id], subtasks, changes, kept, host):
                counted.append(task)
        # Written before any decision: an automatic resubmit requeues the failed subtasks.
        _write_outcomes(session, changes)
        for task in counted:
            if kept.get(task.id):
                _record_kept(session, task, kept[task.id])
        failed: dict[int, PipelineInstance] = {}
        for task in counted:
            done = task.completed_subtasks + task.failed_subtasks >= task.total_subtasks
            if not done or task.error or task.p_state not in EXECUTION_STEPS:
                continue
            counts = f"{task.completed_subtasks} completed, {task.failed_subtasks} failed"
            move(session, task, Event.ENDED, counts, host)
            instance = instances.get(task.instance_id)
            if instance is None:  # the peek missed: monitor decides in its own transaction
                send_waiting(messages, task)
                continue
            _decide(session, instance, task, messages, host, refresh=False)
            if task.error:
                failed[instance.id] = instance
        for instance in failed.values():
            refresh_instance_state(session, instance)
        moved |= _moved_on(session, [claim for claim in rest if claim.task_id not in by_task])
    return Finished(moved, step.messages)


def _moved_on(session: Session, claims: Sequence[Claim]) -> set[int]:
    """The tasks of these claims that are at another attempt now (halted, restarted)."""
    if not claims:
        return set()
    attempts = {claim.task_id: claim.attempt for claim in claims}
    current = session.execute(select(Task.id, Task.attempt).where(Task.id.in_(attempts)))
    return {task_id for task_id, attempt in current if attempt != attempts[task_id]}


def _count_outcomes(
    session: Session,
    task: Task,
    ended: list[Ended],
    subtasks: dict[tuple[int, int], Row[Any]],
    changes: list[dict[str, Any]],
    kept: dict[int, list[tuple[int, list[list[Any]]]]],
    host: str,
) -> int:
    """Count one locked task's outcomes on it, adding the changes of its subtasks' rows to
    ``changes`` (written together, see ``_write_outcomes``) and the outputs they kept to
    ``kept`` (by task); how many were still awaited (an outcome of another dispatch, or
    of a subtask no longer running, is stale)."""
    now, recorded, runs = utcnow(), 0, []
    for claim, outcome in ended:
        subtask = subtasks[claim.subtask]
        if subtask.dispatch != claim.number or subtask.state != SubtaskState.RUNNING:
            log.info(
                "subtask %s/%s: outcome of run %s is stale", task.id, subtask.index, claim.number
            )
            continue
        recorded += 1
        if outcome.ok and outcome.outputs == 0:
            _no_output(session, task, subtask.index, host)
        if outcome.ok and outcome.kept:
            kept.setdefault(task.id, []).append((subtask.index, outcome.kept))
        state = SubtaskState.COMPLETE if outcome.ok else SubtaskState.FAILED
        count_subtasks(task, SubtaskState.RUNNING, state)
        runs.append((subtask.started_at, now))
        changes.append(
            {
                "row_id": subtask.id,
                "row_state": state,
                "row_error": outcome.error,
                "row_outputs": outcome.outputs,
                "row_kept": outcome.kept,
                "row_finished": now,
            }
        )
    if recorded:
        task.updated_at = now
        count_runs(task, runs)
    return recorded


def _record_kept(session: Session, task: Task, kept: list[tuple[int, list[list[Any]]]]) -> None:
    """The outputs the locked task's subtasks kept as they ended, recorded as being placed
    by its store (``datastore_ledger.record_kept``) with their outcomes, in parallel on
    every worker: the store, at the end and alone, then places them."""
    instance = session.get_one(PipelineInstance, task.instance_id)  # no query once locked
    definition = instance_definition(instance)
    node = definition.node(task.node)
    directories = output_directories(definition, node, task.unit_of_work)
    datastore_ledger.record_kept(session, instance, task, node, directories, kept)


def _write_outcomes(session: Session, changes: list[dict[str, Any]]) -> None:
    """The subtasks' rows of the outcomes recorded, in one statement."""
    if not changes:  # an executemany of no rows would run once, with no values
        return
    table = Subtask.__table__
    session.execute(
        update(table)
        .where(table.c.id == bindparam("row_id"))
        .values(
            state=bindparam("row_state"),
            error=bindparam("row_error"),
            outputs=bindparam("row_outputs"),
            kept=bindparam("row_kept"),
            finished_at=bindparam("row_finished"),
        ),
        changes,
    )


def _instances_to_lock(
    session: Session, outcomes: dict[int, int], alerting: set[int]
) -> dict[int, PipelineInstance]:
    """The instances, locked, of the tasks these outcomes (a count per task) look like the
    last of (read unlocked), and of the ``alerting`` tasks: then monitor's decision is
    taken in the same transaction, saving one per task, and an alert (whose row refers to
    its instance, a lock on PostgreSQL) takes no instance lock after the task rows.

    Instance rows are locked before task rows, in every transaction, so they must be
    locked before the tasks are; a peek that misses (another worker's outcomes came in
    meanwhile) only leaves the decision to a monitor stage of its own, as before.
    """
    ending = {
        instance_id
        for task_id, instance_id, total, ended in session.execute(
            select(
                Task.id,
                Task.instance_id,
                Task.total_subtasks,
                Task.completed_subtasks + Task.failed_subtasks,
            ).where(Task.id.in_(outcomes))
        )
        if ended + outcomes[task_id] >= total or task_id in alerting
    }
    return lock_rows(session, PipelineInstance, ending) if ending else {}


def _no_output(session: Session, task: Task, index: int, host: str) -> None:
    """Ziggy's warning for a subtask that succeeded but stored nothing: downstream, its
    files are simply absent, and the operator hears of it."""
    note(session, task, f"subtask {index} produced no output", host)
    raise_alert(session, task, WARNING, f"task {task.id} subtask {index} produced no output")


# -- monitor ---------------------------------------------------------------------------------


def monitor(task_id: int, attempt: int, host: str = "") -> Step:
    """All subtasks have ended: store, resubmit automatically, or set the error flag."""
    step = Step()
    with step.transaction() as (session, messages):
        instance, task = lock_task(session, task_id)
        if is_current(task, attempt, PState.ALGORITHM_COMPLETE):
            _decide(session, instance, task, messages, host)
    return step


def _decide(
    session: Session,
    instance: PipelineInstance,
    task: Task,
    messages: Outbox,
    host: str,
    refresh: bool = True,
) -> None:
    """Monitor's decision for a locked task whose subtasks have all ended: store, resubmit
    automatically, or set the error flag (and refresh the instance state, unless the
    caller does it once for many tasks)."""
    settings = task.settings
    if task.failed_subtasks <= settings.max_failed_subtasks:
        move(session, task, Event.ACCEPTED, host=host)
        send_waiting(messages, task)
    elif task.auto_resubmits < settings.max_auto_resubmits:
        note = f"automatic resubmit {task.auto_resubmits + 1}"
        move(session, task, Event.RESUBMITTED, note, host)
        reset_subtasks(session, task, UNFINISHED)
        task.auto_resubmits += 1
        queue_subtasks(session, [task], messages, host)
    else:
        message = (
            f"{task.failed_subtasks} of {task.total_subtasks} subtasks failed"
            f" (max_failed_subtasks = {settings.max_failed_subtasks})"
        )
        move(session, task, Event.FAILED, message, host, instance=instance, refresh=refresh)


# -- store -----------------------------------------------------------------------------------


def store(task_id: int, attempt: int, host: str = "") -> Step:
    """Put the outputs of the successful subtasks in the datastore, each recorded with its
    producer; the task is COMPLETE.

    Each subtask kept its outputs in the object store (hashed) as it ended, and they were
    recorded as being placed with its outcome (``finish_subtasks``); here, outside any
    transaction, they are linked at their paths (those not recorded so are kept and
    recorded first), then made current by the transaction that records the task COMPLETE
    (``datastore_ledger.record_stored``): a stale or duplicate store changes no version,
    and what it placed is put back.
    """
    first = Step()
    with first.transaction() as (session, messages):
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, PState.STORING):
            return first
        definition = instance_definition(instance)
        node = definition.node(task.node)
        if not node.outputs:  # nothing to place: the store is its last transaction alone
            _complete(session, messages, instance, task, node, [], host)
            return first
        unit, task_dir = task.unit_of_work, Path(task.task_dir)
        models = [pin["name"] for pin in model_registry.node_pins(instance, node).values()]
        # Recorded as their subtasks ended (``finish_subtasks``), in this attempt; the
        # others (ended in another attempt, or run by an older worker) are kept here.
        recorded = datastore_ledger.pending(session, task_id, attempt)
        complete = (Subtask.task_id == task_id, Subtask.state == SubtaskState.COMPLETE)
        indexes = set(session.scalars(select(Subtask.index).where(*complete)))
        indexes -= {row.subtask_index for row in recorded}
        others = []
        if indexes:
            query = select(Subtask.index, Subtask.inputs, Subtask.kept).where(*complete)
            others = [row for row in session.execute(query) if row.index in indexes]
    staged: list[datastore_ledger.StoredOutput] = []
    root = get_settings().datastore
    try:
        datastore.require(root)
        # The subtasks' bytes, all written before the store began, are flushed to disk
        # while the store places them: on disk before any is made current.
        with (
            StepLease(task_id, attempt, PState.STORING),
            datastore.flushing(root, bool(recorded or others)),
        ):
            directories = output_directories(definition, node, unit)

            def subtask_dir(index: int) -> str:
                return f"{task_dir}/{taskdir.SUBTASK_DIR_FORMAT.format(index=index)}"

            # Outputs recorded as their subtasks ended are placed as recorded; one whose
            # bytes went since (retention) is kept again, under a row of its own.
            gone: list[int] = []
            unkept: list[datastore_ledger.StoredOutput] = []
            for row in recorded:
                copy = datastore.staged_kept(root, row.path, row.sha256, row.size, row.mtime_ns)
                output = (row.subtask_index, row.data_file_type)
                if copy is not None:
                    staged.append(datastore_ledger.StoredOutput(*output, copy))
                    continue
                gone.append(row.id)
                source = f"{subtask_dir(row.subtask_index)}/{os.path.basename(row.path)}"
                copy = datastore.stage_file(root, source, row.path)
                unkept.append(datastore_ledger.StoredOutput(*output, copy))
            for index, inputs, kept in others:
                directory = subtask_dir(index)
                for name, file, *version in kept or output_names(
                    definition, node, directory, [*inputs, *models]
                ):
                    path = f"{directories[name]}/{file}"
                    copy = datastore.staged_kept(root, path, *version) if version else None
                    if copy is None:  # kept by an older worker, or gone since: keep it now
                        copy = datastore.stage_file(root, f"{directory}/{file}", path)
                    unkept.append(datastore_ledger.StoredOutput(index, name, copy))
            staged += unkept
            if unkept or gone:
                with transaction() as session:
                    instance, task = lock_task(session, task_id)
                    if not is_current(task, attempt, PState.STORING):
                        return Step()
                    datastore_ledger.forget_pending(session, gone)
                    datastore_ledger.record_pending(session, instance, task, node, unkept)
            datastore_ledger.place_pending(staged)
        if unkept:  # kept here, perhaps as copies written while the flush ran
            datastore.flush(root)
        return _stored(task_id, attempt, node, staged, host)
    except Unreachable:
        # The database or broker is away: Celery retries the store, as any step, and the
        # retry places what this one recorded (or the reconciler withdraws it).
        raise
    except (OSError, PipelineError) as exc:
        with transaction() as session:
            datastore_ledger.withdraw_pending(session, root, task_id, attempt)
        return _fail_step(task_id, attempt, PState.STORING, f"storing failed: {exc}", host)


def _stored(
    task_id: int,
    attempt: int,
    node: Node,
    staged: list[datastore_ledger.StoredOutput],
    host: str,
) -> Step:
    """The last transaction of a store, once its outputs are placed (``_complete``); a
    store whose task moved on meanwhile puts back what it placed."""
    step = Step()
    with step.transaction() as (session, messages):
        instance, task = lock_task(session, task_id)
        if not is_current(task, attempt, PState.STORING):
            datastore_ledger.withdraw_pending(session, get_settings().datastore, task_id, attempt)
            return step
        _complete(session, messages, instance, task, node, staged, host)
    return step


def _complete(
    session: Session,
    messages: Outbox,
    instance: PipelineInstance,
    task: Task,
    node: Node,
    staged: list[datastore_ledger.StoredOutput],
    host: str,
) -> None:
    """In a store's last transaction: the placed outputs made current, the task
    COMPLETE, what it leaves stale marked, the instance advanced."""
    if node.outputs:
        root = get_settings().datastore
        datastore_ledger.record_stored(session, root, instance, task, node, staged)
    move(
        session,
        task,
        Event.STORED,
        f"stored {counted(len(staged), 'file')}",
        host,
        instance=instance,
    )
    if node.outputs:  # no task consumed anything of a node that stores nothing
        staleness.after_store(session, instance, task)
    advance_within(session, instance, messages)
    staleness.rerun_ready(session, instance, messages, host)


def output_directories(definition: Definition, node: Node, unit: str) -> dict[str, str]:
    """Each output type of ``node`` mapped to its directory in ``unit`` (datastore paths)."""
    types = definition.data_file_types
    return {name: types[name].directory(unit) for name in node.outputs}


def output_names(
    definition: Definition, node: Node, directory: Path | str, inputs: Sequence[str]
) -> list[tuple[str, str]]:
    """The files of ``node``'s output types a subtask left in ``directory`` (its inputs
    excepted), as (data file type, file name): one listing each (a store lists 10,000)."""
    # One listing of the directory, not a glob per type: a store reads 10,000 of them.
    with os.scandir(directory) as entries:
        files = sorted(
            entry.name
            for entry in entries
            if entry.name not in inputs and entry.is_file(follow_symlinks=False)
        )
    found = []
    for name in node.outputs:
        kind = definition.data_file_types[name]
        found += [(name, file) for file in files if kind.matches(file)]
    return found
