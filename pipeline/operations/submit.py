"""Submitting a pipeline instance: freeze definition and parameters, start the first nodes."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain import definitions, parameters
from pipeline.domain.definitions import Definition
from pipeline.domain.limits import check_priority
from pipeline.domain.models import InstanceNode, PipelineDefinition, PipelineInstance
from pipeline.engine import batch_cost, datastore, model_registry
from pipeline.engine.transitions import PlannedTask, create_node_tasks, plan_tasks
from pipeline.errors import InvalidInput, Unreachable, shown
from pipeline.messaging import outbox
from pipeline.messaging.publisher import publisher
from pipeline.operations import environments
from pipeline.settings import get_settings


@dataclass
class Submitted:
    id: int
    pipeline: str
    state: str
    tasks: list[int]
    #: Why its messages wait for the reconciler (the broker refused them after commit).
    queued: str = ""
    #: The nodes it runs, in order, and the units of work of the first ones' tasks.
    nodes: list[str] = field(default_factory=list)
    #: The pipeline's nodes it does not run (outside its start and end nodes).
    left_out: list[str] = field(default_factory=list)
    units: dict[str, list[str]] = field(default_factory=dict)
    #: The parameter set versions it freezes.
    parameter_sets: dict[str, int] = field(default_factory=dict)
    #: The model versions it pins, by model type.
    models: dict[str, str] = field(default_factory=dict)
    #: Each node on a batch system: what it is expected to take (a dry run's).
    batch_estimates: list[batch_cost.Estimate] = field(default_factory=list)
    #: A dry run's tasks of every node it runs (``plan_tasks``).
    planned: dict[str, list[PlannedTask]] = field(default_factory=dict)


def check_regexp(option: str, regexp: str | None) -> None:
    """Refuse in one line a ``--units``/``--exclude`` that is no regular expression."""
    if regexp is None:
        return
    if not regexp or len(regexp) > 500:
        raise InvalidInput(f"{option}: give a regular expression of 1 to 500 characters")
    try:
        re.compile(regexp)
    except re.error as exc:
        raise InvalidInput(f"{option} {shown(regexp)}: not a regular expression ({exc})") from None


def _nothing(_: outbox.Outbox) -> None:
    """A dry run's messages go nowhere."""


def select_nodes(definition: Definition, start: str | None, end: str | None) -> list[str]:
    """The nodes an instance runs: those downstream of ``start`` and upstream of ``end``."""
    graph = definition.graph()
    children = {name: set(definition.children(name)) for name in graph}
    downstream = _closure(start, children) if start else set(graph)
    upstream = _closure(end, graph) if end else set(graph)
    if start:
        definition.node(start)
    if end:
        definition.node(end)
    chosen = downstream & upstream
    if not chosen:
        raise InvalidInput(f"node {shown(end)} is not downstream of node {shown(start)}")
    return [name for name in definition.order() if name in chosen]


def _parse(stored: PipelineDefinition) -> Definition:
    return definitions.parse(stored.spec, stored.version)


def _closure(name: str, edges: dict[str, set[str]]) -> set[str]:
    if name not in edges:
        return set()
    seen, todo = {name}, [name]
    while todo:
        for other in edges[todo.pop()]:
            if other not in seen:
                seen.add(other)
                todo.append(other)
    return seen


def submit(
    pipeline: str,
    start_node: str | None = None,
    end_node: str | None = None,
    priority: int | None = None,
    dry_run: bool = False,
    models: Mapping[str, str] | None = None,
    units: Sequence[str] | None = None,
    started_by: Callable[[Session, PipelineInstance], None] | None = None,
    units_regexp: str | None = None,
    units_exclude: str | None = None,
    settings: Sequence[str] | Mapping[str, Mapping[str, Any]] = (),
) -> Submitted:
    """Launch an instance of the newest version of ``pipeline`` (``dry_run``: say which
    nodes it would run and the first ones' tasks, and change nothing; no broker asked).

    Checks everything first (pipeline and nodes, then the broker, then the datastore's
    inputs) so that a refused submission changes nothing; the parameter set versions it
    uses are locked. The broker is asked between transactions, never inside one: a broker
    that hangs (up to ``broker_timeout``) holds no database lock meanwhile; the messages
    are published after commit.

    ``models`` chooses a model type's version (else the newest is pinned); ``units`` runs
    the instance for those units of work only; ``started_by`` (an event) is called in the
    submit's transaction with the new instance, and may refuse it by raising.

    ``units_regexp`` and ``units_exclude`` (``--units``, ``--exclude``) are kept as they
    are, frozen with the instance, and every node's units are held against them as its
    tasks are created (Ziggy applies its include and exclude regexps so): resolved to a
    list at submit, they would know only the first nodes' units, and a child whose units
    its parents' outputs name would lose them. A dry run says each node's tasks.
    """
    check_priority(priority)
    with transaction() as session:  # first: a home with no cluster says so
        definition_id = definitions.get(session, pipeline).id
        stored = session.get(PipelineDefinition, definition_id)
        chosen = _parse(stored)
        changes = environments.node_changes(chosen, settings)
        selected = select_nodes(chosen, start_node, end_node)
        environments.frozen_spec(session, stored.spec, chosen, selected, changes)
    for option, regexp in (("--units", units_regexp), ("--exclude", units_exclude)):
        check_regexp(option, regexp)
    root = datastore.require(get_settings().datastore)
    if not dry_run:
        publisher().check()
    unsent: list[Unreachable] = []
    deliver = _nothing if dry_run else outbox.sending_or_noting(unsent)
    with outbox.transaction(deliver=deliver) as (session, messages):
        stored = session.get(PipelineDefinition, definition_id)
        nodes = select_nodes(_parse(stored), start_node, end_node)
        spec = environments.frozen_spec(session, stored.spec, _parse(stored), nodes, changes)
        definition = definitions.parse(spec, stored.version)
        if started_by is not None:  # an event received its deliveries: no receipt to run
            nodes = [name for name in nodes if not definition.node(name).receives]
        frozen = {}
        for set_name in sorted({s for n in nodes for s in definition.node(n).parameter_sets}):
            parameter_set = parameters.get(session, set_name)
            parameter_set.locked = True
            frozen[set_name] = {
                "version": parameter_set.version,
                "values": parameters.flat_values(parameter_set.values),
            }
        instance = PipelineInstance(
            definition_id=stored.id,
            pipeline=stored.name,
            definition_version=stored.version,
            start_node=start_node,
            end_node=end_node,
            priority=priority,
            definition=spec,
            parameters=frozen,
            models=model_registry.pin(
                session,
                definition,
                nodes,
                models or {},
                receiving=any(definition.node(name).receives for name in nodes),
            ),
            units=sorted(set(units)) if units is not None else None,
            units_regexp=units_regexp,
            units_exclude=units_exclude,
        )
        session.add(instance)
        session.flush()
        if started_by is not None:
            started_by(session, instance)
        session.add_all(InstanceNode(instance_id=instance.id, node=name) for name in nodes)
        session.flush()
        graph = definition.graph()
        tasks = []
        for name in nodes:
            if not graph[name] & set(nodes):
                tasks += create_node_tasks(session, instance, definition, name, root, messages)
        submitted = Submitted(instance.id, instance.pipeline, instance.state, [t.id for t in tasks])
        submitted.nodes = nodes
        submitted.left_out = [name for name in definition.order() if name not in nodes]
        for task in tasks:
            submitted.units.setdefault(task.node, []).append(task.unit_of_work)
        submitted.parameter_sets = {name: frozen[name]["version"] for name in frozen}
        submitted.models = {kind: pin["version"] for kind, pin in instance.models.items()}
        if dry_run:
            submitted.batch_estimates = batch_cost.before_submit(
                session, root, instance, definition, nodes, tasks
            )
            submitted.planned = plan_tasks(session, instance, definition, nodes, root)
            session.rollback()
    if unsent:  # the instance is submitted: its first messages wait for the reconciler
        submitted.queued = f"{outbox.QUEUED_FOR_RECONCILER} ({unsent[0]})"
    return submitted
