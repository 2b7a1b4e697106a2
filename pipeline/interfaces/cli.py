"""The ``pipeline`` command: cluster, definitions, parameters, instances, tasks.

Every command goes through the operations facade (``pipeline.operations.facade``) or,
for the cluster's processes, ``pipeline.deploy``; the read commands (``instances``,
``tasks``, ``subtasks``, ``task``) ask the home's HTTP API instead when it runs with this
shell's settings (``local_api``), which answers the facade's dicts without the half
second of imports the facade costs a new process. Every error an operator can cause prints
as one line on stderr with a non-zero exit status; listing and detail commands take
``--json``, a stable contract for scripts.
"""

from __future__ import annotations

import json
import sys
import time
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
import typer.main
from rich.console import Console

# The click that Typer runs on: its own copy since Typer 0.24, whose exceptions are not
# the installed click's.
try:
    from typer._click import core, exceptions, globals
except ImportError:  # an older Typer, on click itself
    from click import core, exceptions, globals  # type: ignore[no-redef]

from pipeline.domain.listing import FILES_SHOWN, TABLE_ROWS
from pipeline.domain.states import STOPPED_STATES, InstanceState
from pipeline.interfaces import reads
from pipeline.interfaces.reads import console, print_json, private, table

if TYPE_CHECKING:
    from pipeline.operations.facade import Report

#: Exit statuses of every command (README: Exit statuses): success; refused, or errors in
#: the run; the command line itself is wrong; a deadline passed (``wait --timeout``).
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
#: What ``pipeline wait`` exits with for an instance that stopped.
EXIT_COMPLETED, EXIT_ERRORS = EXIT_OK, EXIT_REFUSED
WAIT_POLL_SECONDS = 0.5

app = typer.Typer(
    help="A Ziggy-style science pipeline on Celery.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
cluster_app = typer.Typer(help="The local cluster under PIPELINE_HOME.", no_args_is_help=True)
definitions_app = typer.Typer(help="Pipeline definitions.", no_args_is_help=True)
params_app = typer.Typer(help="Parameter sets.", no_args_is_help=True)
datastore_app = typer.Typer(help="Data into the datastore.", no_args_is_help=True)
app.add_typer(cluster_app, name="cluster")
app.add_typer(datastore_app, name="datastore")
app.add_typer(definitions_app, name="definitions")
app.add_typer(params_app, name="params")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
LimitOption = Annotated[
    int | None,
    typer.Option(
        "--limit",
        min=1,
        metavar="N",
        help=f"Show N rows (default {TABLE_ROWS}; with --json, every row unless given).",
    ),
]
AllOption = Annotated[bool, typer.Option("--all", help="Show every row.")]
#: The help of ``restart --mode`` until the help is shown, which names every mode.
MODES_HELP = "The restart mode."


# -- cluster ---------------------------------------------------------------------------------


@cluster_app.command("init")
def cluster_init(
    sample_data: Annotated[
        bool, typer.Option(help="Write the sample pipeline's images into the datastore.")
    ] = True,
    as_json: JsonOption = False,
) -> None:
    """Create PIPELINE_HOME and its database, and import every definition."""
    private()
    from pipeline.deploy import cluster

    summary = cluster.init(sample_data=sample_data)
    if as_json:
        return print_json(summary)
    console.print(f"cluster home  {summary['home']}")
    console.print(f"database      {summary['database']}")
    console.print(f"broker        {summary['broker']}")
    console.print(f"datastore     {summary['datastore']}")
    for item in summary["definitions"]:
        note = "imported" if item["new"] else "unchanged"
        console.print(f"definition    {item['name']} version {item['version']} ({note})")
    if summary["sample_files_received"]:
        console.print(f"sample data   {summary['sample_files_received']} images received")


@cluster_app.command("start")
def cluster_start(
    workers: Annotated[int | None, typer.Option(min=1, help="Worker processes to run.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Start Redis, workers, beat, the HTTP API and Flower: only those not already running."""
    private()
    from pipeline.deploy import cluster

    with console.status("starting the cluster") as spinner:
        rows = cluster.start(workers, progress=lambda text: spinner.update(text))
    _show_status(rows, as_json)


@cluster_app.command("stop")
def cluster_stop() -> None:
    """Stop the processes `cluster start` started."""
    private()
    from pipeline.deploy import cluster

    with console.status("stopping the cluster"):
        stopped = cluster.stop()
    console.print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


@cluster_app.command("status")
def cluster_status(as_json: JsonOption = False) -> None:
    """Which home this shell uses, which of its cluster's processes are alive, and whether
    beat's monitor runs."""
    from pipeline.deploy import cluster
    from pipeline.home import find_home

    private()

    rows = cluster.status()
    if not as_json:
        home = find_home()
        console.print(f"home {home.path} ({home.reason})", highlight=False, soft_wrap=True)
    _show_status(rows, as_json)
    if not as_json:
        console.print(reads.facade().monitor_health()["message"], markup=False)


@cluster_app.command("credentials")
def cluster_credentials(as_json: JsonOption = False) -> None:
    """The HTTP API's URL and bearer token, and Flower's URL and login."""
    private()
    from pipeline.deploy import cluster

    found = cluster.credentials()
    if as_json:
        return print_json(found)
    table("credentials", ["what", "value"], [[key, value] for key, value in found.items()])


@app.command("api")
def api(
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(min=1, max=65535, help="Port to listen on.")] = None,
) -> None:
    """Serve the HTTP API alone (FastAPI on uvicorn; host and port from settings)."""
    private()
    from pipeline.interfaces.api import serve

    serve(host, port)


@app.command()
def worker(
    queues: Annotated[
        str | None,
        typer.Option(help="Queues to consume, comma-separated (default: every queue named)."),
    ] = None,
    concurrency: Annotated[
        int | None, typer.Option(min=1, help="Pool processes (default: worker_concurrency).")
    ] = None,
    hostname: Annotated[
        str | None, typer.Option(help="This host's name in the records (worker@NAME).")
    ] = None,
) -> None:
    """Run a Celery worker in the foreground, on any host, pointed at the central host."""
    private()
    from pipeline.deploy import worker_command

    worker_command.run(queues, concurrency, hostname)


def _show_status(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        return print_json(rows)
    table(
        "cluster",
        ["name", "pid", "alive", "url"],
        [[r["name"], r["pid"], "yes" if r["alive"] else "no", r["url"]] for r in rows],
    )


# -- definitions and parameters --------------------------------------------------------------


@definitions_app.command("import")
def definitions_import(files: Annotated[list[Path], typer.Argument(help="YAML files.")]) -> None:
    """Import definition files, all or nothing; a changed file becomes a new version."""
    for item in reads.facade().import_definitions(files):
        note = "imported" if item["new"] else "unchanged"
        console.print(f"{item['name']} version {item['version']} ({note})")


@definitions_app.command("list")
def definitions_list(as_json: JsonOption = False) -> None:
    """The newest version of every pipeline definition."""
    rows = reads.facade().list_definitions()
    if as_json:
        return print_json(rows)
    table(
        "pipelines",
        ["name", "version", "nodes", "imported"],
        [[r["name"], r["version"], " -> ".join(r["nodes"]), r["imported_at"]] for r in rows],
    )


@definitions_app.command("show")
def definitions_show(name: str, as_json: JsonOption = False) -> None:
    """A pipeline's nodes, their algorithms, inputs, outputs and execution settings."""
    spec = reads.facade().show_definition(name)
    if as_json:
        return print_json(spec)
    console.print(
        f"[bold]{spec['name']}[/] version {spec['version']}  {spec.get('description', '')}"
    )
    console.print(f"from {spec['source']}; Python algorithms imported from", end=" ")
    console.print(", ".join(spec.get("python_path") or []) or "the installed packages")
    table(
        "nodes",
        ["node", "after", "algorithm", "inputs", "outputs", "subtasks", "parameter sets", "queue"],
        [
            [
                n["name"],
                ", ".join(n["after"]),
                _algorithm_label(n["algorithm"]),
                ", ".join(n["inputs"]),
                ", ".join(n["outputs"]),
                _subtasks_label(n["subtasks"]),
                ", ".join(n["parameter_sets"]),
                n["execution"]["queue"],
            ]
            for n in spec["nodes"]
        ],
    )


def _algorithm_label(algorithm: Any) -> str:
    return algorithm if isinstance(algorithm, str) else algorithm["executable"]


def _subtasks_label(subtasks: Any) -> str:
    return subtasks if isinstance(subtasks, str) else f"groups of {subtasks['group_size']}"


@params_app.command("list")
def params_list(as_json: JsonOption = False) -> None:
    """The newest version of every parameter set."""
    rows = reads.facade().list_parameter_sets()
    if as_json:
        return print_json(rows)
    table(
        "parameter sets",
        ["name", "version", "locked", "parameters"],
        [[r["name"], r["version"], r["locked"], len(r["parameters"])] for r in rows],
    )


@params_app.command("show")
def params_show(
    name: str,
    version: Annotated[int | None, typer.Option(help="An older version.")] = None,
    as_json: JsonOption = False,
) -> None:
    """A parameter set's values and types."""
    found = reads.facade().show_parameter_set(name, version)
    if as_json:
        return print_json(found)
    _show_parameter_set(found)


def _show_parameter_set(found: dict[str, Any]) -> None:
    lock = "locked" if found["locked"] else "unlocked"
    table(
        f"{found['name']} version {found['version']} ({lock})",
        ["parameter", "type", "value"],
        [[p["name"], p["type"], json.dumps(p["value"])] for p in found["parameters"]],
    )


@params_app.command("set")
def params_set(
    name: str,
    assignments: Annotated[list[str], typer.Argument(help="key=value pairs.")],
    as_json: JsonOption = False,
) -> None:
    """Change values; a locked version (used by an instance) gets a new version instead."""
    found = reads.facade().set_parameters(name, assignments)
    if as_json:
        return print_json(found)
    _show_parameter_set(found)


# -- instances and tasks ---------------------------------------------------------------------


@app.command()
def submit(
    pipeline: str,
    start_node: Annotated[str | None, typer.Option(help="First node to run.")] = None,
    end_node: Annotated[str | None, typer.Option(help="Last node to run.")] = None,
    priority: Annotated[int | None, typer.Option(help="0 (first) to 9 (last).")] = None,
    as_json: JsonOption = False,
) -> None:
    """Submit a pipeline instance."""
    facade = reads.facade()
    data = facade.submit(pipeline, start_node, end_node, priority)
    if as_json:
        return print_json(data)
    console.print(f"{facade.submitted_line(data)}; follow it with: pipeline wait {data['id']}")


@app.command()
def instances(
    limit: LimitOption = None, every: AllOption = False, as_json: JsonOption = False
) -> None:
    """Pipeline instances and their states: the newest, in id order."""
    reads.show_instances(_limit(limit, every), every, as_json)


@app.command()
def tasks(
    instance: int,
    limit: LimitOption = None,
    every: AllOption = False,
    as_json: JsonOption = False,
) -> None:
    """The tasks of an instance in id order: P-state, error flag and subtask counts."""
    reads.show_tasks(instance, _limit(limit, every), every, as_json)


@app.command()
def task(
    task_id: Annotated[int, typer.Argument(metavar="TASK")], as_json: JsonOption = False
) -> None:
    """A task's details and its history of transitions."""
    reads.show_task(task_id, as_json)


@app.command()
def subtasks(
    task_id: Annotated[int, typer.Argument(metavar="TASK")],
    limit: LimitOption = None,
    every: AllOption = False,
    as_json: JsonOption = False,
) -> None:
    """A task's subtasks in index order: state, attempts and error."""
    reads.show_subtasks(task_id, _limit(limit, every), every, as_json)


def _limit(limit: int | None, every: bool) -> int | None:
    """``--limit``, refused beside ``--all``."""
    if every and limit is not None:
        raise _usage("give --limit or --all, not both")
    return limit


@app.command()
def logs(
    task_id: Annotated[int, typer.Argument(metavar="TASK")],
    subtask: Annotated[int | None, typer.Option(help="Only this subtask's log.")] = None,
    as_json: JsonOption = False,
) -> None:
    """The algorithm's output (stdout and stderr) of each subtask of a task."""
    found = reads.facade().logs(task_id, subtask)
    if as_json:
        return print_json(found)
    for entry in found:
        console.rule(f"subtask {entry['index']}  {entry['path']}")
        sys.stdout.write(entry["text"] or "(no output)\n")
        sys.stdout.flush()


@app.command()
def wait(
    instance: int,
    timeout: Annotated[float | None, typer.Option(help="Give up after this many seconds.")] = None,
) -> None:
    """Wait for an instance: exit 0 when COMPLETED, 1 when it stops with errors, 3 on timeout."""
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    facade = reads.facade()
    deadline = time.monotonic() + timeout if timeout else None
    columns = [
        TextColumn("instance {task.fields[id]} {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("subtasks"),
        TimeElapsedColumn(),
    ]
    with Progress(*columns, console=console, transient=False) as progress:
        bar = progress.add_task("", total=None, id=instance)
        while True:
            summary = facade.get_instance(instance)
            done = summary["completed_subtasks"] + summary["failed_subtasks"]
            progress.update(
                bar,
                description=summary["state"],
                completed=done,
                total=max(summary["total_subtasks"], 1),
            )
            if summary["state"] in STOPPED_STATES:
                break
            if deadline is not None and time.monotonic() > deadline:
                console.print(f"instance {instance} still {summary['state']} after {timeout:g} s")
                raise typer.Exit(EXIT_TIMEOUT)
            time.sleep(WAIT_POLL_SECONDS)
    state = summary["state"]
    console.print(f"instance {instance} {state}")
    raise typer.Exit(EXIT_COMPLETED if state == InstanceState.COMPLETED else EXIT_ERRORS)


# -- alerts ----------------------------------------------------------------------------------

alerts_app = typer.Typer(
    help="Alerts: lost work the monitor dispatched again or failed.", invoke_without_command=True
)
app.add_typer(alerts_app, name="alerts")


@alerts_app.callback()
def alerts_list(
    ctx: typer.Context,
    all_: Annotated[bool, typer.Option("--all", help="Acknowledged ones too.")] = False,
    as_json: JsonOption = False,
) -> None:
    """List unacknowledged alerts (time, severity, instance, task, message)."""
    if ctx.invoked_subcommand:
        return
    rows = reads.facade().list_alerts(all_)
    if as_json:
        return print_json(rows)
    table(
        "alerts",
        ["id", "time", "severity", "instance", "task", "message", "acknowledged"],
        [
            [
                r["id"],
                r["at"],
                r["severity"],
                r["instance_id"],
                r["task_id"],
                r["message"],
                "yes" if r["acknowledged"] else "",
            ]
            for r in rows
        ],
    )


@alerts_app.command("ack")
def alerts_ack(alert_id: Annotated[int, typer.Argument(metavar="ID")]) -> None:
    """Acknowledge an alert: it leaves the default list."""
    reads.facade().acknowledge_alert(alert_id)
    console.print(f"alert {alert_id} acknowledged")


# -- restart and halt ------------------------------------------------------------------------


@app.command()
def restart(
    tasks: Annotated[
        list[str] | None, typer.Argument(help="TASK or TASK:MODE, one mode per task.")
    ] = None,
    mode: Annotated[str | None, typer.Option(help=MODES_HELP)] = None,
    instance: Annotated[
        int | None, typer.Option(help="Restart every failed task of this instance.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(help="Say what would run; change nothing.")] = False,
    queue: Annotated[str | None, typer.Option(help="Run on this queue from now on.")] = None,
    timeout: Annotated[float | None, typer.Option(help="New subtask timeout (s).")] = None,
    max_failed_subtasks: Annotated[int | None, typer.Option()] = None,
    max_auto_resubmits: Annotated[int | None, typer.Option()] = None,
    priority: Annotated[int | None, typer.Option(help="0 (first) to 9 (last).")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Other execution setting, key=value.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Restart failed tasks: each in its own mode, or every failed task of an instance."""
    from pipeline.domain.parameters import parse_assignments

    changes: dict[str, Any] = parse_assignments(set_ or [])
    for key, value in (
        ("queue", queue),
        ("subtask_timeout", timeout),
        ("max_failed_subtasks", max_failed_subtasks),
        ("max_auto_resubmits", max_auto_resubmits),
        ("priority", priority),
    ):
        if value is not None:
            changes[key] = value
    if instance is not None:
        if tasks:
            raise _usage("give tasks or --instance, not both")
        if not mode:
            raise _usage("--instance needs --mode")
        report = reads.facade().restart_failed(instance, mode, changes, dry_run)
    else:
        if not tasks:
            raise _usage("name the tasks to restart, or --instance ID")
        report = reads.facade().restart(tasks, mode, changes, dry_run)
    _show_report(report, as_json, "restart (dry run)" if dry_run else "restart")


@app.command()
def halt(
    tasks: Annotated[list[int] | None, typer.Argument(metavar="[TASK]...")] = None,
    instance: Annotated[int | None, typer.Option(help="Halt every running task.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Halt tasks: queued work dropped, running subtasks revoked, the error flag set."""
    if instance is not None:
        report = reads.facade().halt_instance(instance)
    elif tasks:
        report = reads.facade().halt(tasks)
    else:
        raise _usage("name the tasks to halt, or --instance ID")
    _show_report(report, as_json, "halt")


def _show_report(report: Report, as_json: bool, title: str) -> None:
    """Print what happened to each task; exit 1 when any was refused."""
    if as_json:
        print_json(report.as_dicts())
    else:
        table(
            title,
            ["task", "mode", "result", "from", "subtasks", "message"],
            [
                [
                    o.task_id or "-",
                    o.mode,
                    "ok" if o.ok else "refused",
                    o.start_from,
                    ", ".join(map(str, o.subtasks)),
                    o.message,
                ]
                for o in report.outcomes
            ],
        )
    if not report.ok:
        raise typer.Exit(1)


# -- the datastore ---------------------------------------------------------------------------


@datastore_app.command("import")
def datastore_import(
    directory: Annotated[Path, typer.Argument(metavar="DIR", help="The files to import.")],
    data_file_type: Annotated[str, typer.Option("--type", help="Their data file type.")],
    unit: Annotated[str, typer.Option(help="Their unit of work, e.g. set-1.")],
    manifest: Annotated[
        Path | None, typer.Option(help="Checksums to verify, as `sha256sum * > FILE` makes.")
    ] = None,
    pipeline: Annotated[
        str | None, typer.Option(help="The pipeline whose data file type it is.")
    ] = None,
    as_json: JsonOption = False,
) -> None:
    """Receive files into the datastore, all or nothing, each recorded in the ledger."""
    received = reads.facade().receive(directory, data_file_type, unit, manifest, pipeline)
    if as_json:
        return print_json(received)
    total = sum(f["size"] for f in received["files"])
    console.print(
        f"received {len(received['files'])} {data_file_type} files ({total} bytes)"
        f" for {unit} as {received['receipt']}",
        highlight=False,
    )
    if received["acknowledgement"]:
        console.print(f"acknowledgement written to {received['acknowledgement']}", highlight=False)


@app.command()
def files(
    instance: Annotated[int | None, typer.Option(help="Produced by this instance.")] = None,
    task: Annotated[int | None, typer.Option(help="Produced by this task.")] = None,
    unit: Annotated[str | None, typer.Option(help="Of this unit of work.")] = None,
    path: Annotated[str | None, typer.Option(help="This file, under the datastore.")] = None,
    history: Annotated[bool, typer.Option(help="Superseded versions too.")] = False,
    limit: Annotated[int, typer.Option(min=1, help="Show at most this many.")] = FILES_SHOWN,
    as_json: JsonOption = False,
) -> None:
    """Datastore files and who produced each (the current versions, unless asked)."""
    rows = reads.facade().files(instance, task, unit, path, history, limit)
    if as_json:
        return print_json(rows)
    table(
        "datastore files",
        ["path", "type", "size", "sha256", "producer", "stored", "current"],
        [
            [
                r["path"],
                r["data_file_type"],
                r["size"],
                r["sha256"][:12],
                _producer(r),
                r["stored_at"],
                "yes" if r["current"] else "no",
            ]
            for r in rows
        ],
        whole=("path", "producer"),
    )
    if len(rows) == limit:
        console.print(f"(the first {limit}: --limit shows more)")


def _producer(file: dict[str, Any]) -> str:
    if file["origin"] == "task":
        return (
            f"instance {file['instance_id']} task {file['task_id']} ({file['node']})"
            f" subtask {file['subtask_index']} attempt {file['attempt']}"
        )
    return f"{file['origin']} {file['receipt']}".strip()


@app.command()
def lineage(
    path: Annotated[str, typer.Argument(help="A file under the datastore, e.g. set-1/L3/x.png.")],
    as_json: JsonOption = False,
) -> None:
    """Who produced a file: each producer back to the data received, with its parameters."""
    chain = reads.facade().lineage(path)
    if as_json:
        return print_json(chain)
    steps = {step["file"]["id"]: step for step in chain["steps"]}

    def show(step: dict[str, Any], depth: int) -> None:
        # Whole lines, never cropped: a path or checksum cut short is useless.
        prefix = "  " * (depth - 1) + "└─ " if depth else ""
        console.print(prefix + _lineage_label(step), soft_wrap=True, highlight=False)
        for file_id in step["inputs"]:
            show(steps[file_id], depth + 1)

    show(chain["steps"][0], 0)


def _lineage_label(step: dict[str, Any]) -> str:
    file = step["file"]
    label = f"{file['path']}  sha256 {file['sha256'][:12]}  <- {_producer(file)}"
    if step["definition_version"] is not None:
        values = "; ".join(
            f"{name} v{frozen['version']}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(frozen["values"].items()))
            for name, frozen in step["parameters"].items()
        )
        label += f", definition v{step['definition_version']}" + (f", {values}" if values else "")
    return label


# -- flower ----------------------------------------------------------------------------------


@app.command()
def flower(
    log_file: Annotated[Path | None, typer.Option(help="Write Flower's log to this file.")] = None,
) -> None:
    """Run Flower with the pipeline console, behind basic auth (`pipeline cluster credentials`)."""
    private()
    from pipeline.interfaces.flower import serve

    serve(log_file)


# -- entry point -----------------------------------------------------------------------------


#: An example of each command, by its path, shown at the end of its ``--help``.
EXAMPLES: dict[str, str] = {
    "": "pipeline cluster init; pipeline cluster start; pipeline submit sample; pipeline wait 1",
    "api": "pipeline api --host 0.0.0.0 --port 8000",
    "worker": "pipeline worker --queues gpu,default --concurrency 8 --hostname gpu-01",
    "submit": "pipeline submit sample --end-node flip --json",
    "instances": "pipeline instances --json",
    "tasks": "pipeline tasks 2 --limit 200; pipeline tasks 2 --all",
    "task": "pipeline task 7",
    "subtasks": "pipeline subtasks 7",
    "logs": "pipeline logs 7 --subtask 0",
    "wait": "pipeline wait 2 --timeout 600  (exit 0 COMPLETED, 1 errors, 3 timeout)",
    "restart": "pipeline restart 7 --mode resubmit; pipeline restart --instance 2 --mode "
    "resume-current-step --dry-run",
    "halt": "pipeline halt --instance 2",
    "files": "pipeline files --instance 2 --unit set-1",
    "lineage": "pipeline lineage set-1/L3/averaged-image.png",
    "flower": "pipeline flower --log-file flower.log",
    "cluster": "pipeline cluster status",
    "cluster init": "mkdir .pipeline && pipeline cluster init",
    "cluster start": "pipeline cluster start --workers 2",
    "cluster stop": "pipeline cluster stop",
    "cluster status": "pipeline cluster status --json",
    "cluster credentials": "pipeline cluster credentials --json",
    "datastore": "pipeline datastore import deliveries/night-1 --type stars --unit night-1",
    "datastore import": "pipeline datastore import deliveries/night-1 --type stars --unit "
    "night-1 --manifest deliveries/night-1.sha256",
    "definitions": "pipeline definitions import my-pipeline.yaml",
    "definitions import": "pipeline definitions import my-pipeline.yaml",
    "definitions list": "pipeline definitions list --json",
    "definitions show": "pipeline definitions show sample",
    "params": "pipeline params set algorithm throw_exception_subtask_0=true",
    "params list": "pipeline params list",
    "params show": "pipeline params show algorithm --version 1",
    "params set": "pipeline params set algorithm gain=1.5 dummy_array_parameter='[1, 2]'",
    "alerts": "pipeline alerts --all",
    "alerts ack": "pipeline alerts ack 3",
}


def _add_examples(command: core.Command, path: str = "") -> None:
    """End each command's help with its example (a ``KeyError`` for a command without)."""
    command.epilog = f"Example: {EXAMPLES[path]}"
    for name, sub in getattr(command, "commands", {}).items():
        _add_examples(sub, f"{path} {name}".strip())


@cache
def _command() -> core.Command:
    """The click command Typer builds from ``app``, with examples: building it reads the
    signature of every command, so a process that runs the CLI several times (the tests)
    builds it once."""
    command = typer.main.get_command(app)
    _add_examples(command)
    _name_the_modes(command.commands["restart"])  # type: ignore[attr-defined]
    return command


def _name_the_modes(restart: core.Command) -> None:
    """List the restart modes in ``restart --help`` as it is shown: the modes' module loads
    the database libraries, which no other command line should wait for."""
    [mode] = [param for param in restart.params if param.name == "mode"]
    show = restart.format_help

    def format_help(ctx: core.Context, formatter: Any) -> None:
        modes = ", ".join(m.name for m in reads.facade().restart_modes())
        mode.help = f"{MODES_HELP[:-1]}: {modes}."  # type: ignore[attr-defined]
        show(ctx, formatter)

    restart.format_help = format_help  # type: ignore[method-assign]


def _usage(message: str) -> exceptions.UsageError:
    """A command line whose arguments do not go together: exit status 2, as for click's."""
    return exceptions.UsageError(message, globals.get_current_context())


def main() -> None:
    """Run the CLI: every error is one line on stderr. Exit statuses: 0 success, 1 refused
    or errors in the run, 2 a usage error (the command line itself), 3 a timeout."""
    try:
        status = _command().main(standalone_mode=False)
    except exceptions.NoArgsIsHelpError as exc:
        exc.show()
        raise SystemExit(EXIT_USAGE) from None
    except exceptions.UsageError as exc:
        where = exc.ctx.command_path if exc.ctx else "pipeline"
        _error(f"{exc.format_message()} (see '{where} --help')")
        raise SystemExit(EXIT_USAGE) from None
    except exceptions.ClickException as exc:
        _error(exc.format_message())
        raise SystemExit(EXIT_REFUSED) from None
    except typer.Abort:
        raise SystemExit(EXIT_REFUSED) from None
    except Exception as exc:  # noqa: BLE001 - reported, or raised again
        fail(exc)
    raise SystemExit(status if isinstance(status, int) else EXIT_OK)


def fail(exc: Exception) -> NoReturn:
    """Report an error an operator can cause or meet in one line and exit 1; raise anything
    else (a bug, with its traceback)."""
    from pipeline.operations.facade import problem

    found = problem(exc)
    if found is None:
        raise exc
    _error(found.message)
    raise SystemExit(EXIT_REFUSED) from None


def _error(message: str) -> None:
    Console(stderr=True).print(f"[red]error:[/] {message}", highlight=False, soft_wrap=True)
