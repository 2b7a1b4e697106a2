"""A node's execution settings as an operator changes them, at submit (``--set
NODE:KEY=VALUE``, frozen with the instance) and with a restart (``--set KEY=VALUE``): the
changes merged and validated, then the remote environment they name settled into the
batch settings it decides (``domain.environments``). One rule, one set of messages, for
the CLI, the HTTP API and the console; and the remote environments the definitions
declare, as ``pipeline environments`` lists them.

A remote environment is the one a node's instance froze with its definition, else the
one every newest definition that declares it agrees on (a pipeline may name one another
pipeline declares).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.definitions import Definition
from pipeline.domain.environments import SETTLED, RemoteEnvironment, unsettled
from pipeline.domain.execution import (
    BATCH_PREFIX,
    BatchSettings,
    ExecutionSettings,
    changeable,
    with_changes,
)
from pipeline.errors import InvalidInput, NotFound, shown
from pipeline.operations.receipt import agreed, declared
from pipeline.operations.views import EnvironmentView, environment_view


def check_keys(changes: Mapping[str, Any]) -> None:
    """Refuse a key that names no execution setting, in one line naming them all."""
    allowed = changeable()
    for key in changes:
        if key in allowed:
            continue
        if str(key).startswith(BATCH_PREFIX):
            raise InvalidInput(
                f"unknown batch setting {shown(key)} (batch.NAME, one of"
                f" {', '.join(BatchSettings.model_fields)})"
            )
        raise InvalidInput(
            f"unknown execution setting {shown(key)} (one of"
            f" {', '.join(sorted(ExecutionSettings.model_fields))}; or batch.NAME)"
        )


def merged(current: Mapping[str, Any], changes: Mapping[str, Any]) -> dict[str, Any]:
    """Stored settings with these changes, validated: a value a setting cannot take is
    refused in one line naming it."""
    check_keys(changes)
    try:
        return with_changes(current, changes)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"])
        raise InvalidInput(f"execution setting {where}: {error['msg']}") from None


def settled(
    session: Session,
    execution: dict[str, Any],
    given: Collection[str],
    frozen: Mapping[str, Any] | None = None,
    found: dict[str, RemoteEnvironment] | None = None,
) -> dict[str, Any]:
    """``execution`` with the remote environment its batch settings name settled into
    them (``RemoteEnvironment.settle``); ``given``: the keys the operator set, ``frozen``:
    the instance's frozen definition, where the environment is looked for first (see
    ``find``, and ``found``). Settings that name none drop the architecture and queue,
    unless ``given`` names them."""
    batch = dict(execution["batch"])
    name = batch["environment"]
    if not name:
        problem = unsettled({k: v for k, v in batch.items() if BATCH_PREFIX + k in given})
        if problem:
            raise InvalidInput(problem)
        return {**execution, "batch": {**batch, "architecture": "", "queue": ""}}
    environment = find(session, name, frozen, found)
    return {**execution, "batch": environment.settle(name, execution["executor"], batch, given)}


def find(
    session: Session,
    name: str,
    frozen: Mapping[str, Any] | None = None,
    found: dict[str, RemoteEnvironment] | None = None,
) -> RemoteEnvironment:
    """The remote environment ``name``: the frozen definition's, else the newest
    definitions' (they must agree on it), kept in ``found`` for the next task of the same
    request (a restart of many tasks reads the definitions once); ``NotFound`` when none
    declares it."""
    mine = (frozen or {}).get("remote_environments", {}).get(name)
    if mine is not None:
        return RemoteEnvironment.model_validate(mine)
    if found is not None and name in found:
        return found[name]
    environment = agreed(session, "remote environment", name, None, _declared_in)
    if found is not None:
        found[name] = environment
    return environment


def _declared_in(definition: Definition) -> Mapping[str, RemoteEnvironment]:
    return definition.remote_environments


def node_changes(
    definition: Definition, settings: Sequence[str] | Mapping[str, Mapping[str, Any]]
) -> dict[str, dict[str, Any]]:
    """A submit's changes of its nodes' settings, ``NODE:KEY=VALUE`` texts (``--set``) or
    ``{node: {key: value}}``, as ``{node: {key: value}}``: each node one of the
    definition's, each key a setting."""
    from pipeline.domain.parameters import parse_assignments

    if isinstance(settings, Mapping):
        by_node = {str(node): dict(changes) for node, changes in settings.items()}
    else:
        by_node = {}
        for text in settings:
            node, colon, assignment = str(text).partition(":")
            if not colon or "=" not in assignment:
                raise InvalidInput(f"--set {shown(text)}: expected NODE:KEY=VALUE")
            by_node.setdefault(node, {}).update(parse_assignments([assignment]))
    names = [node.name for node in definition.nodes]
    for node, changes in by_node.items():
        if node not in names:
            raise NotFound(
                f"execution settings: pipeline {definition.name!r} has no node {shown(node)}"
                f" (one of {', '.join(names)})"
            )
        check_keys(changes)
    return by_node


def frozen_spec(
    session: Session,
    spec: dict[str, Any],
    definition: Definition,
    nodes: Collection[str],
    changes: Mapping[str, Mapping[str, Any]],
) -> dict[str, Any]:
    """The definition ``spec`` as an instance freezes it: each of ``nodes`` with its
    ``changes`` and its remote environment settled (a setting the environment decides is
    the operator's when the definition or ``changes`` give it)."""
    defaults = BatchSettings().model_dump()
    frozen_nodes = []
    for node in spec["nodes"]:
        if node["name"] in nodes:
            mine = changes.get(node["name"], {})
            declared_batch = definition.node(node["name"]).execution.batch.model_dump()
            given = {*mine} | {
                BATCH_PREFIX + key for key in SETTLED if declared_batch[key] != defaults[key]
            }
            execution = merged(node.get("execution", {}), mine)
            node = {**node, "execution": settled(session, execution, given, spec)}
        frozen_nodes.append(node)
    return {**spec, "nodes": frozen_nodes}


def list_environments() -> list[EnvironmentView]:
    """Every remote environment the newest definitions declare, by name, with the
    pipelines declaring it (one row per distinct declaration of a name)."""
    rows: dict[tuple[str, str], tuple[RemoteEnvironment, list[str]]] = {}
    with transaction() as session:
        for definition in declared(session, None):
            for name, environment in definition.remote_environments.items():
                key = (name, environment.model_dump_json())
                rows.setdefault(key, (environment, []))[1].append(definition.name)
    return [
        environment_view(name, environment, sorted(pipelines))
        for (name, _), (environment, pipelines) in sorted(rows.items())
    ]
