"""What an algorithm is given: the one import an algorithm author needs.

from pipeline.domain.context import SubtaskContext

def permuter(ctx: SubtaskContext) -> None:
    for path in ctx.inputs:
        ...  # write outputs into ctx.directory
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class SubtaskContext:
    """One subtask as its algorithm sees it.

    Attributes:
      directory: the subtask directory, the algorithm's working directory; outputs go here.
      inputs: the subtask's input files, in ``directory`` (read-only).
      parameters: the frozen values of every parameter set the node uses, as one mapping.
      index: the subtask's number within its task.
      unit_of_work: the task's unit of work (``set-1``).
      node: the node's name.
      models: the path of each model the node uses, by model type: the version the
        instance pinned, in ``directory`` under its original name (read-only).
      labels: the labels of the event that started the instance (none: a person did).
      parameter_sets: the same values by parameter set (what a Ziggy step is given).
      event_handler: the handler whose event started the instance ("": a person did).
      event_name: that event's NAME (of its ready files ``LABEL.READY.NAME.COUNT``).
      memory_limit: the bytes the subtask's process may map, and why (the node's
        ``heap_size_gigabytes``, ``Node.subtask_memory``); None: no limit.
    """

    directory: Path
    inputs: list[Path]
    parameters: dict[str, Any]
    index: int
    unit_of_work: str
    node: str
    models: dict[str, Path] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    parameter_sets: dict[str, dict[str, Any]] = field(default_factory=dict)
    event_handler: str = ""
    event_name: str = ""
    memory_limit: tuple[int, str] | None = None

    def ziggy_inputs(self) -> dict[str, Any]:
        """The one argument a Ziggy step function is called with, as Ziggy reads it from
        its HDF5 inputs file: ``dataFilenames`` (the input names), ``modelFilenames``,
        and ``algorithmParameters`` by parameter set, set and parameter names with their
        spaces turned into underscores, with Ziggy's ``ZiggyEventLabels`` set when an
        event started the instance (``eventHandlerName``, ``eventName``, and every
        label in ``eventLabels``). As Ziggy's reader does, a list of one item is given as
        that item and a longer one as a tuple: a file-per-subtask step gets a name, a
        single subtask of several files a tuple of names."""
        parameters = {
            _underscored(set_name): {
                _underscored(key): _as_ziggy(value) if isinstance(value, list) else value
                for key, value in values.items()
            }
            for set_name, values in self.parameter_sets.items()
        }
        if self.event_handler:
            parameters["ZiggyEventLabels"] = {
                "eventHandlerName": self.event_handler,
                "eventName": self.event_name,
                "eventLabels": _as_ziggy(list(self.labels)),
            }
        return {
            "dataFilenames": _as_ziggy([path.name for path in self.inputs]),
            "modelFilenames": _as_ziggy([path.name for path in self.models.values()]),
            "algorithmParameters": parameters,
        }


def event_fields(event: Mapping[str, Any] | None) -> dict[str, Any]:
    """A context's fields for the event that started an instance (its ``event``, None
    when a person submitted it): labels, handler and NAME (the handler's own name for an
    event recorded before its NAME was kept)."""
    if not event:
        return {}
    return {
        "labels": list(event.get("labels", [])),
        "event_handler": event["handler"],
        "event_name": event.get("name") or event["handler"],
    }


def _underscored(name: str) -> str:
    return name.replace(" ", "_")


def _as_ziggy(items: list[Any]) -> Any:
    return items[0] if len(items) == 1 else tuple(items)
