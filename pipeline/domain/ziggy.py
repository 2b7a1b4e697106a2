"""Ziggy's XML pipeline definitions (``ziggy.d/``) read into this product's definitions,
and written back.

Ziggy (NASA's pipeline infrastructure, 0.11) reads every ``pipelineDefinition`` file of a
directory as one library: steps, pipelines and their nodes, parameter sets, datastore
regexps and nodes, data file types, model types, event handlers and remote environments,
each file holding any mix of them. ``read`` does the same and returns, for each
``pipeline``, the spec of a ``Definition`` (validated by ``definitions``), with the
warnings of what it accepts without acting on. Every element and attribute of Ziggy's
schema is mapped or refused in one line naming it and why; nothing is half-read.

The mapping: a node runs the step of its name (a ``file`` ending ``.py`` is a Python
module under the algorithm path whose function of the step's name is called with Ziggy's
inputs dict, ``Node.calls``; anything else an executable found there, on the bin path
(Ziggy's ``binPath``) or on ``PATH``, see ``executables``);
``childNodeNames`` become the children's ``after``; a pipeline's parameter sets apply to
every node; a data file type's location names its datastore regexp, which becomes the
unit-of-work placeholder (``{dataset}/L0``; with several, ``{sector}/{camera}/L0``, each
a level of the unit of work) and whose value limits the units; its
``fileNameRegexp`` pairs the files of several input types into subtasks by its groups
(``subtasks: paired``), or ``singleSubtask`` gives one subtask of all.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ElementTree
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from xml.sax.saxutils import quoteattr

from pipeline.domain import executables
from pipeline.errors import InvalidInput

#: Ziggy's node that receives deliveries, built in (no step declares it).
DATA_RECEIPT = "data-receipt"
#: The Ziggy property naming its data receipt directory: this product's ``receipt_dir``.
RECEIPT_PROPERTY = "${ziggy.pipeline.data.receipt.dir}"
#: Ziggy's parameter types, as this product's (``parameters.TYPES``), and back.
PARAMETER_TYPES = {
    "boolean": "bool",
    "byte": "int",
    "short": "int",
    "int": "int",
    "long": "int",
    "float": "float",
    "double": "float",
    "string": "str",
    "ziggy_string": "str",
}
ZIGGY_TYPES = {"bool": "boolean", "int": "int", "float": "double", "str": "String"}
#: Ziggy's instance priorities, as this product's execution priority (0 first, 9 last).
PRIORITIES = {"HIGHEST": 1, "HIGH": 3, "NORMAL": 5, "LOW": 7, "LOWEST": 9}
_JAVA_CLASSES = {
    "uowGenerator": "a Java unit-of-work generator: units of work come from the data file"
    " types' locations here",
    "pipelineStepExecutorClass": "a Java step executor: steps here are Python functions or"
    " executables",
    "inputsClass": "a Java inputs class: steps here are given Ziggy's inputs dict",
    "outputsClass": "a Java outputs class: outputs here are the files of the output types",
    "algorithmInterfaceName": "a Java parameter class: parameter sets here are typed values",
}


@dataclass
class Library:
    """What a set of Ziggy files declares, by element, as read (names unresolved)."""

    steps: dict[str, dict[str, str]] = field(default_factory=dict)
    pipelines: list[ElementTree.Element] = field(default_factory=list)
    parameter_sets: dict[str, ParameterSetXml] = field(default_factory=dict)
    regexps: dict[str, str] = field(default_factory=dict)
    datastore_nodes: list[ElementTree.Element] = field(default_factory=list)
    data_file_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    model_types: dict[str, dict[str, str]] = field(default_factory=dict)
    events: list[dict[str, str]] = field(default_factory=list)
    #: Each ``remoteEnvironment``, as a definition declares it (``environments``).
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    #: Where an executable step is looked for after the algorithm path (Ziggy's binPath).
    bin_path: list[Path] = field(default_factory=list)


@dataclass
class ParameterSetXml:
    """A ``parameterSet`` as declared: each parameter's declaration ``{type, value}``, and
    whether it is a ``partial`` override (of the values it names only)."""

    name: str
    values: dict[str, dict[str, Any]]
    partial: bool = False


def files_of(paths: list[Path]) -> list[Path]:
    """The XML files named, a directory standing for its ``*.xml`` files (a ``ziggy.d``)."""
    found = []
    for path in paths:
        if path.is_dir():
            found += sorted(path.glob("*.xml"))
        else:
            found.append(path)
    return found


def read(
    paths: list[Path],
    algorithm_path: list[Path],
    receipt_dir: Path,
    bin_path: Sequence[Path] = (),
) -> tuple[list[dict[str, Any]], Library]:
    """The spec of a definition for each ``pipeline`` of these files, read as one library,
    with the library (its parameter sets and warnings). Steps are looked for under
    ``algorithm_path`` (a Python module's directory becomes the pipeline's python_path),
    an executable then on ``bin_path`` and ``PATH``; an event handler's
    ``${ziggy.pipeline.data.receipt.dir}`` is ``receipt_dir``."""
    library = Library(bin_path=list(bin_path))
    for path in paths:
        _read_file(path, library)
    specs = [
        _pipeline(library, element, algorithm_path, receipt_dir) for element in library.pipelines
    ]
    used = {name for spec in specs for name in spec["parameter_sets"]}
    for name, declared in library.parameter_sets.items():
        if name not in used and not declared.partial:
            library.warnings.append(
                f"parameterSet {name!r}: no pipeline here uses it; not imported"
                " (pipeline params import takes a parameter library)"
            )
    return specs, library


def read_parameter_library(path: Path) -> list[ParameterSetXml]:
    """The parameter sets of a Ziggy parameter library file (``pl-*.xml``): only
    ``parameterSet`` elements, whole or ``partial``."""
    library = Library()
    root = _root(path)
    for element in root:
        if element.tag != "parameterSet":
            raise InvalidInput(
                f"{path}: <{element.tag}>: a parameter library holds parameterSet elements only"
                " (import definitions with pipeline definitions import)"
            )
        _parameter_set(path, element, library)
    if not library.parameter_sets:
        raise InvalidInput(f"{path}: no parameterSet in this parameter library")
    return list(library.parameter_sets.values())


# -- reading ---------------------------------------------------------------------------------


def parse(path: Path, tag: str, what: str) -> ElementTree.Element:
    """The root element of the XML file at ``path``, refused in one line unless it is
    well formed and its root is ``tag`` (``what`` says what such a file is)."""
    try:
        root = ElementTree.parse(path).getroot()
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read ({exc.strerror})") from None
    except ElementTree.ParseError as exc:
        raise InvalidInput(f"{path}: not well-formed XML ({exc})") from None
    if root.tag != tag:
        raise InvalidInput(f"{path}: root element <{root.tag}>: {what} is <{tag}>")
    return root


def _root(path: Path) -> ElementTree.Element:
    root = parse(path, "pipelineDefinition", "a Ziggy definition file's")
    _attributes(path, root, set())
    return root


def _attributes(
    path: Path, element: ElementTree.Element, allowed: set[str], required: set[str] = frozenset()
) -> dict[str, str]:
    """The element's attributes, refusing one Ziggy does not define here (or one naming a
    Java class, which has no meaning here) and a missing required one."""
    label = _label(element)
    for name in element.attrib:
        if name in _JAVA_CLASSES:
            raise InvalidInput(f"{path}: {label}: {name} names {_JAVA_CLASSES[name]}")
        if name not in allowed:
            raise InvalidInput(f"{path}: {label}: attribute {name!r} is not in Ziggy's schema")
    for name in sorted(required):
        if not element.get(name, "").strip():
            raise InvalidInput(f"{path}: {label}: attribute {name!r} is required")
    return dict(element.attrib)


def _label(element: ElementTree.Element) -> str:
    name = element.get("name") or element.get("type")
    return f"<{element.tag} name={name!r}>" if name else f"<{element.tag}>"


def _children(path: Path, element: ElementTree.Element, allowed: set[str]) -> None:
    for child in element:
        if child.tag not in allowed:
            raise InvalidInput(
                f"{path}: {_label(element)}: <{child.tag}> is not an element Ziggy allows there"
            )


def _read_file(path: Path, library: Library) -> None:
    for element in _root(path):
        reader = _READERS.get(element.tag)
        if reader is None:
            raise InvalidInput(
                f"{path}: <{element.tag}>: not an element of Ziggy 0.11's pipeline definitions"
            )
        reader(path, element, library)


def _unique(path: Path, kind: str, name: str, known: Any) -> None:
    if name in known:
        raise InvalidInput(f"{path}: {kind} {name!r} is declared twice")


def _step(path: Path, element: ElementTree.Element, library: Library) -> None:
    attributes = _leaf(path, element, {"name", "file", "description"}, {"name"})
    _unique(path, "step", attributes["name"], library.steps)
    library.steps[attributes["name"]] = attributes


def _pipeline_element(path: Path, element: ElementTree.Element, library: Library) -> None:
    _attributes(
        path, element, {"name", "description", "rootNodeNames", "instancePriority"}, {"name"}
    )
    _children(path, element, {"node", "parameterSet"})
    for child in element:
        if child.tag == "node":
            _attributes(
                path,
                child,
                {"name", "childNodeNames", "singleSubtask", "maxWorkers", "heapSizeGigabytes"},
                {"name"},
            )
            _children(
                path,
                child,
                {"parameterSet", "inputDataFileType", "outputDataFileType", "modelType"},
            )
            for reference in child:
                _attributes(path, reference, {"name"}, {"name"})
        else:
            _attributes(path, child, {"name"}, {"name"})
            _children(path, child, set())
    element.set("source", str(path))
    library.pipelines.append(element)


def _parameter_set(path: Path, element: ElementTree.Element, library: Library) -> None:
    from pipeline.domain import parameters

    attributes = _attributes(path, element, {"name", "partial"}, {"name"})
    _children(path, element, {"parameter"})
    name = attributes["name"]
    _unique(path, "parameterSet", name, library.parameter_sets)
    values: dict[str, dict[str, Any]] = {}
    for parameter in element:
        given = _attributes(path, parameter, {"name", "value", "type"}, {"name"})
        key, text = given["name"], given.get("value", "")
        written = given.get("type", "String")
        scalar = written[: -len("array")] if written.lower().endswith("array") else written
        kind = PARAMETER_TYPES.get(scalar.lower())
        where = f"{path}: parameterSet {name!r}: parameter {key!r}"
        if kind is None:
            raise InvalidInput(
                f"{where}: type {written!r} is not one of Ziggy's parameter types (boolean, byte,"
                " short, int, long, float, double, String, each with 'array' appended)"
            )
        if scalar != written:
            kind += "[]"
        raw: Any = [part.strip() for part in text.split(",")] if text.strip() else []
        if not kind.endswith("[]"):
            raw = text.strip() if kind != "str" else text
        try:
            values[key] = {"type": kind, "value": parameters.coerce(kind, raw)}
        except InvalidInput as exc:
            raise InvalidInput(f"{where}: {exc}") from None
    partial = _boolean(path, element, "partial")
    library.parameter_sets[name] = ParameterSetXml(name, values, partial)


def _boolean(path: Path, element: ElementTree.Element, name: str) -> bool:
    text = element.get(name, "false").strip().lower()
    if text not in ("true", "false"):
        raise InvalidInput(f"{path}: {_label(element)}: {name}={text!r} is not true or false")
    return text == "true"


def _regexp(path: Path, element: ElementTree.Element, library: Library) -> None:
    attributes = _leaf(path, element, {"name", "value"}, {"name", "value"})
    _unique(path, "datastoreRegexp", attributes["name"], library.regexps)
    library.regexps[attributes["name"]] = attributes["value"]


def _datastore_node(path: Path, element: ElementTree.Element, library: Library) -> None:
    for node in element.iter("datastoreNode"):
        _attributes(path, node, {"name", "isRegexp", "nodes"}, {"name"})
        _children(path, node, {"datastoreNode"})
    library.datastore_nodes.append(element)


def _leaf(
    path: Path, element: ElementTree.Element, allowed: set[str], required: set[str]
) -> dict[str, str]:
    """The attributes of an element that holds none, checked, with the file it is in."""
    attributes = _attributes(path, element, allowed, required)
    _children(path, element, set())
    return {**attributes, "source": str(path)}


def _data_file_type(path: Path, element: ElementTree.Element, library: Library) -> None:
    allowed = {"name", "location", "fileNameRegexp", "includeAllFilesInAllSubtasks"}
    attributes = _leaf(path, element, allowed, {"name", "location", "fileNameRegexp"})
    _unique(path, "dataFileType", attributes["name"], library.data_file_types)
    every = _boolean(path, element, "includeAllFilesInAllSubtasks")
    library.data_file_types[attributes["name"]] = {**attributes, "every": every}


def _model_type(path: Path, element: ElementTree.Element, library: Library) -> None:
    allowed = {"type", "fileNameRegex", "versionNumberGroup", "timestampGroup"}
    allowed.add("semanticVersionNumber")  # versions compare by their numbers anyway
    attributes = _leaf(path, element, allowed, {"type", "fileNameRegex"})
    _unique(path, "modelType", attributes["type"], library.model_types)
    library.model_types[attributes["type"]] = attributes


def _event(path: Path, element: ElementTree.Element, library: Library) -> None:
    allowed = {"name", "pipelineName", "enableOnClusterStart", "directory"}
    attributes = _leaf(path, element, allowed, {"name", "pipelineName", "directory"})
    attributes["enabled"] = str(_boolean(path, element, "enableOnClusterStart"))
    library.events.append(attributes)


#: A remote environment's attributes and its children's, Ziggy's name and this product's;
#: those not named here are kept as text.
_ENVIRONMENT = {"batchSystem": "batch_system", "costUnit": "cost_unit"}
_ARCHITECTURE = {
    "cores": "cores",
    "ramGigabytes": "ram_gigabytes",
    "cost": "cost",
    "bandwidthGbps": "bandwidth_gbps",
}
_QUEUE = {
    "maxWallTimeHours": "max_wall_time_hours",
    "maxNodes": "max_nodes",
    "autoSelectable": "auto_selectable",
    "reserved": "reserved",
}
#: What Ziggy reads there that has no meaning here: accepted, with a warning saying so.
_NOT_READ = {
    "queueTimeMetricsClass": "a Java class estimating queue waits: not used here (the jobs'"
    " waits are measured)",
    "nodeCollectionNamesFile": "a file of PBS node collections: not used here",
}


def _remote_environment(path: Path, element: ElementTree.Element, library: Library) -> None:
    allowed = {"name", "batchSystem", "costUnit", "description", "queueTimeMetricsClass"}
    attributes = _attributes(path, element, allowed, {"name", "batchSystem"})
    _children(path, element, {"architecture", "queue"})
    name = attributes["name"]
    _unique(path, "remoteEnvironment", name, library.environments)
    declared: dict[str, Any] = {"description": attributes.get("description", "")}
    declared.update((_ENVIRONMENT[k], v) for k, v in attributes.items() if k in _ENVIRONMENT)
    declared["architectures"], declared["queues"] = {}, {}
    for child in element:
        if child.tag == "architecture":
            names, required = _ARCHITECTURE, {"name", "cores", "ramGigabytes"}
            extra = {"description", "nodeCollectionNamesFile"}
            into = declared["architectures"]
        else:
            names, required, extra, into = _QUEUE, {"name"}, {"description"}, declared["queues"]
        given = _leaf(path, child, {"name", *names, *extra}, required)
        _unique(path, f"remoteEnvironment {name!r}: {child.tag}", given["name"], into)
        into[given["name"]] = {"description": given.get("description", "")} | {
            names[k]: v for k, v in given.items() if k in names
        }
    for element_of in (element, *element):
        for attribute in sorted(set(element_of.attrib) & set(_NOT_READ)):
            library.warnings.append(
                f"remoteEnvironment {name!r}: {_label(element_of)}: {attribute} names"
                f" {_NOT_READ[attribute]}"
            )
    library.environments[name] = declared


_READERS = {
    "step": _step,
    "pipeline": _pipeline_element,
    "parameterSet": _parameter_set,
    "datastoreRegexp": _regexp,
    "datastoreNode": _datastore_node,
    "dataFileType": _data_file_type,
    "modelType": _model_type,
    "pipelineEvent": _event,
    "remoteEnvironment": _remote_environment,
}


# -- a pipeline as a definition's spec --------------------------------------------------------


def _names(text: str | None) -> list[str]:
    return [name.strip() for name in (text or "").split(",") if name.strip()]


def _pipeline(
    library: Library, element: ElementTree.Element, algorithm_path: list[Path], receipt_dir: Path
) -> dict[str, Any]:
    path = Path(element.get("source", ""))
    name = element.get("name", "")
    where = f"{path}: pipeline {name!r}"
    nodes = [child for child in element if child.tag == "node"]
    pipeline_sets = [c.get("name", "") for c in element if c.tag == "parameterSet"]
    names = [node.get("name", "") for node in nodes]
    parents: dict[str, list[str]] = {n: [] for n in names}
    for node in nodes:
        for child in _names(node.get("childNodeNames")):
            if child not in parents:
                raise InvalidInput(f"{where}: node {node.get('name')!r}: unknown child {child!r}")
            parents[child].append(node.get("name", ""))
    roots = _names(element.get("rootNodeNames"))
    for root in roots:
        if root not in parents:
            raise InvalidInput(f"{where}: rootNodeNames: unknown node {root!r}")
    for node_name, above in parents.items():
        if not above and node_name not in roots:
            raise InvalidInput(
                f"{where}: node {node_name!r} is neither in rootNodeNames nor any node's child"
            )
    priority = element.get("instancePriority")
    if priority is not None and priority not in PRIORITIES:
        raise InvalidInput(
            f"{where}: instancePriority {priority!r} is not one of {', '.join(PRIORITIES)}"
        )
    python_path: list[str] = []
    spec_nodes = []
    for node in nodes:
        node_name = node.get("name", "")
        if node_name == DATA_RECEIPT and node_name not in library.steps:
            spec_nodes.append(_receipt_node(library, where, node, parents[node_name]))
        else:
            spec_nodes.append(
                _node(library, where, node, parents[node_name], algorithm_path, python_path)
            )
        if priority is not None:
            spec_nodes[-1]["execution"] = {"priority": PRIORITIES[priority]}
    used_sets = list(
        dict.fromkeys([*pipeline_sets, *(s for n in spec_nodes for s in n["parameter_sets"])])
    )
    declared_sets = {
        s: library.parameter_sets[s].values
        for s in used_sets
        if s in library.parameter_sets and not library.parameter_sets[s].partial
    }
    events = {}
    for event in library.events:
        if event["pipelineName"] != name:
            continue
        directory = event["directory"]
        if directory == RECEIPT_PROPERTY:
            directory = str(receipt_dir)
        elif "${" in directory:
            raise InvalidInput(
                f"{event['source']}: pipelineEvent {event['name']!r}: directory {directory!r}:"
                f" of Ziggy's properties only {RECEIPT_PROPERTY} is known here (this product's"
                " receipt_dir); give a directory"
            )
        events[event["name"]] = {"directory": directory, "enabled": event["enabled"] == "True"}
    for event in library.events:
        if not any(event["pipelineName"] == p.get("name") for p in library.pipelines):
            raise InvalidInput(
                f"{event['source']}: pipelineEvent {event['name']!r}: unknown pipeline"
                f" {event['pipelineName']!r}"
            )
    spec: dict[str, Any] = {
        "source": str(path),
        "name": name,
        "description": element.get("description", ""),
        "python_path": python_path,
        "parameter_sets": declared_sets,
        "pipeline_parameter_sets": pipeline_sets,
        "data_file_types": {
            n: _file_type(library, n, declared) for n, declared in library.data_file_types.items()
        },
        "model_types": {
            n: _model(library, n, declared) for n, declared in library.model_types.items()
        },
        "events": events,
        "remote_environments": library.environments,
        "nodes": spec_nodes,
    }
    return spec


def _receipt_node(
    library: Library, where: str, node: ElementTree.Element, parents: list[str]
) -> dict[str, Any]:
    """Ziggy's built-in data receipt node: it receives, as a task each, the deliveries
    waiting in the receipt directory (``receipt_dir``)."""
    if parents:
        raise InvalidInput(
            f"{where}: node {DATA_RECEIPT!r} is a child of {', '.join(parents)}: Ziggy's data"
            " receipt starts its pipeline"
        )
    inputs = [r.get("name") for r in node if r.tag == "inputDataFileType"]
    for kind in inputs:
        if kind not in library.data_file_types:
            raise InvalidInput(f"{where}: node {DATA_RECEIPT!r}: unknown dataFileType {kind!r}")
    return {
        "name": DATA_RECEIPT,
        "description": "Ziggy's data receipt",
        "algorithm": DATA_RECEIPT,
        "inputs": inputs,
        "parameter_sets": [r.get("name") for r in node if r.tag == "parameterSet"],
    }


def _node(
    library: Library,
    where: str,
    node: ElementTree.Element,
    parents: list[str],
    algorithm_path: list[Path],
    python_path: list[str],
) -> dict[str, Any]:
    name = node.get("name", "")
    step = library.steps.get(name)
    if step is None:
        raise InvalidInput(f"{where}: node {name!r}: no step of that name is declared")
    algorithm, calls = _algorithm(step, algorithm_path, library.bin_path, python_path)
    spec: dict[str, Any] = {
        "name": name,
        "description": step.get("description", ""),
        "algorithm": algorithm,
        "calls": calls,
        "after": parents,
        "inputs": [r.get("name") for r in node if r.tag == "inputDataFileType"],
        "outputs": [r.get("name") for r in node if r.tag == "outputDataFileType"],
        "subtasks": "single" if _boolean(Path(where), node, "singleSubtask") else "paired",
        "parameter_sets": [r.get("name") for r in node if r.tag == "parameterSet"],
        "models": [r.get("name") for r in node if r.tag == "modelType"],
    }
    for attribute, key in (
        ("maxWorkers", "max_workers"),
        ("heapSizeGigabytes", "heap_size_gigabytes"),
    ):
        text = node.get(attribute)
        if text is not None:
            if not re.fullmatch(r"[0-9]+", text.strip()):
                raise InvalidInput(
                    f"{where}: node {name!r}: {attribute}={text!r} is not a whole number"
                )
            spec[key] = int(text)
    for kind in (*spec["inputs"], *spec["outputs"]):
        if kind not in library.data_file_types:
            raise InvalidInput(f"{where}: node {name!r}: unknown dataFileType {kind!r}")
    for kind in spec["models"]:
        if kind not in library.model_types:
            raise InvalidInput(f"{where}: node {name!r}: unknown modelType {kind!r}")
    return spec


def _algorithm(
    step: dict[str, str], algorithm_path: list[Path], bin_path: list[Path], python_path: list[str]
) -> tuple[Any, str]:
    """A step's algorithm: a Python module's function of the step's name (called with
    Ziggy's inputs dict), else an executable, found as Ziggy finds them (under the
    algorithm path, then on the bin path; ``PATH`` last)."""
    name, file = step["name"], step.get("file") or step["name"]
    where = f"{step['source']}: step {name!r}"
    if "\\" in file or Path(file).is_absolute() or ".." in Path(file).parts:
        raise InvalidInput(f"{where}: file {file!r}: give a path relative to the algorithm path")
    looked = ", ".join(str(d) for d in algorithm_path) or "no directory"
    if file.endswith(".py"):
        for directory in algorithm_path:
            if (directory / file).is_file():
                if str(directory.resolve()) not in python_path:
                    python_path.append(str(directory.resolve()))
                module = file[: -len(".py")].replace("/", ".")
                return f"{module}:{name}", "ziggy"
        raise InvalidInput(
            f"{where}: file {file!r} not found under {looked} (--algorithm-path names where"
            " step files live)"
        )
    for directory in algorithm_path:
        if executables.runnable(directory / file):
            return {"executable": str((directory / file).resolve())}, "context"
    found = executables.find(file, bin_path) if "/" not in file else None
    if found is None:
        raise InvalidInput(
            f"{where}: executable {file!r} not found (or not executable) under {looked},"
            f" {executables.searched(bin_path)}"
        )
    return {"executable": found}, "context"


def _file_type(library: Library, name: str, declared: dict[str, Any]) -> dict[str, Any]:
    """A ``dataFileType`` as this product's: its location's datastore regexps become the
    placeholders whose values, joined by "/", are the units of work."""
    where = f"{declared['source']}: dataFileType {name!r}"
    parts = [part.strip() for part in declared["location"].split("/")]
    _check_location(library, where, parts)
    placeholders = [
        part for part in parts if part in library.regexps and _is_regexp_node(library, part)
    ]
    if not placeholders:
        raise InvalidInput(
            f"{where}: location {declared['location']!r} has no datastore regexp: one or more,"
            " the levels of the unit of work, are needed"
        )
    for regexp in placeholders:
        if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", regexp):
            raise InvalidInput(
                f"{where}: datastoreRegexp {regexp!r}: name it with letters, digits and _ only"
            )
    location = "/".join("{" + part + "}" if part in placeholders else part for part in parts)
    values = {regexp: library.regexps[regexp] for regexp in placeholders}
    return {
        "location": location,
        "regexp": declared["fileNameRegexp"],
        "unit_regexp": values if len(values) > 1 else values[placeholders[0]],
        "every_subtask": declared["every"],
    }


def _is_regexp_node(library: Library, name: str) -> bool:
    return any(
        node.get("name") == name and node.get("isRegexp", "false").strip().lower() == "true"
        for top in library.datastore_nodes
        for node in top.iter("datastoreNode")
    )


def _check_location(library: Library, where: str, parts: list[str]) -> None:
    """Refuse a location that is not a path of the datastore nodes' tree: each part a
    node listed in the ``nodes`` of the one before, defined inside it or beside it."""
    siblings = library.datastore_nodes
    current: ElementTree.Element | None = None
    for part in parts:
        if current is not None and part not in _names(current.get("nodes")):
            listed = current.get("nodes") or "none"
            raise InvalidInput(
                f"{where}: location part {part!r} is not among the nodes of datastoreNode"
                f" {current.get('name')!r} ({listed})"
            )
        for candidates in ([] if current is None else list(current), siblings):
            found = next((n for n in candidates if n.get("name") == part), None)
            if found is not None:
                siblings = candidates
                break
        else:
            raise InvalidInput(f"{where}: location part {part!r} is no datastoreNode")
        current = found


def _model(library: Library, name: str, declared: dict[str, str]) -> dict[str, str]:
    """A ``modelType`` as this product's: its version and timestamp groups named."""
    where = f"{declared['source']}: modelType {name!r}"
    pattern = declared["fileNameRegex"]
    for attribute, group in (("versionNumberGroup", "version"), ("timestampGroup", "timestamp")):
        text = declared.get(attribute, "-1").strip()
        if not re.fullmatch(r"-?[0-9]+", text):
            raise InvalidInput(f"{where}: {attribute}={text!r} is not a whole number")
        if int(text) > 0:
            pattern = _name_group(pattern, int(text), group, where)
    return {"pattern": pattern}


def _name_group(pattern: str, number: int, name: str, where: str) -> str:
    """``pattern`` with its ``number``-th capturing group named ``name``."""
    count = 0
    # A capturing group: "(" not followed by "?", or a group named already ("(?P<").
    for match in re.finditer(r"\\.|\((?!\?)|\(\?P<", pattern):
        if match.group(0) in ("(", "(?P<"):
            count += 1
            if count == number:
                at = match.start()
                return f"{pattern[: at + 1]}?P<{name}>{pattern[at + 1 :]}"
    raise InvalidInput(f"{where}: the regex has no group {number}")


# -- writing -------------------------------------------------------------------------------------


def export(spec: dict[str, Any], parameter_sets: dict[str, dict[str, Any]]) -> str:
    """The definition ``spec`` as a Ziggy ``pipelineDefinition`` file that imports back to
    the same definition (``--algorithm-path`` its python_path); ``parameter_sets`` the
    current declarations of the sets it uses. Refused, in one line, for what Ziggy cannot
    say: a Python algorithm that takes a ``SubtaskContext``, groups of N subtasks, a
    shell-style pattern or several nodes' differing priorities."""
    name = spec["name"]
    lines = ["<?xml version='1.0' encoding='UTF-8'?>", "<pipelineDefinition>"]
    python_path = [Path(p) for p in spec.get("python_path") or []]
    nodes = spec["nodes"]
    for node in nodes:
        if node["algorithm"] != DATA_RECEIPT:  # Ziggy's own: no step of the user's
            lines.append(f"  <step{_attrs(_step_of(node, python_path))}/>")
    roots = [n["name"] for n in nodes if not n["after"]]
    priorities = {node.get("execution", {}).get("priority", 5) for node in nodes}
    pipeline = {"name": name, "description": spec.get("description", "")}
    pipeline["rootNodeNames"] = ", ".join(roots)
    if priorities != {5}:
        ziggy = {v: k for k, v in PRIORITIES.items()}
        if len(priorities) > 1 or next(iter(priorities)) not in ziggy:
            raise InvalidInput(
                f"pipeline {name!r}: node priorities {sorted(priorities)}: Ziggy has one priority"
                f" per pipeline, one of {', '.join(f'{v} ({k})' for k, v in PRIORITIES.items())}"
            )
        pipeline["instancePriority"] = ziggy[next(iter(priorities))]
    lines.append(f"  <pipeline{_attrs(pipeline)}>")
    for set_name in spec.get("pipeline_parameter_sets", []):
        lines.append(f"    <parameterSet{_attrs({'name': set_name})}/>")
    for node in nodes:
        lines += _node_xml(spec, node)
    lines.append("  </pipeline>")
    for event_name, event in spec.get("events", {}).items():
        attributes = {
            "name": event_name,
            "pipelineName": name,
            "enableOnClusterStart": str(event.get("enabled", True)).lower(),
            "directory": event["directory"],
        }
        lines.append(f"  <pipelineEvent{_attrs(attributes)}/>")
    for set_name, values in parameter_sets.items():
        lines.append(f"  <parameterSet{_attrs({'name': set_name})}>")
        lines += [f"    {parameter_xml(key, decl)}" for key, decl in values.items()]
        lines.append("  </parameterSet>")
    lines += _datastore_xml(name, spec["data_file_types"])
    for kind_name, model in spec.get("model_types", {}).items():
        lines.append(f"  <modelType{_attrs(_model_attributes(kind_name, model['pattern']))}/>")
    for environment_name, environment in spec.get("remote_environments", {}).items():
        lines += _environment_xml(environment_name, environment)
    lines.append("</pipelineDefinition>")
    return "\n".join(lines) + "\n"


def _environment_xml(name: str, environment: dict[str, Any]) -> list[str]:
    """A ``remoteEnvironment`` element: the attributes Ziggy names, those unset left out."""

    def ziggy(names: dict[str, str], item: str, declared: dict[str, Any]) -> dict[str, Any]:
        given = {"name": item, "description": declared.get("description", "")}
        for written, key in names.items():
            value = declared.get(key)
            if isinstance(value, bool):
                given[written] = str(value).lower()
            elif isinstance(value, float) and value.is_integer():
                given[written] = int(value)  # Ziggy's ramGigabytes is an int
            elif value is not None:
                given[written] = value
        return given

    lines = [f"  <remoteEnvironment{_attrs(ziggy(_ENVIRONMENT, name, environment))}>"]
    for tag, names, key in (
        ("architecture", _ARCHITECTURE, "architectures"),
        ("queue", _QUEUE, "queues"),
    ):
        for item, declared in environment.get(key, {}).items():
            lines.append(f"    <{tag}{_attrs(ziggy(names, item, declared))}/>")
    lines.append("  </remoteEnvironment>")
    return lines


def parameter_xml(key: str, declaration: dict[str, Any]) -> str:
    """One ``parameter`` element of a declaration ``{type, value}``."""
    kind = declaration["type"]
    array = kind.endswith("[]")
    ziggy = ZIGGY_TYPES[kind.removesuffix("[]")] + ("array" if array else "")
    values = declaration["value"] if array else [declaration["value"]]
    text = ", ".join(str(v).lower() if isinstance(v, bool) else str(v) for v in values)
    return f"<parameter{_attrs({'name': key, 'value': text, 'type': ziggy})}/>"


def xml_attributes(attributes: dict[str, Any]) -> str:
    """Attributes as XML writes them, each quoted."""
    return "".join(f" {key}={quoteattr(str(value))}" for key, value in attributes.items())


_attrs = xml_attributes


def _step_of(node: dict[str, Any], python_path: list[Path]) -> dict[str, str]:
    name, algorithm = node["name"], node["algorithm"]
    step = {"name": name}
    if isinstance(algorithm, dict):
        step["file"] = algorithm["executable"]
    elif node.get("calls") != "ziggy":
        raise InvalidInput(
            f"node {name!r}: its algorithm takes a SubtaskContext: Ziggy's Python steps take"
            " its inputs dict (calls: ziggy), or are executables"
        )
    else:
        module, _, function = algorithm.partition(":")
        if function != name:
            raise InvalidInput(
                f"node {name!r}: runs {algorithm!r}: a Ziggy step runs the function of its name"
            )
        step["file"] = module.replace(".", "/") + ".py"
        if not any((p / step["file"]).is_file() for p in python_path):
            raise InvalidInput(f"node {name!r}: {step['file']} is not under its python_path")
    if node.get("description"):
        step["description"] = node["description"]
    return step


def _node_xml(spec: dict[str, Any], node: dict[str, Any]) -> list[str]:
    receives = node["algorithm"] == DATA_RECEIPT  # its subtasks say nothing: it has none
    if not receives and (isinstance(node["subtasks"], dict) or node["subtasks"] == "per_file"):
        raise InvalidInput(
            f"node {node['name']!r}: subtasks {node['subtasks']!r}: Ziggy pairs inputs by their"
            " regexp groups (paired) or gives one single subtask"
        )
    children = [n["name"] for n in spec["nodes"] if node["name"] in n["after"]]
    attributes = {"name": node["name"]}
    if children:
        attributes["childNodeNames"] = ", ".join(children)
    if node["subtasks"] == "single":
        attributes["singleSubtask"] = "true"
    if node.get("max_workers"):
        attributes["maxWorkers"] = node["max_workers"]
    if node.get("heap_size_gigabytes"):
        attributes["heapSizeGigabytes"] = int(node["heap_size_gigabytes"])
    lines = [f"    <node{_attrs(attributes)}>"]
    pipeline_sets = spec.get("pipeline_parameter_sets", [])
    for tag, names in (
        ("parameterSet", [s for s in node["parameter_sets"] if s not in pipeline_sets]),
        ("inputDataFileType", node["inputs"]),
        ("outputDataFileType", node["outputs"]),
        ("modelType", node.get("models", [])),
    ):
        lines += [f"      <{tag}{_attrs({'name': n})}/>" for n in names]
    return [*lines, "    </node>"]


def _datastore_xml(name: str, file_types: dict[str, dict[str, Any]]) -> list[str]:
    """Datastore regexps, the datastore nodes' tree of every location, and the types."""
    regexps: dict[str, str] = {}
    tree: dict[str, Any] = {}
    types = []
    for kind_name, kind in file_types.items():
        if kind.get("regexp") is None:
            raise InvalidInput(
                f"data file type {kind_name!r}: pattern {kind['pattern']!r}: Ziggy's file types"
                " name files by a regular expression (regexp)"
            )
        parts = kind["location"].split("/")
        given = kind.get("unit_regexp")
        for placeholder in (p[1:-1] for p in parts if p.startswith("{")):
            value = (given.get(placeholder) if isinstance(given, dict) else given) or ".*"
            if regexps.setdefault(placeholder, value) != value:
                raise InvalidInput(
                    f"pipeline {name!r}: placeholder {placeholder!r} has two unit regexps"
                )
        level = tree
        for part in parts:
            level = level.setdefault(part.strip("{}") if part.startswith("{") else part, {})
        plain = "/".join(p.strip("{}") for p in parts)
        attributes = {"name": kind_name, "location": plain, "fileNameRegexp": kind["regexp"]}
        if kind.get("every_subtask"):
            attributes["includeAllFilesInAllSubtasks"] = "true"
        types.append(f"  <dataFileType{_attrs(attributes)}/>")
    lines = [f"  <datastoreRegexp{_attrs({'name': n, 'value': v})}/>" for n, v in regexps.items()]

    def nodes(level: dict[str, Any], indent: str) -> None:
        for part, below in level.items():
            attributes = {"name": part}
            if part in regexps:
                attributes["isRegexp"] = "true"
            if below:
                attributes["nodes"] = ", ".join(below)
                lines.append(f"{indent}<datastoreNode{_attrs(attributes)}>")
                nodes(below, indent + "  ")
                lines.append(f"{indent}</datastoreNode>")
            else:
                lines.append(f"{indent}<datastoreNode{_attrs(attributes)}/>")

    nodes(tree, "  ")
    return [*lines, *types]


def _model_attributes(name: str, pattern: str) -> dict[str, Any]:
    attributes: dict[str, Any] = {"type": name}
    compiled = re.compile(pattern)
    numbers = {group: index for group, index in compiled.groupindex.items()}
    attributes["fileNameRegex"] = re.sub(r"\(\?P<(version|timestamp)>", "(", pattern)
    if "version" in numbers:
        attributes["versionNumberGroup"] = numbers["version"]
    if "timestamp" in numbers:
        attributes["timestampGroup"] = numbers["timestamp"]
    return attributes
