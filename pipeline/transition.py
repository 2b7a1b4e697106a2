"""Node transitions: when every task of a node is COMPLETE, create its children's tasks.

The instance row is locked while a transition runs and each node's state moves
PENDING -> RUNNING -> DONE only once, so child tasks are created exactly once however
many duplicate store messages finish at the same moment.
"""

from __future__ import annotations

import logging
from pathlib import Path

from sqlalchemy import exists, select
from sqlalchemy.orm import Session

from config.settings import get_settings
from pipeline import datastore, dispatch
from pipeline.definitions import Definition, parse
from pipeline.errors import InvalidInput, PipelineError, Unreachable
from pipeline.models import InstanceNode, PipelineInstance, Task, utcnow
from pipeline.states import InstanceState, NodeState, PState
from pipeline.tasks import locked_instance, refresh_instance_state

log = logging.getLogger(__name__)


def create_node_tasks(
    session: Session, instance: PipelineInstance, definition: Definition, node_name: str, root: Path
) -> list[Task]:
    """One task per unit of work the datastore holds for the node's inputs."""
    node = definition.node(node_name)
    units = datastore.units_of_work(root, definition, node)
    if not units:
        raise InvalidInput(
            f"node {node_name!r} finds no {datastore.describe_inputs(definition, node)} in {root}"
        )
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
    return tasks


def advance(instance_id: int) -> None:
    """Mark finished nodes DONE and start every node whose parents are all DONE.

    A failure to create the child tasks (no inputs in the datastore, say) puts the
    instance in TRANSITION_FAILED with the reason; restarting it retries the transition.
    """
    try:
        with locked_instance(instance_id) as (session, instance):
            if instance.state == InstanceState.TRANSITION_FAILED:
                return
            created = _advance(session, instance)
            refresh_instance_state(session, instance)
            plan = [(task.id, task.attempt, dict(task.execution)) for task in created]
    except Unreachable:
        raise
    except (PipelineError, OSError) as exc:
        log.warning("instance %s: transition failed: %s", instance_id, exc)
        with locked_instance(instance_id) as (session, instance):
            instance.state = InstanceState.TRANSITION_FAILED
            instance.message = f"transition failed: {exc}"
            instance.updated_at = utcnow()
        return
    for task_id, attempt, execution in plan:
        dispatch.send(dispatch.MARSHAL, [task_id, attempt], execution)


def _advance(session: Session, instance: PipelineInstance) -> list[Task]:
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
    created: list[Task] = []
    graph = definition.graph()
    root = datastore.require(get_settings().datastore)
    for name in definition.order():
        row = nodes.get(name)
        parents = graph[name] & nodes.keys()
        if (
            row
            and row.state == NodeState.PENDING
            and parents
            and all(nodes[parent].state == NodeState.DONE for parent in parents)
        ):
            created += create_node_tasks(session, instance, definition, name, root)
    return created


def _unfinished(session: Session, instance_id: int, node: str) -> bool:
    return bool(
        session.scalar(
            select(
                exists(
                    select(Task).where(
                        Task.instance_id == instance_id,
                        Task.node == node,
                        (Task.p_state != PState.COMPLETE) | Task.error,
                    )
                )
            )
        )
    )
