"""What an algorithm is given: the one import an algorithm author needs.

from pipeline.domain.context import SubtaskContext

def permuter(ctx: SubtaskContext) -> None:
    for path in ctx.inputs:
        ...  # write outputs into ctx.directory
"""

from __future__ import annotations

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
    """

    directory: Path
    inputs: list[Path]
    parameters: dict[str, Any]
    index: int
    unit_of_work: str
    node: str
    models: dict[str, Path] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
