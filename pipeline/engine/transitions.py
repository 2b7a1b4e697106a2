"""Node transitions (Ziggy's doTransition): when every task of a node is COMPLETE, create
its children's tasks.

The instance row is locked while a transition runs and each node's state moves
PENDING -> RUNNING -> DONE only once, so child tasks are created exactly once however
many duplicate store messages finish at the same moment.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from pipeline.domain.definitions import Definition, Node, parse
from pipeline.domain.models import InstanceNode, PipelineInstance, Task, utcnow
from pipeline.domain.states import InstanceState, NodeState
from pipeline.engine import datastore, datastore_ledger, deliveries, model_registry, taskdir
from pipeline.engine.alerts import WARNING, raise_alert_about
from pipeline.engine.locks import lock_instance
from pipeline.engine.task_state import note, refresh_instance_state, send_waiting
from pipeline.errors import InvalidInput, PipelineError, Unreachable
from pipeline.messaging import outbox
from pipeline.messaging.outbox import Outbox
from pipeline.settings import get_settings

log = logging.getLogger(__name__)


def create_node_tasks(
    session: Session,
    instance: PipelineInstance,
    definition: Definition,
    node_name: str,
    root: Path,
    messages: Outbox,
) -> list[Task]:
    """One task per unit of work the datastore holds for the node's inputs, each with its
    marshal message in ``messages``. A node with several parents in the instance runs for
    the units every parent has a task for (``units: intersection``, the default) or any
    has (``union``); the units skipped are written in each task's history."""
    node = definition.node(node_name)
    found = _units_of_work(root, definition, node)
    units = found if node.receives else chosen_units(instance, found)
    skipped = _skipped_units(session, instance, node, units)
    units = [unit for unit in units if unit not in skipped]
    if not units:
        why = f"finds no {datastore.describe_inputs(definition, node)} in {root}"
        if node.receives:
            why = (
                f"finds no delivery waiting in {get_settings().receipt} (files and a manifest"
                " at its top, or in a subdirectory each)"
            )
        if skipped:
            why = f"has no unit every parent has a task for ({_skipped_line(skipped)})"
        elif found:
            why = f"has none of its units ({', '.join(found[:10])}) {units_choice(instance)}"
        raise InvalidInput(f"node {node_name!r} {why}")
    execution = node.execution.model_dump()
    if instance.priority is not None:
        execution["priority"] = instance.priority
    tasks = [
        Task(instance_id=instance.id, node=node_name, unit_of_work=unit, execution=execution)
        for unit in units
    ]
    session.add_all(tasks)
    state = session.scalars(
        select(InstanceNode).where(
            InstanceNode.instance_id == instance.id, InstanceNode.node == node_name
        )
    ).one()
    state.state = NodeState.RUNNING
    session.flush()
    for task in tasks:
        if skipped:
            note(session, task, f"units skipped: {_skipped_line(skipped)}")
        send_waiting(messages, task)
    return tasks


@dataclass(frozen=True)
class PlannedTask:
    """A task a submit would create (``submit --dry-run``, Ziggy's task information)."""

    unit_of_work: str
    #: None: its inputs are what its parents in the instance store, counted once they do.
    subtasks: int | None


def plan_tasks(
    session: Session,
    instance: PipelineInstance,
    definition: Definition,
    nodes: list[str],
    root: Path,
) -> dict[str, list[PlannedTask]]:
    """Every node's tasks, in order, as the datastore stands now and as the instance's
    parents would add to it: a node's units are those found for its first input type and
    those its parents producing its inputs have tasks for (every parent's, for
    ``units: intersection``), as the instance chooses them; subtasks are counted by the
    marshal's rules where no parent in the instance makes the inputs."""

    def subtasks(node: Node, unit: str) -> int:
        """How many subtasks a task of ``node`` on ``unit`` would have, inputs chosen now."""
        try:
            chosen = datastore_ledger.select_inputs(
                session, root, instance, definition, node, unit
            ).files
        except InvalidInput:
            return 0
        paired = taskdir.pairing(definition, node, [(c.data_file_type, c.path) for c in chosen])
        return len(taskdir.split(chosen, node, paired))

    planned: dict[str, list[PlannedTask]] = {}
    for name in nodes:
        node = definition.node(name)
        parents = [parent for parent in node.after if parent in planned]
        units = set(_units_of_work(root, definition, node))
        making = [p for p in parents if set(definition.node(p).outputs) & set(node.inputs)]
        for parent in making:
            units |= {task.unit_of_work for task in planned[parent]}
        if node.units == "intersection" and len(making) > 1:
            for parent in making:
                units &= {task.unit_of_work for task in planned[parent]}
        # After a data receipt, what its deliveries hold is in the datastore.
        unknown = making or any(definition.node(p).receives for p in parents)
        planned[name] = [
            PlannedTask(unit, 0 if node.receives else None if unknown else subtasks(node, unit))
            for unit in (sorted(units) if node.receives else chosen_units(instance, sorted(units)))
        ]
    return planned


def _units_of_work(root: Path, definition: Definition, node: Node) -> list[str]:
    """The node's units of work: the deliveries waiting for a data receipt node, else those
    of its inputs in the datastore."""
    if node.receives:
        return deliveries.waiting(get_settings().receipt)
    return datastore.units_of_work(root, definition, node)


def chosen_units(instance: PipelineInstance, units: list[str]) -> list[str]:
    """Of ``units``, those the instance runs for: those it was started for (by an event,
    say), matching its ``--units`` regexp and not its ``--exclude`` one (whole names, as
    Ziggy's include and exclude regexps)."""
    if instance.units is not None:
        units = [unit for unit in units if unit in instance.units]
    if instance.units_regexp is not None:
        units = [unit for unit in units if re.fullmatch(instance.units_regexp, unit)]
    if instance.units_exclude is not None:
        units = [unit for unit in units if not re.fullmatch(instance.units_exclude, unit)]
    return units


def units_choice(instance: PipelineInstance) -> str:
    """The instance's choice of units, as an operator reads it ("" when it has none)."""
    said = []
    if instance.units is not None:
        said.append(f"among {', '.join(instance.units)}")
    if instance.units_regexp is not None:
        said.append(f"matching {instance.units_regexp!r}")
    if instance.units_exclude is not None:
        said.append(f"not matching {instance.units_exclude!r}")
    return " and ".join(said)


def _skipped_units(
    session: Session, instance: PipelineInstance, node: Node, units: list[str]
) -> dict[str, list[str]]:
    """Of ``units``, those some parent of ``node`` in this instance has no task for, each
    with those parents (none skipped for one parent, or with ``units: union``)."""
    if node.units == "union" or len(node.after) < 2:
        return {}
    by_parent: dict[str, set[str]] = {}
    for parent, unit in session.execute(
        select(Task.node, Task.unit_of_work).where(
            Task.instance_id == instance.id, Task.node.in_(node.after)
        )
    ):
        by_parent.setdefault(parent, set()).add(unit)
    if len(by_parent) < 2:
        return {}
    return {
        unit: sorted(parent for parent, has in by_parent.items() if unit not in has)
        for unit in units
        if any(unit not in has for has in by_parent.values())
    }


def _skipped_line(skipped: dict[str, list[str]]) -> str:
    return "; ".join(
        f"{unit} (no task of {', '.join(map(repr, parents))})" for unit, parents in skipped.items()
    )


def advance_within(
    session: Session, instance: PipelineInstance, messages: Outbox
) -> dict[str, list[Task]]:
    """In the caller's transaction, holding the instance row's lock: mark finished nodes
    DONE and create the tasks of every node whose parents are all DONE.

    A failure to create them (no inputs in the datastore, say) puts the instance in
    TRANSITION_FAILED with the reason, in the same transaction, and sends nothing;
    restarting the instance retries the transition. The tasks created, by node.
    """
    if instance.state == InstanceState.TRANSITION_FAILED:
        return {}
    try:
        with session.begin_nested(), messages.savepoint():
            created = _advance(session, instance, messages)
    except Unreachable:
        raise
    except (PipelineError, OSError) as exc:
        log.warning("instance %s: transition failed: %s", instance.id, exc)
        instance.state = InstanceState.TRANSITION_FAILED
        instance.message = f"transition failed: {exc}"
        instance.updated_at = utcnow()
        return {}
    refresh_instance_state(session, instance)
    return created


def advance(instance_id: int, recovered: bool = False) -> None:
    """Run a transition in a transaction of its own (a restart; beat's reconciler, which
    says ``recovered``: tasks it creates were a transition lost, written in their history
    and one alert about the instance)."""
    with outbox.transaction() as (session, messages):
        instance = lock_instance(session, instance_id)
        created = advance_within(session, instance, messages)
        if recovered and created:
            said = (
                f"transition recovered by the reconciler: tasks of {', '.join(created)}"
                " created (its parents were done)"
            )
            tasks = [task for made in created.values() for task in made]
            for task in tasks:
                note(session, task, said)
            raise_alert_about(
                session,
                instance_id,
                tasks[0].id,
                WARNING,
                f"instance {instance_id}: {said}: {len(tasks)} tasks",
            )


def _advance(
    session: Session, instance: PipelineInstance, messages: Outbox
) -> dict[str, list[Task]]:
    definition = parse(instance.definition)
    nodes = {
        row.node: row
        for row in session.scalars(
            select(InstanceNode).where(InstanceNode.instance_id == instance.id)
        )
    }
    for name, row in nodes.items():
        if row.state == NodeState.RUNNING and not _unfinished(session, instance.id, name):
            row.state = NodeState.DONE
            if definition.node(name).receives:  # Ziggy's: the models it received are used
                chosen = model_registry.chosen_by(instance)
                instance.models = model_registry.pin(session, definition, nodes, chosen)
    graph = definition.graph()
    created: dict[str, list[Task]] = {}
    for name in definition.order():
        row = nodes.get(name)
        parents = graph[name] & nodes.keys()
        if (
            row
            and row.state == NodeState.PENDING
            and parents
            and all(nodes[parent].state == NodeState.DONE for parent in parents)
        ):
            root = datastore.require(get_settings().datastore)
            created[name] = create_node_tasks(session, instance, definition, name, root, messages)
    return created


def _unfinished(session: Session, instance_id: int, node: str) -> bool:
    return bool(
        session.scalar(
            select(
                exists(
                    select(Task).where(
                        Task.instance_id == instance_id,
                        Task.node == node,
                        ~Task.done,
                    )
                )
            )
        )
    )
