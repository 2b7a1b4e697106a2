"""Task directories: where a task's subtasks run, made by marshaling, and how its inputs
are split into subtasks.

A task directory holds one directory per subtask (``st-0``, ``st-1``, ...), made when the
subtask first runs, each with its inputs (read-only), the algorithm's outputs and its log.
Each attempt that marshals gets a directory of its own, so a late marshal of an old attempt
can never clear the one a newer attempt is using, and the logs of earlier attempts are
kept.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from pipeline.domain.definitions import Definition, Grouped, Node
from pipeline.domain.models import Task
from pipeline.errors import InvalidInput
from pipeline.settings import get_settings

Item = TypeVar("Item")

SUBTASK_DIR_FORMAT = "st-{index}"
#: A subtask's log: the algorithm's stdout and stderr.
LOG_NAME = "subtask.log"
#: Files an executable algorithm finds in its subtask directory.
PARAMETERS_FILE = "parameters.json"
INPUTS_FILE = "inputs.json"
#: Each model's file name by model type, beside the models themselves (where a node uses any).
MODELS_FILE = "models.json"
#: Inputs up to this size are copies, larger ones links to the read-only stored version.
INPUT_COPY_BYTES = 1 << 20
#: An input's mode: read-only, as the stored version it came from.
INPUT_MODE = 0o444
#: The end of the name of a subtask directory being made (see ``build``).
BUILDING = ".building"


def task_directory(instance_id: int, task: Task) -> Path:
    """The directory of the task's current attempt, under the task root."""
    return get_settings().tasks_dir / f"{instance_id}-{task.id}-{task.node}-attempt{task.attempt}"


def subtask_dir(task_dir: Path, index: int) -> Path:
    return task_dir / SUBTASK_DIR_FORMAT.format(index=index)


def log_path(task_dir: Path, index: int) -> Path:
    return subtask_dir(task_dir, index) / LOG_NAME


@dataclass(frozen=True)
class Pairing:
    """How a ``paired`` node's inputs pair into subtasks (Ziggy's way): each input's data
    file type and regexp group values (None: its type goes to every subtask), and the
    types every subtask must have a file of."""

    keys: list[tuple[str, tuple[str, ...]] | None]
    required: frozenset[str]


def pairing(definition: Definition, node: Node, files: Sequence[tuple[str, str]]) -> Pairing:
    """The ``Pairing`` of a task's inputs, given as (data file type, path)."""
    keys: list[tuple[str, tuple[str, ...]] | None] = []
    for kind_name, path in files:
        kind = definition.data_file_types[kind_name]
        name = path.rsplit("/", 1)[-1]
        keys.append(None if kind.every_subtask else (kind_name, kind.groups(name)))
    required = {n for n in node.inputs if not definition.data_file_types[n].every_subtask}
    return Pairing(keys, frozenset(required))


def split(files: list[Item], node: Node, paired: Pairing | None = None) -> list[list[Item]]:
    """Inputs as subtasks: one per file (default), one single subtask, groups of N, or
    ``paired`` by their regexp groups (see ``Pairing``)."""
    if not files:
        return []
    if node.subtasks == "single":
        return [files]
    if node.subtasks == "paired":
        return _paired(files, node, paired or Pairing([], frozenset()))
    size = node.subtasks.group_size if isinstance(node.subtasks, Grouped) else 1
    return [files[i : i + size] for i in range(0, len(files), size)]


def _paired(files: list[Item], node: Node, paired: Pairing) -> list[list[Item]]:
    """A subtask per regexp group values, in their order, each with one file of every
    required type, in the node's order of input types, then the files every subtask gets.
    Group values that lack a required type make no subtask (Ziggy leaves them out)."""
    every = [item for item, key in zip(files, paired.keys, strict=True) if key is None]
    by_groups: dict[tuple[str, ...], dict[str, list[Item]]] = {}
    for item, key in zip(files, paired.keys, strict=True):
        if key is not None:
            by_groups.setdefault(key[1], {}).setdefault(key[0], []).append(item)
    subtasks = []
    for groups in sorted(by_groups):
        found = by_groups[groups]
        if set(found) >= paired.required:
            subtasks.append([item for kind in node.inputs for item in found.get(kind, [])] + every)
    if not subtasks and every and not paired.required:
        subtasks.append(every)
    return subtasks


def prepare(task_dir: Path, names: list[list[str]], models: Sequence[str] = ()) -> None:
    """Make ``task_dir`` afresh for subtasks given inputs of these ``names`` each, and
    every subtask the ``models``. Each subtask's directory is made when it first runs
    (``build``), by the worker that runs it: a marshal of 10,000 subtasks spent most of its
    time making them, one after another, while the other workers waited."""
    taken = set(models)
    for group in names:
        for name in group:
            if name in taken:
                raise InvalidInput(f"input {name!r} has the name of a model the node uses")
    if task_dir.exists():
        shutil.rmtree(task_dir)
    task_dir.mkdir(parents=True)


def build(directory: Path, given: Iterable[tuple[Path, str]]) -> None:
    """Make a subtask's directory, holding what it is ``given`` (each version's bytes and
    the name the algorithm sees, read-only: see ``give``), unless it has one already (a
    subtask run again runs where it ran before). Made aside and renamed into place, so a
    directory is whole or absent whatever happens to its maker; ``given`` is read only
    when the directory is made."""
    target = str(directory)
    if os.path.isdir(target):
        return
    building = f"{target}.{uuid.uuid4().hex}{BUILDING}"
    os.mkdir(building)
    try:
        for source, name in given:
            give(source, os.path.join(building, name))
        try:
            os.rename(building, target)
        except OSError:
            if not os.path.isdir(target):
                raise
            shutil.rmtree(building)  # made meanwhile by another run of the subtask
    except BaseException:
        shutil.rmtree(building, ignore_errors=True)
        raise


def give(source: Path, destination: str) -> None:
    """Give an algorithm a stored version as an input it cannot change the datastore
    through: a copy up to ``INPUT_COPY_BYTES`` (as cheap as a link for small files), else a
    hard link to the read-only object (a copy where the file system has no links). A
    worker running as root gets copies of every input: the read-only mode does not stop
    root from writing through a link."""
    if os.geteuid() != 0 and os.stat(source).st_size > INPUT_COPY_BYTES:
        try:
            os.link(source, destination)
            return
        except OSError:
            pass
    shutil.copyfile(source, destination)
    os.chmod(destination, INPUT_MODE & ~get_settings().umask)
