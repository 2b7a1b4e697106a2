"""Pipeline definitions: YAML files validated into a DAG of nodes, imported as versions.

A file names its data file types, parameter sets and nodes::

    name: sample
    parameter_sets:
      algorithm: {throw_exception_subtask_0: false}
    data_file_types:
      raw_image: {location: "{dataset}/L0", pattern: "*.png"}
    nodes:
      - name: permuter
        algorithm: pipeline.sample.algorithms:permuter
        inputs: [raw_image]
        outputs: [permuted_image]
        parameter_sets: [algorithm]

A location holds one or more ``{placeholder}`` path components (Ziggy's datastore regexps):
a unit of work, one task, is their values in the datastore joined by "/" in location order
(``sector-1/camera-2`` for ``{sector}/{camera}/L0``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from graphlib import CycleError, TopologicalSorter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator
from sqlalchemy import select
from sqlalchemy.orm import Session

from pipeline.domain import executables, parameters, ziggy
from pipeline.domain.environments import RemoteEnvironment
from pipeline.domain.execution import NAME_PATTERN, ExecutionSettings
from pipeline.domain.models import EventHandler, ParameterSet, PipelineDefinition, utcnow
from pipeline.errors import InvalidInput, NotFound, shown

#: What a model type may be called: as a node, or with spaces, as Ziggy's are.
MODEL_TYPE_PATTERN = r"^[A-Za-z][A-Za-z0-9_. -]*$"
_PLACEHOLDER = re.compile(r"^\{([A-Za-z_][A-Za-z0-9_]*)\}$")
#: What a placeholder's value may be called where the pipeline names it (a delivery's
#: directories, a receipt's ``--unit``): one path component.
UNIT_VALUE = r"[A-Za-z0-9][A-Za-z0-9_.+=-]*"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataFileType(_Strict):
    """Where files of one type live in the datastore: ``location`` (a relative path with
    one or more ``{placeholder}`` components, each a level of the unit of work) and the file
    names matched there, by the shell-style ``pattern`` or, Ziggy's way, the regular
    expression ``regexp`` (the whole name must match; its groups pair the files of several
    input types into subtasks). ``unit_regexp`` (Ziggy's datastore regexps) limits the
    placeholders' values: one regexp for a location of one placeholder, else a mapping of
    placeholder names to regexps (a placeholder it does not name takes any value);
    ``every_subtask`` (Ziggy's ``includeAllFilesInAllSubtasks``) gives every file of the
    type to every subtask. Neither location nor pattern can reach outside: an absolute
    path or a ``..`` is refused, naming itself."""

    location: str
    pattern: str = "*"
    regexp: str | None = None
    unit_regexp: str | dict[str, str] | None = None
    every_subtask: bool = False

    @field_validator("location")
    @classmethod
    def _inside_the_datastore(cls, location: str) -> str:
        _refuse_escape(location, "a location is a path inside the datastore", "the datastore")
        names = _placeholders(location)
        if not names:
            raise ValueError(
                "must be a relative path with at least one {placeholder} component, "
                "e.g. '{dataset}/L0' or '{sector}/{camera}/L0'"
            )
        twice = next((name for name in names if names.count(name) > 1), None)
        if twice is not None:
            raise ValueError(
                f"placeholder {{{twice}}} appears twice: each level of the unit of work is"
                " named once"
            )
        return location

    @field_validator("pattern")
    @classmethod
    def _inside_the_location(cls, pattern: str) -> str:
        if not pattern.strip():
            raise ValueError("empty: give a file-name pattern, e.g. '*.png'")
        _refuse_escape(pattern, "a pattern matches files inside its location", "its location")
        return pattern

    @field_validator("regexp")
    @classmethod
    def _compiles(cls, regexp: str | None) -> str | None:
        return None if regexp is None else _name_regexp(regexp)

    @field_validator("unit_regexp")
    @classmethod
    def _each_compiles(cls, given: str | dict[str, str] | None) -> str | dict[str, str] | None:
        for name, regexp in given.items() if isinstance(given, dict) else ():
            try:
                _name_regexp(regexp)
            except ValueError as exc:
                raise ValueError(f"{name}: {exc}") from None
        return given if given is None or isinstance(given, dict) else _name_regexp(given)

    @model_validator(mode="after")
    def _one_way_to_match(self) -> DataFileType:
        if self.regexp is not None and self.pattern != "*":
            raise ValueError("give a pattern or a regexp, not both")
        names = self.placeholders
        if isinstance(self.unit_regexp, str) and len(names) > 1:
            raise ValueError(
                f"location {self.location!r} has {len(names)} placeholders: give unit_regexp a"
                f" regexp for each, e.g. {{{', '.join(f'{n}: ...' for n in names)}}}"
            )
        if isinstance(self.unit_regexp, dict):
            unknown = sorted(set(self.unit_regexp) - set(names))
            if unknown:
                raise ValueError(
                    f"unit_regexp: {unknown[0]!r} is no placeholder of location {self.location!r}"
                )
        return self

    @property
    def placeholders(self) -> list[str]:
        """The names of the location's placeholders, in order: the unit of work's levels."""
        return _placeholders(self.location)

    def directory(self, unit_of_work: str) -> str:
        """The location of ``unit_of_work``: each placeholder replaced by its level's value."""
        values = unit_of_work.split("/")
        if len(values) != len(self.placeholders):
            raise InvalidInput(
                f"unit of work {shown(unit_of_work)}: location {self.location!r} has"
                f" {len(self.placeholders)} placeholders, a value for each joined by '/'"
            )
        given = iter(values)
        return "/".join(
            next(given) if _PLACEHOLDER.match(part) else part for part in self.location.split("/")
        )

    def unit_in(self, folder: str, value: str = "[^/]+") -> str | None:
        """The unit of work whose directory ``folder`` (relative to the datastore root) is,
        if it is one: each placeholder's value a name matching ``value`` and its regexp."""
        levels = [
            f"({value})" if _PLACEHOLDER.match(part) else re.escape(part)
            for part in Path(self.location).parts
        ]
        found = re.fullmatch("/".join(levels), folder)
        unit = "/".join(found.groups()) if found else None
        return unit if unit is not None and self.is_unit(unit) else None

    def matches(self, name: str) -> bool:
        """Is ``name`` a file name of this type? (A hidden name matches a pattern only if the
        pattern starts with a dot, as a glob's does.)"""
        if self.regexp is not None:
            return re.fullmatch(self.regexp, name) is not None
        hidden = name.startswith(".") and not self.pattern.startswith(".")
        return not hidden and fnmatchcase(name, self.pattern)

    def is_unit(self, unit_of_work: str) -> bool:
        """May ``unit_of_work`` stand for the placeholders: a value for each, matching its
        ``unit_regexp`` where it has one?"""
        values = unit_of_work.split("/")
        return len(values) == len(self.placeholders) and all(
            re.fullmatch(regexp, value) is not None
            for name, value in zip(self.placeholders, values, strict=True)
            if (regexp := self._regexp_of(name)) is not None
        )

    def _regexp_of(self, placeholder: str) -> str | None:
        if isinstance(self.unit_regexp, dict):
            return self.unit_regexp.get(placeholder)
        return self.unit_regexp

    def groups(self, name: str) -> tuple[str, ...]:
        """The values of the regexp's groups in ``name``: what pairs it with files of the
        node's other input types in one subtask (none without a regexp)."""
        found = re.fullmatch(self.regexp, name) if self.regexp is not None else None
        return tuple(g or "" for g in found.groups()) if found else ()

    @property
    def names(self) -> str:
        """The rule its file names follow: the regexp, else the pattern."""
        return self.regexp if self.regexp is not None else self.pattern

    def describe(self) -> str:
        return f"{self.location}/{self.names}"


def _placeholders(location: str) -> list[str]:
    return [found[1] for part in Path(location).parts if (found := _PLACEHOLDER.match(part))]


def _name_regexp(regexp: str) -> str:
    """``regexp``, matched against one name: it compiles, and holds no '/'."""
    if "/" in regexp:
        raise ValueError(
            f"{shown(regexp)} holds a '/': a name in a sub-directory of the location"
            " (Ziggy's advanced units of work) is not supported"
        )
    _regexp(regexp)
    return regexp


def _regexp(text: str) -> re.Pattern[str]:
    try:
        return re.compile(text)
    except re.error as exc:
        raise ValueError(f"{shown(text)} is not a regular expression ({exc})") from None


def _refuse_escape(path: str, rule: str, inside: str) -> None:
    """Refuse a ``path`` that is absolute or holds a ``..`` component: it could name files
    outside ``inside``."""
    if Path(path).is_absolute():
        raise ValueError(f"{shown(path)} is absolute: {rule}")
    if ".." in Path(path).parts:
        raise ValueError(f"{shown(path)} contains '..': it would reach outside {inside}")


class ModelType(_Strict):
    """A kind of model (Ziggy's model type): the file-name ``pattern`` (a regular
    expression matched against the whole name) whose named groups ``version`` and
    ``timestamp`` give a received file's version and time, where the name carries them;
    without a ``version`` group, versions are numbered in order of receipt."""

    pattern: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, pattern: str) -> str:
        try:
            re.compile(pattern)
        except re.error as exc:
            raise ValueError(f"not a regular expression ({exc})") from None
        return pattern

    def match(self, name: str) -> re.Match[str] | None:
        return re.fullmatch(self.pattern, name)


class EventHandlerSpec(_Strict):
    """A directory watched for ready files ``LABEL.READY.NAME.COUNT`` that start the
    pipeline the handler is defined in (Ziggy's event handler); ``directory`` is relative
    to the definition file, recorded absolute at import."""

    directory: str
    enabled: bool = True


class Executable(_Strict):
    executable: str
    args: list[str] = Field(default_factory=list)


class Grouped(_Strict):
    group_size: int = Field(gt=0)


class Node(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    #: ``package.module:function``, an executable, or ``data-receipt`` (Ziggy's built-in
    #: node: a task per delivery waiting in the receipt directory, received into the
    #: datastore; its ``inputs`` are the types it receives, or none to say every type).
    algorithm: str | Executable
    #: How a Python algorithm is called: with a ``SubtaskContext``, or as a Ziggy step is,
    #: with Ziggy's inputs dict (``SubtaskContext.ziggy_inputs``).
    calls: Literal["context", "ziggy"] = "context"
    after: list[str] = Field(default_factory=list)
    inputs: list[str] = Field(default_factory=list)
    outputs: list[str] = Field(default_factory=list)
    #: ``paired`` is Ziggy's: a subtask per value of the input types' regexp groups, with
    #: one file of each input type (a subtask missing one is left out).
    subtasks: Literal["per_file", "single", "paired"] | Grouped = "per_file"
    #: Ziggy's per-node limits: ``maxWorkers``, how many of a task's subtasks run at once
    #: (``engine.dispatch``); ``heapSizeGigabytes``, the memory of them all, shared evenly
    #: (``subtask_memory``).
    max_workers: int | None = Field(default=None, gt=0)
    heap_size_gigabytes: float | None = Field(default=None, gt=0, le=1_000_000)
    parameter_sets: list[str] = Field(default_factory=list)
    #: The model types it uses: the versions its instance pinned at submit.
    models: list[str] = Field(default_factory=list)
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    #: Ziggy's "process all data" / "new data only", for inputs no parent node of the
    #: instance produces: ``new`` leaves out files (same path and checksum) that this node
    #: consumed in a completed task of an earlier instance.
    reprocess: Literal["all", "new"] = "all"
    #: Where inputs of a type a parent node produces come from: ``parents``, the versions
    #: this instance's parent tasks stored (what a per-file step needs), or ``unit``, every
    #: current version of the type in the unit (what an aggregate over a unit needs).
    #: Unset means ``parents``; a ``single`` or grouped node downstream of a ``reprocess:
    #: new`` node must say which (``scope_problem``).
    inputs_from: Literal["parents", "unit"] | None = None
    #: The units of work of a node with several parents: those every parent has a task for
    #: (``intersection``), or those any has (``union``).
    units: Literal["intersection", "union"] = "intersection"

    @property
    def scope(self) -> str:
        return self.inputs_from or "parents"

    @property
    def subtask_memory(self) -> tuple[int, str] | None:
        """The bytes one subtask's process may map, and why, in words: the node's heap
        (``heap_size_gigabytes``) shared evenly by the ``max_workers`` subtasks that may
        run at once, as Ziggy divides a node's heap among its workers (all of it without
        ``max_workers``); None: no limit."""
        if self.heap_size_gigabytes is None:
            return None
        share = self.heap_size_gigabytes / (self.max_workers or 1)
        said = f"heap_size_gigabytes {self.heap_size_gigabytes:g}"
        if self.max_workers:
            said += f" over max_workers {self.max_workers}"
        return int(share * 2**30), f"{said}: {share:g} GiB a subtask"

    @property
    def receives(self) -> bool:
        """Is it Ziggy's built-in data receipt node?"""
        return self.algorithm == ziggy.DATA_RECEIPT

    @field_validator("algorithm")
    @classmethod
    def _callable_form(cls, algorithm: str | Executable) -> str | Executable:
        if algorithm == ziggy.DATA_RECEIPT:
            return algorithm
        if isinstance(algorithm, str) and not re.match(r"^[\w.]+:\w+$", algorithm):
            raise ValueError(
                f"must be 'package.module:function', {{executable: PATH}} or {ziggy.DATA_RECEIPT}"
            )
        return algorithm

    @model_validator(mode="after")
    def _inputs(self) -> Node:
        if not self.inputs and not self.receives:
            raise ValueError("inputs: name at least one data file type")
        if self.receives and (self.outputs or self.after):
            raise ValueError(
                f"a {ziggy.DATA_RECEIPT} node starts its pipeline and stores no outputs"
                " (its inputs are the types it receives)"
            )
        return self


class Definition(_Strict):
    name: str = Field(pattern=NAME_PATTERN)
    description: str = ""
    #: Directories put first on the import path of the children that run the nodes' Python
    #: algorithms, relative to the definition file (unset: the file's own directory).
    #: Recorded absolute at import, so every worker on a host that mounts them at the same
    #: path imports the user's modules without being restarted.
    python_path: list[str] | None = None
    parameter_sets: dict[str, dict[str, Any]] = Field(default_factory=dict)
    #: Parameter sets every node uses (Ziggy's pipeline-level parameter sets).
    pipeline_parameter_sets: list[str] = Field(default_factory=list)
    data_file_types: dict[str, DataFileType]
    model_types: dict[str, ModelType] = Field(default_factory=dict)
    events: dict[str, EventHandlerSpec] = Field(default_factory=dict)
    #: Remote environments (Ziggy's): where a node's batch settings may send it.
    remote_environments: dict[str, RemoteEnvironment] = Field(default_factory=dict)
    nodes: Annotated[list[Node], Field(min_length=1)]

    @model_validator(mode="after")
    def _references(self) -> Definition:
        for node in self.nodes:  # a pipeline's sets first, as Ziggy gives them
            mine = [s for s in node.parameter_sets if s not in self.pipeline_parameter_sets]
            node.parameter_sets = [*self.pipeline_parameter_sets, *mine]
        names = [node.name for node in self.nodes]
        for i, node in enumerate(self.nodes):
            if names.count(node.name) > 1:
                raise _at(f"nodes.{i}.name", f"duplicate node {node.name!r}")
            for parent in node.after:
                if parent not in names:
                    raise _at(f"nodes.{i}.after", f"unknown node {parent!r}")
            for field in ("inputs", "outputs"):
                for kind in getattr(node, field):
                    if kind not in self.data_file_types:
                        raise _at(f"nodes.{i}.{field}", f"unknown data file type {kind!r}")
            if problem := self._levels_problem(node):
                raise _at(f"nodes.{i}", problem)
            for kind in node.models:
                if kind not in self.model_types:
                    raise _at(f"nodes.{i}.models", f"unknown model type {kind!r}")
        for name in self.events:
            if not re.match(NAME_PATTERN, name) or len(name) > 200:
                raise _at(name, "an event handler is named like a node")
        for name in self.model_types:  # Ziggy's hold spaces ("dummy model")
            if not re.match(MODEL_TYPE_PATTERN, name) or len(name) > 200:
                raise _at(name, "a model type is named like a node, spaces allowed")
        try:
            tuple(TopologicalSorter(self.graph()).static_order())
        except CycleError as exc:
            raise _at("nodes", f"cycle through {' -> '.join(exc.args[1])}") from None
        return self

    def _levels_problem(self, node: Node) -> str:
        """Why the node's data file types cannot share one unit of work ("" if they can):
        as many placeholders in each (a data receipt's types come from a delivery)."""
        if node.receives:
            return ""
        kinds = [*node.inputs, *node.outputs]
        levels = {kind: len(self.data_file_types[kind].placeholders) for kind in kinds}
        other = next((kind for kind in kinds if levels[kind] != levels[kinds[0]]), None)
        if other is None:
            return ""
        first, second = self.data_file_types[kinds[0]], self.data_file_types[other]
        return (
            f"node {node.name!r}: data file types {kinds[0]!r} ({first.location}) and {other!r}"
            f" ({second.location}) disagree on the placeholders of the unit of work: give them"
            " as many"
        )

    def graph(self) -> dict[str, set[str]]:
        """Each node mapped to its parents."""
        return {node.name: set(node.after) for node in self.nodes}

    def node(self, name: str) -> Node:
        for node in self.nodes:
            if node.name == name:
                return node
        raise NotFound(f"pipeline {self.name!r} has no node {shown(name)}")

    def children(self, name: str) -> list[str]:
        return [node.name for node in self.nodes if name in node.after]

    def order(self) -> list[str]:
        return list(TopologicalSorter(self.graph()).static_order())


class _Located(ValueError):
    def __init__(self, loc: str, message: str) -> None:
        super().__init__(message)
        self.loc = loc


def _at(loc: str, message: str) -> _Located:
    return _Located(loc, message)


def load(path: Path, bin_path: Sequence[Path] = ()) -> Definition:
    """Parse and validate one definition file; errors name the file, the key and the reason."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise InvalidInput(f"{path}: not valid YAML ({_first_line(exc)})") from None
    if not isinstance(raw, dict):
        raise InvalidInput(f"{path}: expected a mapping with name, data_file_types and nodes")
    return validated(path, raw, bin_path)


def stored_node(spec: Mapping[str, Any], name: str) -> Node:
    """Node ``name`` of a stored definition's spec, read alone: what a dispatch needs of a
    node, without the whole definition parsed."""
    return Node.model_validate(next(node for node in spec["nodes"] if node["name"] == name))


def validated(path: Path, raw: dict[str, Any], bin_path: Sequence[Path] = ()) -> Definition:
    """The definition ``raw`` read from ``path`` (YAML, or Ziggy's XML), validated, its
    code directories, event directories and executables made absolute (a bare name found
    on ``bin_path``, then ``PATH``)."""
    try:
        definition = Definition.model_validate(raw)
    except ValidationError as exc:
        raise InvalidInput(f"{path}: {_describe(exc)}") from None
    except _Located as exc:
        raise InvalidInput(f"{path}: {exc.loc}: {exc}") from None
    _check_parameters(path, definition)
    definition.python_path = _python_path(path, definition.python_path)
    here = path.absolute().parent
    for handler in definition.events.values():
        handler.directory = str((here / handler.directory).resolve())
    _resolve_algorithms(path, definition, bin_path)
    return definition


def _python_path(path: Path, given: list[str] | None) -> list[str]:
    """The definition's code directories made absolute, relative to its file's directory."""
    here = path.absolute().parent
    return [str((here / entry).resolve()) for entry in (given if given is not None else ["."])]


def _describe(exc: ValidationError) -> str:
    error = exc.errors()[0]
    cause = error.get("ctx", {}).get("error")
    if isinstance(cause, _Located):
        return f"{cause.loc}: {cause}"
    loc = ".".join(str(part) for part in error["loc"]) or "(top level)"
    message = str(cause) if cause else error["msg"]
    return f"{loc}: {message}"


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0]


def _check_parameters(path: Path, definition: Definition) -> None:
    for set_name, values in definition.parameter_sets.items():
        for key, raw in values.items():
            try:
                definition.parameter_sets[set_name][key] = parameters.normalize_declaration(raw)
            except InvalidInput as exc:
                raise InvalidInput(f"{path}: parameter_sets.{set_name}.{key}: {exc}") from None


def _resolve_algorithms(path: Path, definition: Definition, bin_path: Sequence[Path]) -> None:
    """Reject an algorithm that the workers could not find; make an executable's path
    absolute (a path with a ``/`` is relative to the definition file, a bare name is looked
    up on the bin path, then ``PATH``: ``executables``)."""
    for i, node in enumerate(definition.nodes):
        where = f"{path}: nodes.{i}.algorithm"
        if node.receives:
            continue
        if isinstance(node.algorithm, str):
            try:
                check_callable(node.algorithm, definition.python_path or [])
            except InvalidInput as exc:
                raise InvalidInput(f"{where}: {exc}") from None
            continue
        program = node.algorithm.executable
        if "/" in program:
            found: str | None = str((path.absolute().parent / program).resolve())
            looked = f"at {found} (relative to the definition file)"
        else:
            found, looked = executables.find(program, bin_path), executables.searched(bin_path)
        if not found or not executables.runnable(Path(found)):
            raise InvalidInput(
                f"{where}: executable {program!r} not found {looked}, or not executable"
            )
        node.algorithm.executable = found


def check_callable(reference: str, python_path: list[str]) -> None:
    """Import ``reference`` from where a worker's algorithm child looks: ``python_path``
    first, then this process's import path without its working directory (a worker does
    not share the importing shell's directory, unless PYTHONPATH names it). The user's
    modules imported for the check are forgotten again, so two definitions may each have a
    module of the same name."""
    module_name = reference.partition(":")[0]
    top = module_name.split(".")[0]
    shadowed = getattr(sys.modules.get(top), "__file__", None)
    if (
        shadowed
        and not _inside(shadowed, python_path)
        and importlib.machinery.PathFinder.find_spec(top, python_path)
    ):
        raise InvalidInput(
            f"cannot import {reference!r}: module {top!r} of {', '.join(python_path)} is "
            f"shadowed by the workers' own {top!r} ({shadowed}): "
            "rename yours"
        )
    # The shell's directory, unless PYTHONPATH names it: the workers have PYTHONPATH too.
    named = {os.path.abspath(e) for e in os.environ.get("PYTHONPATH", "").split(os.pathsep) if e}
    here = {"", os.getcwd()} - named
    saved_path, before = sys.path[:], set(sys.modules)
    sys.path[:] = [*python_path, *(entry for entry in sys.path if entry not in here)]
    importlib.invalidate_caches()
    try:
        resolve_callable(reference)
    except InvalidInput as exc:
        looked = f"{', '.join(python_path)} (python_path) and" if python_path else ""
        raise InvalidInput(f"{exc}; workers look in {looked} their installed packages") from None
    finally:
        sys.path[:] = saved_path
        for name in set(sys.modules) - before:
            if _inside(getattr(sys.modules[name], "__file__", None), python_path):
                del sys.modules[name]


def _inside(file: str | None, directories: list[str]) -> bool:
    return file is not None and any(Path(file).is_relative_to(d) for d in directories)


def resolve_callable(reference: str) -> Any:
    module_name, _, attribute = reference.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInput(f"cannot import {reference!r} ({exc})") from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise InvalidInput(f"cannot import {reference!r} (module has no function {attribute!r})")
    return function


def digest(definition: Definition) -> str:
    canonical = json.dumps(definition.model_dump(mode="json"), sort_keys=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


def scope_problem(definition: Definition) -> str:
    """Why the definition must say where a node's inputs come from ("" when it need not):
    a ``single`` or grouped node downstream of a ``reprocess: new`` node would otherwise
    aggregate only the new files' results and supersede a result made from all of them."""
    graph = definition.graph()
    for i, node in enumerate(definition.nodes):
        if node.subtasks in ("per_file", "paired") or node.inputs_from is not None:
            continue
        above, todo = set(), list(graph[node.name])
        while todo:
            name = todo.pop()
            if name not in above:
                above.add(name)
                todo.extend(graph[name])
        new = sorted(n for n in above if definition.node(n).reprocess == "new")
        if new:
            return (
                f"nodes.{i}.inputs_from: node {node.name!r} aggregates its unit downstream of"
                f" {new[0]!r} (reprocess: new): say 'inputs_from: parents' (only what this"
                " instance's parents stored) or 'inputs_from: unit' (every current file of the"
                " unit)"
            )
    return ""


def load_all(
    paths: list[Path],
    algorithm_path: Sequence[Path] = (),
    receipt_dir: Path | None = None,
    warnings: list[str] | None = None,
    bin_path: Sequence[Path] = (),
) -> list[tuple[Path, Definition]]:
    """Every definition of these files: YAML files one each; Ziggy's XML files (and the
    ``*.xml`` of a directory, a ``ziggy.d``) read together as one library, a definition
    per ``pipeline`` (see ``ziggy``), steps found under ``algorithm_path`` (by default
    the first XML file's directory), executables named without a path then on
    ``bin_path``. What Ziggy's files hold that is accepted without being acted on is
    added to ``warnings``."""
    yaml_files = [p for p in paths if not p.is_dir() and p.suffix.lower() != ".xml"]
    xml_files = ziggy.files_of([p for p in paths if p not in yaml_files])
    loaded = [(path, load(path, bin_path)) for path in yaml_files]
    for given in paths:
        if given.is_dir() and not any(f.parent == given for f in xml_files):
            raise InvalidInput(f"{given}: a directory of Ziggy definitions holds *.xml files")
    if xml_files:
        where = list(algorithm_path) or [xml_files[0].absolute().parent]
        receipt = receipt_dir or Path("receipt").absolute()
        specs, library = ziggy.read(xml_files, where, receipt, bin_path)
        if not specs:
            raise InvalidInput(
                f"{xml_files[0]}: no <pipeline> in {len(xml_files)} Ziggy file(s)"
                " (a parameter library goes to pipeline params import)"
            )
        for spec in specs:
            source = Path(spec.pop("source"))
            loaded.append((source, validated(source, spec, bin_path)))
        if warnings is not None:
            warnings += library.warnings
    return loaded


def import_files(
    session: Session,
    paths: list[Path],
    algorithm_path: Sequence[Path] = (),
    receipt_dir: Path | None = None,
    warnings: list[str] | None = None,
    bin_path: Sequence[Path] = (),
) -> list[tuple[PipelineDefinition, bool]]:
    """Import every file, all or nothing; returns each stored version and whether it is new.

    Every file is validated, and every parameter set it names must be declared in it
    or exist already, before anything is written (``load_all`` reads them).
    """
    loaded = load_all(paths, algorithm_path, receipt_dir, warnings, bin_path)
    seen: dict[str, Path] = {}
    for path, definition in loaded:
        if definition.name in seen:
            raise InvalidInput(
                f"{path}: name: pipeline {definition.name!r} also in {seen[definition.name]}"
            )
        seen[definition.name] = path
        problem = scope_problem(definition)
        if problem:
            raise InvalidInput(f"{path}: {problem}")
        for i, node in enumerate(definition.nodes):
            for set_name in node.parameter_sets:
                if set_name not in definition.parameter_sets and not parameters.latest(
                    session, set_name
                ):
                    raise InvalidInput(
                        f"{path}: nodes.{i}.parameter_sets: unknown parameter set {set_name!r}"
                    )
    return [_store(session, path, definition) for path, definition in loaded]


def _store(session: Session, path: Path, definition: Definition) -> tuple[PipelineDefinition, bool]:
    for set_name, declared in definition.parameter_sets.items():
        _merge_parameter_set(session, set_name, declared)
    _declare_handlers(session, path, definition)
    newest = latest(session, definition.name)
    fingerprint = digest(definition)
    if newest is not None and newest.digest == fingerprint:
        return newest, False
    stored = PipelineDefinition(
        name=definition.name,
        version=(newest.version + 1) if newest else 1,
        digest=fingerprint,
        spec=definition.model_dump(mode="json"),
        source=str(path.absolute()),
    )
    session.add(stored)
    session.flush()
    return stored, True


def _declare_handlers(session: Session, path: Path, definition: Definition) -> None:
    """Create or update the event handlers the definition declares: a new one is enabled
    as declared; an existing one keeps the operator's choice (``pipeline events enable``)."""
    for name, spec in definition.events.items():
        handler = session.get(EventHandler, name)
        if handler is None:
            session.add(
                EventHandler(
                    name=name,
                    pipeline=definition.name,
                    directory=spec.directory,
                    enabled=spec.enabled,
                )
            )
        elif handler.pipeline != definition.name:
            raise InvalidInput(
                f"{path}: events.{name}: event handler {name!r} belongs to pipeline"
                f" {handler.pipeline!r}"
            )
        elif handler.directory != spec.directory:
            handler.directory, handler.updated_at = spec.directory, utcnow()


def _merge_parameter_set(session: Session, name: str, declared: dict[str, Any]) -> None:
    """Create a declared set; keep an existing one's values for keys whose type is unchanged."""
    current = parameters.latest(session, name)
    if current is None:
        session.add(ParameterSet(name=name, version=1, values=declared))
        return
    kinds = {key: decl["type"] for key, decl in current.values.items()}
    if kinds == {key: decl["type"] for key, decl in declared.items()}:
        return
    merged = {
        key: current.values[key] if kinds.get(key) == decl["type"] else decl
        for key, decl in declared.items()
    }
    session.add(ParameterSet(name=name, version=current.version + 1, values=merged))


def latest(session: Session, name: str) -> PipelineDefinition | None:
    return session.scalars(
        select(PipelineDefinition)
        .where(PipelineDefinition.name == name)
        .order_by(PipelineDefinition.version.desc())
    ).first()


def get(session: Session, name: str) -> PipelineDefinition:
    found = latest(session, name)
    if found is None:
        known = ", ".join(list_names(session)) or "none imported"
        raise NotFound(f"unknown pipeline {shown(name)} (known: {known})")
    return found


def list_names(session: Session) -> list[str]:
    return list(
        session.scalars(
            select(PipelineDefinition.name).distinct().order_by(PipelineDefinition.name)
        )
    )


def list_latest(session: Session) -> list[PipelineDefinition]:
    return [definition for name in list_names(session) if (definition := latest(session, name))]


def parse(spec: dict[str, Any], version: int | None = None) -> Definition:
    """A stored spec as a model; ``InvalidInput`` naming the pipeline (and ``version``) if
    it is no longer valid (stored before a rule was added, or edited by hand)."""
    try:
        return Definition.model_validate(spec)
    except (ValidationError, _Located) as exc:
        detail = _describe(exc) if isinstance(exc, ValidationError) else f"{exc.loc}: {exc}"
        label = f"pipeline {shown(spec.get('name'))}" + (f" version {version}" if version else "")
        raise InvalidInput(f"{label} is no longer valid: {detail}") from None


def definition_files(directory: Path) -> list[Path]:
    if not directory.is_dir():
        raise InvalidInput(f"definitions directory {directory} does not exist")
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])
