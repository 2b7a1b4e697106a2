"""Marshaling: gather a task's inputs into a task directory, one directory per subtask."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from pipeline import datastore
from pipeline.definitions import Definition, Grouped, Node
from pipeline.errors import InvalidInput

SUBTASK_DIR_FORMAT = "st-{index}"


def subtask_dir(task_dir: Path, index: int) -> Path:
    return task_dir / SUBTASK_DIR_FORMAT.format(index=index)


def split(files: list[Path], node: Node) -> list[list[Path]]:
    """Inputs as subtasks: one per file (default), one single subtask, or groups of N."""
    if node.subtasks == "single":
        return [files]
    size = node.subtasks.group_size if isinstance(node.subtasks, Grouped) else 1
    return [files[i : i + size] for i in range(0, len(files), size)]


def marshal(
    root: Path, definition: Definition, node: Node, unit: str, task_dir: Path
) -> list[list[str]]:
    """Build ``task_dir`` afresh from the datastore; returns each subtask's input file names.

    Inputs are hard links where the file system allows (cheap for large files), copies
    elsewhere; algorithms treat their inputs as read-only.
    """
    files = datastore.input_files(root, definition, node, unit)
    if not files:
        raise InvalidInput(
            f"no {datastore.describe_inputs(definition, node)} for unit {unit!r} in {root}"
        )
    if task_dir.exists():
        shutil.rmtree(task_dir)
    groups = split(files, node)
    for index, group in enumerate(groups):
        directory = subtask_dir(task_dir, index)
        directory.mkdir(parents=True)
        for source in group:
            _link_or_copy(source, directory / source.name)
    return [[source.name for source in group] for group in groups]


def _link_or_copy(source: Path, destination: Path) -> None:
    try:
        os.link(source, destination)
    except OSError:
        shutil.copy2(source, destination)
