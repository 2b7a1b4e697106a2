"""The ``pipeline`` command (also ``python -m pipeline``): cluster, definitions, parameters,
instances, tasks; one ``argparse`` parser for every command line.

An operator waits for a read command (``pipeline tasks 7``) and should get it within
0.35 s, process start included, so building the parser and parsing import nothing but the
standard library: each command imports what it needs when it runs. The operations
(``pipeline.operations``: the facade's commands, the queries; with SQLAlchemy, the settings
and pydantic, half a second) serve most commands, ``pipeline.deploy`` the cluster's
processes; the read commands
(``instances``, ``tasks``, ``subtasks``, ``task``, in ``reads``) ask the home's HTTP API
instead when it runs with this shell's settings, and import neither.

Every error an operator can cause prints as one line on stderr, never a traceback: a
command line the parser refuses exits 2 naming the problem and the help to read (``parse``
raises ``UsageError`` without exiting, for whoever checks a command line without running
it); a refusal or an error in the run exits 1; ``wait`` past its deadline exits 3.
Listing and detail commands take ``--json``, a stable contract for scripts.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from pipeline.domain.listing import FILES_SHOWN, TABLE_ROWS
from pipeline.domain.words import counted
from pipeline.errors import SHOWN_CHARACTERS, InvalidInput, PipelineError, one_line, shown
from pipeline.interfaces import reads
from pipeline.interfaces.reads import console, print_json, private, table

if TYPE_CHECKING:
    from pipeline.operations.outcomes import Report

#: Exit statuses of every command (docs/operator-guide.md, Exit statuses): success; refused,
#: or errors in the run; the command line itself is wrong; a deadline passed (``wait
#: --timeout``).
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_TIMEOUT = 0, 1, 2, 3
#: What ``pipeline wait`` exits with for an instance that stopped: COMPLETED, with errors,
#: STALE (every task done, some on inputs stored again since).
EXIT_COMPLETED, EXIT_ERRORS, EXIT_STALE = EXIT_OK, EXIT_REFUSED, 4
#: Ctrl-C (128 + SIGINT, as shells report it): the command stopped, nothing else did.
EXIT_INTERRUPTED = 130
WAIT_POLL_SECONDS = 0.5
#: The help of ``restart --mode`` until the help is shown, which names every mode.
MODES_HELP = "The restart mode."

# -- cluster ---------------------------------------------------------------------------------


def cluster_init(args: argparse.Namespace) -> None:
    private()
    from pipeline.deploy import cluster

    summary = cluster.init(sample_data=args.sample_data)
    if args.json:
        return print_json(summary)
    out = console()
    out.print(f"cluster home  {summary['home']}")
    out.print(f"database      {summary['database']}")
    out.print(f"broker        {summary['broker']}")
    out.print(f"datastore     {summary['datastore']}")
    for item in summary["definitions"]:
        note = "imported" if item["new"] else "unchanged"
        out.print(f"definition    {item['name']} version {item['version']} ({note})")
    if summary["sample_files_received"]:
        out.print(f"sample data   {summary['sample_files_received']} images received")


def cluster_start(args: argparse.Namespace) -> None:
    private()
    from pipeline.deploy import cluster

    with console().status("starting the cluster") as spinner:
        rows = cluster.start(args.workers, progress=lambda text: spinner.update(text))
    _show_status(rows, args.json)


def cluster_stop(args: argparse.Namespace) -> None:
    private()
    from pipeline.deploy import cluster

    with console().status("stopping the cluster"):
        stopped = cluster.stop()
    console().print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")


def cluster_status(args: argparse.Namespace) -> None:
    from pipeline.deploy import cluster
    from pipeline.home import find_home

    private()

    rows = cluster.status()
    batch_system = reads.operations().batch_system_status()
    if batch_system is not None:
        rows.append(batch_system)
    if not args.json:
        home = find_home()
        console().print(f"home {home.path} ({home.reason})", highlight=False, soft_wrap=True)
    _show_status(rows, args.json)
    if not args.json:
        console().print(reads.operations().reconciler_health()["message"], markup=False)
        if batch_system is not None:
            console().print(f"slurm: {batch_system['message']}", markup=False)
        if any(row["alive"] for row in rows):
            _show_queues(reads.operations("queries").list_queues(), False)


def cluster_credentials(args: argparse.Namespace) -> None:
    private()
    from pipeline.deploy import cluster

    found = cluster.credentials()
    if args.json:
        return print_json(found)
    table("credentials", ["what", "value"], [[key, value] for key, value in found.items()])


def _show_status(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        return print_json(rows)
    table(
        "cluster",
        ["name", "pid", "alive", "url"],
        [[r["name"], r["pid"], "yes" if r["alive"] else "no", r["url"]] for r in rows],
    )


def queues(args: argparse.Namespace) -> None:
    _show_queues(reads.operations("queries").list_queues(), args.json)


def _show_queues(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        return print_json(rows)
    table(
        "queues",
        ["queue", "messages", "tasks waiting", "oldest waits (s)"],
        [
            [
                r["queue"],
                "(broker not asked)" if r["messages"] is None else r["messages"],
                r["tasks_waiting"],
                r["oldest_wait_seconds"],
            ]
            for r in rows
        ],
    )


def api(args: argparse.Namespace) -> None:
    private()
    from pipeline.interfaces.api import serve

    serve(args.host, args.port)


def worker(args: argparse.Namespace) -> None:
    private()
    from pipeline.deploy import worker_command

    worker_command.run(args.queues, args.concurrency, args.hostname)


def flower(args: argparse.Namespace) -> None:
    private()
    from pipeline.interfaces.flower import serve

    serve(args.log_file)


# -- definitions and parameters --------------------------------------------------------------


def definitions_import(args: argparse.Namespace) -> None:
    warnings: list[str] = []
    imported = reads.operations().import_definitions(args.files, args.algorithm_path, warnings)
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    for item in imported:
        note = "imported" if item["new"] else "unchanged"
        console().print(f"{item['name']} version {item['version']} ({note})")


def definitions_list(args: argparse.Namespace) -> None:
    rows = reads.operations("queries").list_definitions()
    if args.json:
        return print_json(rows)
    table(
        "pipelines",
        ["name", "version", "nodes", "imported"],
        [[r["name"], r["version"], " -> ".join(r["nodes"]), r["imported_at"]] for r in rows],
    )


def definitions_export(args: argparse.Namespace) -> None:
    sys.stdout.write(reads.operations().export_definition(args.name))


def definitions_show(args: argparse.Namespace) -> None:
    spec = reads.operations("queries").show_definition(args.name)
    if args.json:
        return print_json(spec)
    out = console()
    out.print(f"[bold]{spec['name']}[/] version {spec['version']}  {spec.get('description', '')}")
    out.print(f"from {spec['source']}; Python algorithms imported from", end=" ")
    out.print(", ".join(spec.get("python_path") or []) or "the installed packages")
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


def params_import(args: argparse.Namespace) -> None:
    operations = reads.operations()
    plan = operations.import_parameter_library(args.file, apply=args.yes)
    for item in plan:
        changes = ", ".join(f"{k}={v}" for k, v in item["changes"].items())
        console().print(f"{item['name']}: {item['action']} {changes}".rstrip(), highlight=False)
    if args.yes:
        return
    if not sys.stdin.isatty():
        raise InvalidInput("nothing imported: run again with --yes to apply")
    if input("apply? [y/N] ").strip().lower() not in ("y", "yes"):
        raise InvalidInput("nothing imported")
    operations.import_parameter_library(args.file, apply=True)
    console().print("imported")


def _params_import_arguments(command: Parser) -> None:
    command.add_argument("file", type=Path, metavar="FILE", help="A Ziggy parameter library.")
    command.add_argument("--yes", action="store_true", help="Apply without asking.")


def params_export(args: argparse.Namespace) -> None:
    sys.stdout.write(reads.operations().export_parameter_library(args.names))


def params_list(args: argparse.Namespace) -> None:
    rows = reads.operations("queries").list_parameter_sets()
    if args.json:
        return print_json(rows)
    table(
        "parameter sets",
        ["name", "version", "locked", "parameters"],
        [[r["name"], r["version"], r["locked"], len(r["parameters"])] for r in rows],
    )


def params_show(args: argparse.Namespace) -> None:
    found = reads.operations("queries").show_parameter_set(args.name, args.version)
    if args.json:
        return print_json(found)
    _show_parameter_set(found)


def params_set(args: argparse.Namespace) -> None:
    found = reads.operations().set_parameters(args.name, args.assignments)
    if args.json:
        return print_json(found)
    _show_parameter_set(found)


def _show_parameter_set(found: dict[str, Any]) -> None:
    import json

    lock = "locked" if found["locked"] else "unlocked"
    table(
        f"{found['name']} version {found['version']} ({lock})",
        ["parameter", "type", "value"],
        [[p["name"], p["type"], json.dumps(p["value"])] for p in found["parameters"]],
    )


# -- instances and tasks ---------------------------------------------------------------------


def submit(args: argparse.Namespace) -> None:
    chosen = (
        args.pipeline,
        args.start_node,
        args.end_node,
        args.priority,
        args.model or (),
        args.units,
        args.exclude,
        args.set or (),
    )
    if args.dry_run:
        planned = reads.operations().preview_submit(*chosen)
        if args.json:
            return print_json(planned)
        text = reads.operations("views").submit_preview_text(planned)
        return console().print(text, highlight=False, soft_wrap=True)
    data = reads.operations().submit(*chosen)
    if args.json:
        return print_json(data)
    line = reads.operations("views").submitted_line(data)
    console().print(f"{line}; follow it with: pipeline wait {data['id']}")


def instances(args: argparse.Namespace) -> None:
    reads.show_instances(args.limit, args.every, args.json)


def tasks(args: argparse.Namespace) -> None:
    reads.show_tasks(args.instance, args.limit, args.every, args.json)


def task(args: argparse.Namespace) -> None:
    reads.show_task(args.task, args.json)


def subtasks(args: argparse.Namespace) -> None:
    reads.show_subtasks(args.task, args.limit, args.every, args.json)


def logs(args: argparse.Namespace) -> None:
    found = reads.operations("queries").logs(args.task, args.subtask)
    if args.json:
        return print_json(found)
    for entry in found:
        console().rule(f"subtask {entry['index']}  {entry['path']}")
        sys.stdout.write(entry["text"] or "(no output)\n")
        sys.stdout.flush()


def wait(args: argparse.Namespace) -> int:
    """Follow an instance with a progress bar until it stops or the deadline passes."""
    import time

    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from pipeline.domain.states import STOPPED_STATES, InstanceState

    queries = reads.operations("queries")
    instance, timeout = args.instance, args.timeout
    deadline = time.monotonic() + timeout if timeout else None
    summary = queries.get_instance(instance)  # an unknown one refused before any bar
    columns = [
        TextColumn("instance {task.fields[id]} {task.description}"),
        BarColumn(),
        # Done of all, and how many of the done failed: a bar full of failures says so.
        TextColumn("{task.fields[counts]}"),
        TimeElapsedColumn(),
    ]
    try:
        with Progress(*columns, console=console(), transient=False) as progress:
            bar = progress.add_task("", total=None, id=instance, counts="")
            while True:
                completed, failed = summary["completed_subtasks"], summary["failed_subtasks"]
                total = summary["total_subtasks"]
                counts = f"{completed + failed}/{total} subtasks"
                progress.update(
                    bar,
                    description=summary["state"],
                    completed=completed + failed,
                    total=max(total, 1),
                    counts=f"{counts} ({failed:,} failed)" if failed else counts,
                )
                if summary["state"] in STOPPED_STATES:
                    break
                if deadline is not None and time.monotonic() > deadline:
                    console().print(
                        f"instance {instance} still {summary['state']} after {timeout:g} s"
                    )
                    return EXIT_TIMEOUT
                time.sleep(WAIT_POLL_SECONDS)
                summary = queries.get_instance(instance)
    except KeyboardInterrupt:
        console().print(
            f"instance {instance} keeps running ({summary['state']}): only the waiting"
            f" stopped; pipeline wait {instance} follows it again",
            highlight=False,
            soft_wrap=True,
        )
        return EXIT_INTERRUPTED
    state = summary["state"]
    console().print(f"instance {instance} {state}")
    if state == InstanceState.STALE:
        console().print(
            "stale tasks remain (pipeline tasks shows them; pipeline restart TASK"
            " --downstream runs them again in order)",
            highlight=False,
        )
        return EXIT_STALE
    return EXIT_COMPLETED if state == InstanceState.COMPLETED else EXIT_ERRORS


# -- alerts ----------------------------------------------------------------------------------


def alerts_list(args: argparse.Namespace) -> None:
    rows = reads.operations("queries").list_alerts(args.every)
    if args.json:
        return print_json(rows)
    table(
        "alerts",
        ["id", "time", "severity", "instance", "task", "message", "acknowledged", "cleared"],
        [
            [
                r["id"],
                r["at"],
                r["severity"],
                r["instance_id"],
                r["task_id"],
                r["message"],
                "yes" if r["acknowledged"] else "",
                r["cleared_at"] or "",
            ]
            for r in rows
        ],
    )


def workers(args: argparse.Namespace) -> None:
    rows = reads.operations("queries").list_workers()
    if args.json:
        return print_json(rows)
    table(
        "workers",
        ["name", "host", "state", "queues", "concurrency", "last heartbeat"],
        [
            [
                r["name"],
                r["host"],
                r["state"],
                "(did not answer)" if r["queues"] is None else ", ".join(r["queues"]),
                r["concurrency"],
                r["last_heartbeat"],
            ]
            for r in rows
        ],
        whole=("queues",),
    )
    if not rows:
        console().print("no worker has run for this cluster, or every one shut down")


def models_list(args: argparse.Namespace) -> None:
    rows = reads.operations("models").list_models(args.type)
    if args.json:
        return print_json(rows)
    table(
        "models",
        ["type", "version", "timestamp", "file", "sha256", "size", "received"],
        [
            [
                r["model_type"],
                r["version"],
                r["timestamp"],
                r["name"],
                r["sha256"][:12],
                r["size"],
                r["received_at"],
            ]
            for r in rows
        ],
        whole=("version", "file"),
    )
    if not rows:
        console().print("no model received yet (pipeline models import FILE --type TYPE)")


def environments(args: argparse.Namespace) -> None:
    rows = reads.operations().list_environments()
    if args.json:
        return print_json(rows)
    table(
        "remote environments",
        ["name", "batch system", "architectures", "queues", "pipelines"],
        [
            [
                r["name"] + ("" if r["implemented"] else " (not implemented here)"),
                r["batch_system"],
                ", ".join(
                    f"{a['name']} ({a['cores']} cores, {a['ram_gigabytes']:g} GB"
                    + ("" if a["cost"] is None else f", {a['cost']:g} {r['cost_unit']}/node-hour")
                    + ")"
                    for a in r["architectures"]
                ),
                ", ".join(_queue_text(q) for q in r["queues"]),
                ", ".join(r["pipelines"]),
            ]
            for r in rows
        ],
        whole=("name",),
    )
    if not rows:
        console().print("no remote environment declared (a definition's remote_environments)")


def _queue_text(queue: dict[str, Any]) -> str:
    """``long (24 h, 8 nodes)``; ``special (reserved)``."""
    limits = [
        f"{queue['max_wall_time_hours']:g} h" if queue["max_wall_time_hours"] else "",
        f"{queue['max_nodes']} nodes" if queue["max_nodes"] else "",
        "reserved" if queue["reserved"] else "",
        "" if queue["auto_selectable"] else "by name only",
    ]
    shown_limits = ", ".join(limit for limit in limits if limit)
    return f"{queue['name']} ({shown_limits})" if shown_limits else queue["name"]


def models_import(args: argparse.Namespace) -> None:
    received = reads.operations("models").import_model(args.file, args.type, args.pipeline)
    if args.json:
        return print_json(received)
    model = received["model"]
    said = "received" if received["new"] else "already held (the same bytes)"
    console().print(
        f"model {model['model_type']} version {model['version']} ({model['name']},"
        f" sha256 {model['sha256'][:12]}): {said}",
        highlight=False,
    )


def events_list(args: argparse.Namespace) -> None:
    rows = reads.operations("events").list_handlers()
    if args.json:
        return print_json(rows)

    def last(event: dict[str, Any] | None) -> str:
        if event is None:
            return "none yet"
        made = f", instance {event['instance_id']}" if event["instance_id"] else ""
        said = f": {event['message']}" if event["state"] == "failed" else ""
        return (
            f"{event['id']} {event['state']} {event['updated_at']}"
            f" ({reads.operations('views').labels_said(event['labels'])}{made}){said}"
        )

    table(
        "event handlers",
        ["name", "pipeline", "enabled", "directory", "last event"],
        [
            [
                r["name"],
                r["pipeline"],
                "yes" if r["enabled"] else "no",
                r["directory"],
                last(r["last_event"]),
            ]
            for r in rows
        ],
        whole=("directory",),
    )
    if not rows:
        console().print(
            "no event handler: a definition declares them (events: {NAME: {directory: DIR}})"
        )


def events_enable(args: argparse.Namespace) -> None:
    _event_handler_state(args.name, True)


def events_disable(args: argparse.Namespace) -> None:
    _event_handler_state(args.name, False)


def _event_handler_state(name: str, enabled: bool) -> None:
    handler = reads.operations("events").set_enabled(name, enabled)
    state = "enabled" if handler["enabled"] else "disabled: its ready files wait"
    console().print(f"event handler {handler['name']} {state}", highlight=False)


def alerts_ack(args: argparse.Namespace) -> None:
    reads.operations().acknowledge_alert(args.id)
    console().print(f"alert {args.id} acknowledged")


# -- restart and halt ------------------------------------------------------------------------


def restart(args: argparse.Namespace) -> int:
    from pipeline.domain.parameters import parse_assignments

    changes: dict[str, Any] = parse_assignments(args.set or [])
    for key, value in (
        ("queue", args.queue),
        ("subtask_timeout", args.timeout),
        ("max_failed_subtasks", args.max_failed_subtasks),
        ("max_auto_resubmits", args.max_auto_resubmits),
        ("priority", args.priority),
    ):
        if value is not None:
            changes[key] = value
    if args.instance is not None:
        report = reads.operations().restart_failed(
            args.instance, args.mode, changes, args.dry_run, args.downstream
        )
    else:
        report = reads.operations().restart(
            args.tasks, args.mode, changes, args.dry_run, args.downstream
        )
    return _show_report(report, args.json, "restart (dry run)" if args.dry_run else "restart")


def _restart_usage(args: argparse.Namespace) -> str | None:
    """Why the restart's arguments do not go together, if they do not."""
    if args.instance is not None:
        if args.tasks:
            return "give tasks or --instance, not both"
        if not args.mode:
            return "--instance needs --mode"
    elif not args.tasks:
        return "name the tasks to restart, or --instance ID"
    return None


def halt(args: argparse.Namespace) -> int:
    if args.instance is not None:
        report = reads.operations().halt_instance(args.instance)
    else:
        report = reads.operations().halt(args.tasks)
    return _show_report(report, args.json, "halt")


def _halt_usage(args: argparse.Namespace) -> str | None:
    if args.instance is None and not args.tasks:
        return "name the tasks to halt, or --instance ID"
    return None


def _show_report(report: Report, as_json: bool, title: str) -> int:
    """Print what happened to each task: exit 1 when any was refused."""
    if as_json:
        print_json(report.as_dicts())
    else:
        table(
            title,
            ["task", "mode", "result", "from", "subtask indices", "message", "downstream"],
            [
                [
                    o.task_id or "-",
                    o.mode,
                    "ok" if o.ok else "refused",
                    o.start_from,
                    ", ".join(map(str, o.subtasks)),
                    o.message,
                    ", ".join(map(str, o.downstream)),
                ]
                for o in report.outcomes
            ],
        )
    return EXIT_OK if report.ok else EXIT_REFUSED


# -- the datastore ---------------------------------------------------------------------------


@contextmanager
def _progress_bar(what: str) -> Iterator[Callable[[int, int], None]]:
    """A Rich progress bar of ``what``, as the callback ``(done, total)`` that moves it."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    shown_on = Console(stderr=True)  # standard output stays the answer's (--json)
    columns = (TextColumn(what), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=shown_on, transient=True) as progress:
        bar = progress.add_task(what, total=None)
        yield lambda done, total: progress.update(bar, completed=done, total=total)


def datastore_prune(args: argparse.Namespace) -> None:
    with _progress_bar("removing") as progress:
        pruned = reads.operations().prune_datastore(
            args.keep_last, args.keep_since, args.dry_run, progress
        )
    if args.json:
        return print_json(pruned)
    verb = "would remove" if pruned["dry_run"] else "removed"
    console().print(
        f"{verb} the bytes of {pruned['versions']:,} versions ({pruned['objects']:,} objects)"
        f" and {pruned['left_behind']:,} files left behind by failed stores:"
        f" {pruned['bytes']:,} bytes; kept the newest {pruned['keep_last']} of every path and"
        f" everything since {pruned['keep_since']}",
        highlight=False,
    )


def taskdirs_prune(args: argparse.Namespace) -> None:
    with _progress_bar("removing") as progress:
        pruned = reads.operations().prune_task_dirs(args.older_than, args.dry_run, progress)
    if args.json:
        return print_json(pruned)
    verb = "would remove" if pruned["dry_run"] else "removed"
    console().print(
        f"{verb} {pruned['directories']:,} task directories ({pruned['bytes']:,} bytes)"
        f" last changed before {pruned['older_than']}",
        highlight=False,
    )


def datastore_import(args: argparse.Namespace) -> None:
    if args.type is None and args.unit is None:
        if args.manifest is not None:
            raise InvalidInput("--manifest goes with --type and --unit: a delivery has its own")
        return _receive_delivery(args)
    if args.type is None or args.unit is None:
        raise InvalidInput(
            "give both --type and --unit (one directory's files), or neither (a delivery laid"
            " out as the datastore, with its manifest)"
        )
    received = reads.operations("receipt").receive(
        args.directory, args.type, args.unit, args.manifest, args.pipeline
    )
    if args.json:
        return print_json(received)
    total = sum(f["size"] for f in received["files"])
    console().print(
        f"received {counted(len(received['files']), f'{args.type} file')} ({total:,} bytes)"
        f" for {args.unit} as {received['receipt']}",
        highlight=False,
    )
    if received["acknowledgement"]:
        console().print(
            f"acknowledgement written to {received['acknowledgement']}", highlight=False
        )


def _receive_delivery(args: argparse.Namespace) -> None:
    received = reads.operations("delivery").receive_delivery(args.directory, args.pipeline)
    if args.json:
        return print_json(received)
    total = sum(f["size"] for f in received["files"])
    units = "; ".join(f"{kind}: {', '.join(u)}" for kind, u in received["units"].items())
    already = f", {received['already']} held already" if received["already"] else ""
    console().print(
        f"received {counted(len(received['files']), 'file')} ({total:,} bytes){already}"
        f" for {units or 'no unit'} as {received['receipt']}",
        highlight=False,
    )
    for model in received["models"]:
        console().print(
            f"  model {model['model_type']} version {model['version']}", highlight=False
        )
    console().print(f"acknowledgement written to {received['acknowledgement']}", highlight=False)


def datastore_manifest(args: argparse.Namespace) -> None:
    written = reads.operations("manifests").write(args.directory, args.dataset_id, args.checksum)
    console().print(f"manifest written to {written}", highlight=False)


def _datastore_manifest_arguments(command: Parser) -> None:
    command.add_argument("directory", type=Path, metavar="DIR", help="The delivery.")
    command.add_argument(
        "--dataset-id", type=_whole(), required=True, metavar="N", help="0 may be used again."
    )
    command.add_argument(
        "--checksum",
        choices=["SHA1", "SHA256", "SHA512", "MD5"],
        default="SHA1",
        help="The checksum type (default SHA1, Ziggy's).",
    )


def files(args: argparse.Namespace) -> None:
    # JSON lists every file unless --limit says (what scripts rely on); a table a screenful.
    limit = args.limit if args.limit is not None or args.json else FILES_SHOWN
    found = reads.operations("lineage").files_listing(
        args.instance, args.task, args.unit, args.path, args.history, limit
    )
    rows = found.rows
    if args.json:
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
                ("yes" if r["current"] else "no") + (", stale" if r["stale"] else ""),
            ]
            for r in rows
        ],
        whole=("path", "producer"),
    )
    if len(rows) < found.total:
        console().print(
            f"showing {len(rows):,} of {found.total:,} files (--limit N shows more)",
            highlight=False,
        )


def _producer(file: dict[str, Any]) -> str:
    if file["origin"] == "task":
        return (
            # The attempt is the task's (a restart is a new attempt), so it follows the task.
            f"instance {file['instance_id']} task {file['task_id']} ({file['node']})"
            f" attempt {file['attempt']} subtask {file['subtask_index']}"
        )
    if file["task_id"] is not None:  # by a data receipt task
        return (
            f"received {file['receipt']} by instance {file['instance_id']} task"
            f" {file['task_id']} ({file['node']}) attempt {file['attempt']}"
        )
    return f"{file['origin']} {file['receipt']}".strip()


def lineage(args: argparse.Namespace) -> None:
    chain = reads.operations("lineage").lineage(args.path, args.version)
    if args.json:
        return print_json(chain)
    steps = {step["file"]["id"]: step for step in chain["steps"]}

    def show(step: dict[str, Any], depth: int) -> None:
        # Whole lines, never cropped: a path or checksum cut short is useless.
        prefix = "  " * (depth - 1) + "└─ " if depth else ""
        console().print(prefix + _lineage_label(step), soft_wrap=True, highlight=False)
        for file_id in step["inputs"]:
            show(steps[file_id], depth + 1)

    show(chain["steps"][0], 0)


def _lineage_label(step: dict[str, Any]) -> str:
    file = step["file"]
    label = f"{file['path']}  sha256 {file['sha256'][:12]}  <- {_producer(file)}"
    marks = [
        mark
        for mark, on in (
            ("superseded", not file["current"]),
            ("stale", file["stale"]),
            ("pruned", file["pruned_at"]),
        )
        if on
    ]
    if marks:
        label = f"{file['path']}  ({', '.join(marks)})" + label[len(file["path"]) :]
    if step["definition_version"] is not None:
        values = "; ".join(
            f"{name} v{frozen['version']}: "
            + ", ".join(f"{k}={v}" for k, v in sorted(frozen["values"].items()))
            for name, frozen in step["parameters"].items()
        )
        label += f", definition v{step['definition_version']}" + (f", {values}" if values else "")
    for model in step.get("models", []):
        label += f", model {model['model_type']} v{model['version']} ({model['sha256'][:12]})"
    if step.get("code_version"):
        from pipeline.engine.code_version import describe

        label += f", code {describe(step['code_version'])}"
    if step.get("event"):
        label += f", started by {step['event']}"
    return label


# -- the parser ------------------------------------------------------------------------------

#: An example of each command, by its path, shown at the end of its ``--help``.
EXAMPLES: dict[str, str] = {
    "": "pipeline cluster init; pipeline cluster start; pipeline submit sample; pipeline wait 1",
    "api": "pipeline api --host 0.0.0.0 --port 8000",
    "worker": "pipeline worker --queues gpu,default --concurrency 8 --hostname gpu-01",
    "submit": "pipeline submit sample --end-node flip --set flip:max_failed_subtasks=1 --json",
    "instances": "pipeline instances --json",
    "tasks": "pipeline tasks 2 --limit 200; pipeline tasks 2 --all",
    "task": "pipeline task 7",
    "subtasks": "pipeline subtasks 7",
    "logs": "pipeline logs 7 --subtask 0",
    "wait": "pipeline wait 2 --timeout 600  (exit 0 COMPLETED, 1 errors, 3 timeout, 4 stale)",
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
    "datastore": "pipeline datastore import deliveries/night-1 --type stars --unit night-1;"
    " pipeline datastore import deliveries/night-2  (a delivery with its manifest)",
    "models": "pipeline models --type calibration --json",
    "models import": "pipeline models import calibration-3.json --type calibration",
    "environments": "pipeline environments --json",
    "events": "pipeline events --json",
    "events enable": "pipeline events enable ingest",
    "events disable": "pipeline events disable ingest",
    "datastore prune": "pipeline datastore prune --keep-last 2 --keep-since 30d --dry-run",
    "taskdirs": "pipeline taskdirs prune --older-than 30d --dry-run",
    "taskdirs prune": "pipeline taskdirs prune --older-than 30d --dry-run",
    "datastore manifest": "pipeline datastore manifest deliveries/night-2 --dataset-id 2",
    "datastore import": "pipeline datastore import deliveries/night-1 --type stars --unit "
    "night-1 --manifest deliveries/night-1.sha256",
    "definitions": "pipeline definitions import my-pipeline.yaml",
    "definitions import": "pipeline definitions import my-pipeline.yaml",
    "definitions list": "pipeline definitions list --json",
    "definitions show": "pipeline definitions show sample",
    "definitions export": "pipeline definitions export sample --format ziggy",
    "params": "pipeline params set algorithm throw_exception_subtask_0=true",
    "params list": "pipeline params list",
    "params import": "pipeline params import pl-with-overrides.xml --yes",
    "params export": "pipeline params export algorithm",
    "params show": "pipeline params show algorithm --version 1",
    "params set": "pipeline params set algorithm gain=1.5 dummy_array_parameter='[1, 2]'",
    "alerts": "pipeline alerts --all",
    "alerts ack": "pipeline alerts ack 3",
    "workers": "pipeline workers --json",
    "queues": "pipeline queues --json",
}

#: The program's name, first word of every command's path.
PROGRAM = "pipeline"


class UsageError(Exception):
    """A command line the parser refuses: the one-line message naming what is wrong, and
    the command whose ``--help`` explains it (``pipeline wait``)."""

    def __init__(self, message: str, command: str = PROGRAM) -> None:
        super().__init__(" ".join(message.split()))
        self.command = command

    @property
    def line(self) -> str:
        """What the operator reads: ``... (see 'pipeline wait --help')``."""
        return f"{self} (see '{self.command} --help')"


class CommandMissing(UsageError):
    """``pipeline`` or a group of commands (``pipeline cluster``) named alone: its help
    shows what there is to run."""

    def __init__(self, parser: Parser) -> None:
        super().__init__("name a command", parser.prog)
        self.parser = parser


class _Help(argparse.HelpFormatter):
    """Help as wide as the terminal, with room for the longer options
    (``--max-failed-subtasks N``) beside their text."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=_terminal_width() - 2)


def _terminal_width() -> int:
    """COLUMNS, else the terminal's width, else 80, as argparse reads it with ``shutil``,
    which a command line would otherwise import (with bz2, lzma and zlib: 3.5 ms) though
    it shows no help."""
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.__stdout__.fileno()).columns
    except (AttributeError, ValueError, OSError):
        return 80


class Parser(argparse.ArgumentParser):
    """An ``argparse`` parser that raises ``UsageError`` where argparse would print its
    usage and exit, and that is built as it is first used: ``build`` adds its arguments
    and subcommands then. The whole tree of 33 parsers takes 12 ms to build, a tenth of a
    read command's time; a command line builds the top and the parsers it goes through.
    ``on_help`` prepares its help just before it is shown."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # An option is written whole: --time must not stand for --timeout.
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", _Help)
        super().__init__(*args, **kwargs)
        self.build: Callable[[Parser], None] | None = None
        self.on_help: Callable[[], None] | None = None

    def ensure_built(self) -> None:
        if self.build is not None:
            build, self.build = self.build, None
            build(self)

    def parse_known_args(
        self, args: Sequence[str] | None = None, namespace: argparse.Namespace | None = None
    ) -> tuple[argparse.Namespace, list[str]]:
        self.ensure_built()
        return super().parse_known_args(args, namespace)

    def format_usage(self) -> str:
        self.ensure_built()
        return super().format_usage()

    def format_help(self) -> str:
        self.ensure_built()
        if self.on_help is not None:
            self.on_help()
        return super().format_help()

    def error(self, message: str) -> NoReturn:
        raise UsageError(message, self.prog)


def _whole(low: int | None = None, high: int | None = None) -> Callable[[str], int]:
    """A whole number written in ASCII digits (an id, a count), from ``low`` to ``high``."""

    def whole(text: str) -> int:
        try:
            value = int(text) if text.isascii() else None
        except ValueError:
            value = None
        if value is None:
            raise argparse.ArgumentTypeError(f"{shown(text)} is not a whole number")
        if (low is not None and value < low) or (high is not None and value > high):
            span = f"{low} to {high}" if high is not None else f"at least {low}"
            raise argparse.ArgumentTypeError(f"{value} is out of range ({span})")
        return value

    return whole


def _seconds(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{shown(text)} is not a number of seconds") from None


def _json(command: Parser) -> None:
    command.add_argument("--json", action="store_true", help="Print JSON instead of a table.")


def _rows(command: Parser) -> None:
    """``--limit N`` or ``--all`` (not both) and ``--json``: a table shows a screenful,
    ``TABLE_ROWS``, unless told; JSON every row unless ``--limit`` is given."""
    rows = command.add_mutually_exclusive_group()
    rows.add_argument(
        "--limit",
        type=_whole(1),
        metavar="N",
        help=f"Show N rows (default {TABLE_ROWS}; with --json, every row unless given).",
    )
    rows.add_argument("--all", dest="every", action="store_true", help="Show every row.")
    _json(command)


def _argument(*names: str, **options: Any) -> Callable[[Parser], None]:
    """What adds one argument, as ``add_argument`` takes it, to a command's parser."""

    def add(command: Parser) -> None:
        command.add_argument(*names, **options)

    return add


def _id(what: str, metavar: str) -> Callable[[Parser], None]:
    """An id argument (``INSTANCE``, ``TASK``), named ``what`` in the parsed command line."""
    return _argument(what, type=_whole(), metavar=metavar, help=f"The {what}.")


def _all_of(*arguments: Callable[[Parser], None]) -> Callable[[Parser], None]:
    def add(command: Parser) -> None:
        for argument in arguments:
            argument(command)

    return add


def _cluster_init_arguments(command: Parser) -> None:
    command.add_argument(
        "--sample-data",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="Write the sample pipeline's images into the datastore.",
    )
    _json(command)


def _cluster_start_arguments(command: Parser) -> None:
    command.add_argument("--workers", type=_whole(1), metavar="N", help="Worker processes to run.")
    _json(command)


def _definitions_import_arguments(command: Parser) -> None:
    command.add_argument(
        "files",
        nargs="+",
        type=Path,
        metavar="PATH",
        help="YAML files, Ziggy XML files or a Ziggy ziggy.d directory.",
    )
    command.add_argument(
        "--algorithm-path",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="Where Ziggy steps' files live (repeatable; default: the XML files' directory).",
    )


def _params_show_arguments(command: Parser) -> None:
    command.add_argument("name", metavar="NAME", help="The parameter set.")
    command.add_argument("--version", type=_whole(), metavar="N", help="An older version.")
    _json(command)


def _params_set_arguments(command: Parser) -> None:
    command.add_argument("name", metavar="NAME", help="The parameter set.")
    command.add_argument("assignments", nargs="+", metavar="KEY=VALUE", help="key=value pairs.")
    _json(command)


def _datastore_import_arguments(command: Parser) -> None:
    command.add_argument(
        "directory",
        type=Path,
        metavar="DIR",
        help="The files to import; without --type and --unit, a delivery laid out as the"
        " datastore with its *.sha256 manifest at its top (models in models/).",
    )
    command.add_argument("--type", metavar="TYPE", help="Their data file type.")
    command.add_argument(
        "--unit",
        metavar="UNIT",
        help="Their unit of work, e.g. set-1 (or sector-1/camera-2: a value per placeholder).",
    )
    command.add_argument(
        "--manifest",
        type=Path,
        metavar="FILE",
        help="Checksums to verify, as `sha256sum * > FILE` makes.",
    )
    command.add_argument(
        "--pipeline", metavar="NAME", help="The pipeline whose data file type it is."
    )
    _json(command)


def _models_arguments(command: Parser) -> None:
    command.add_argument("--type", metavar="TYPE", help="Only this model type's versions.")
    _json(command)


def _models_import_arguments(command: Parser) -> None:
    command.add_argument("file", type=Path, metavar="FILE", help="The model file.")
    command.add_argument("--type", required=True, metavar="TYPE", help="Its model type.")
    command.add_argument("--pipeline", metavar="NAME", help="The pipeline whose model type it is.")
    _json(command)


def _handler_name(command: Parser) -> None:
    command.add_argument("name", metavar="NAME", help="The event handler.")


def _datastore_prune_arguments(command: Parser) -> None:
    command.add_argument(
        "--keep-last",
        type=_whole(1),
        metavar="N",
        help="Keep the newest N versions of every path (default: retention_keep_last).",
    )
    command.add_argument(
        "--keep-since",
        metavar="WHEN",
        help="Keep versions stored since, and what instances submitted since used: a date"
        " (2026-11-30) or an age (30d, 12h) (default: retention_keep_days).",
    )
    _dry_run(command, "Say what would be removed; remove nothing.")
    _json(command)


def _taskdirs_prune_arguments(command: Parser) -> None:
    command.add_argument(
        "--older-than",
        required=True,
        metavar="WHEN",
        help="Remove those last changed before: a date (2026-11-30) or an age (30d, 12h).",
    )
    _dry_run(command, "Say what would be removed; remove nothing.")
    _json(command)


def _dry_run(command: Parser, help: str) -> None:
    command.add_argument(
        "--dry-run", action=argparse.BooleanOptionalAction, default=False, help=help
    )


def _submit_arguments(command: Parser) -> None:
    command.add_argument("pipeline", metavar="PIPELINE", help="The pipeline to run.")
    command.add_argument("--start-node", metavar="NODE", help="First node to run.")
    command.add_argument("--end-node", metavar="NODE", help="Last node to run.")
    command.add_argument("--priority", type=_whole(), metavar="N", help="0 (first) to 9 (last).")
    command.add_argument(
        "--model",
        action="append",
        metavar="TYPE=VERSION",
        help="Pin this version of a model type (repeatable; else the newest).",
    )
    command.add_argument(
        "--units",
        metavar="REGEX",
        help="Run only the units of work whose whole name matches REGEX (kept with the instance).",
    )
    command.add_argument(
        "--exclude",
        metavar="REGEX",
        help="Leave out the units of work whose whole name matches REGEX.",
    )
    command.add_argument(
        "--set",
        action="append",
        metavar="NODE:KEY=VALUE",
        help="Change a node's execution setting for this instance (repeatable), as restart"
        " --set does: permuter:executor=slurm, permuter:batch.environment=NAME (a remote"
        " environment; pipeline environments lists them).",
    )
    command.add_argument(
        "--dry-run",
        action="store_true",
        help="Show every node's tasks and subtask counts; submit nothing.",
    )
    _json(command)


def _logs_arguments(command: Parser) -> None:
    _id("task", "TASK")(command)
    command.add_argument(
        "--subtask", type=_whole(), metavar="INDEX", help="Only this subtask's log."
    )
    _json(command)


def _wait_arguments(command: Parser) -> None:
    _id("instance", "INSTANCE")(command)
    command.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="Give up after this many seconds."
    )


def _restart_arguments(command: Parser) -> None:
    command.add_argument(
        "tasks", nargs="*", metavar="TASK[:MODE]", help="TASK or TASK:MODE, one mode per task."
    )
    mode = command.add_argument("--mode", metavar="MODE", help=MODES_HELP)
    command.on_help = lambda: _name_the_modes(mode)
    command.add_argument(
        "--instance",
        type=_whole(),
        metavar="INSTANCE",
        help="Restart every failed task of this instance.",
    )
    _dry_run(command, "Say what would run; change nothing.")
    command.add_argument(
        "--downstream",
        action="store_true",
        help="Run the tasks downstream of these again too, in order, as they become stale.",
    )
    command.add_argument("--queue", metavar="QUEUE", help="Run on this queue from now on.")
    command.add_argument(
        "--timeout", type=_seconds, metavar="SECONDS", help="New subtask timeout (s)."
    )
    command.add_argument(
        "--max-failed-subtasks", type=_whole(), metavar="N", help="Failed subtasks tolerated."
    )
    command.add_argument(
        "--max-auto-resubmits", type=_whole(), metavar="N", help="Automatic resubmits allowed."
    )
    command.add_argument("--priority", type=_whole(), metavar="N", help="0 (first) to 9 (last).")
    command.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="Other execution setting, key=value (repeatable); one batch setting of a node on"
        " Slurm as batch.NAME=VALUE (batch.partition=long).",
    )
    _json(command)
    command.set_defaults(check=_restart_usage)


def _name_the_modes(option: argparse.Action) -> None:
    """Name every restart mode in the help of ``restart --mode``, as it is shown: the
    modes' module loads the database libraries, which no other command line should wait
    for."""
    modes = ", ".join(mode.name for mode in reads.operations().restart_modes())
    option.help = f"{MODES_HELP[:-1]}: {modes}."


def _halt_arguments(command: Parser) -> None:
    command.add_argument("tasks", nargs="*", type=_whole(), metavar="TASK", help="The tasks.")
    command.add_argument(
        "--instance", type=_whole(), metavar="INSTANCE", help="Halt every running task."
    )
    _json(command)
    command.set_defaults(check=_halt_usage)


def _alerts_arguments(command: Parser) -> None:
    command.add_argument("--all", dest="every", action="store_true", help="Acknowledged ones too.")
    _json(command)


def _files_arguments(command: Parser) -> None:
    command.add_argument(
        "--instance", type=_whole(), metavar="INSTANCE", help="Produced by this instance."
    )
    command.add_argument("--task", type=_whole(), metavar="TASK", help="Produced by this task.")
    command.add_argument("--unit", metavar="UNIT", help="Of this unit of work.")
    command.add_argument("--path", metavar="PATH", help="This file, under the datastore.")
    command.add_argument(
        "--history",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="Superseded versions too.",
    )
    command.add_argument(
        "--limit",
        type=_whole(1),
        metavar="N",
        help=f"Show at most this many (default: {FILES_SHOWN} in a table, every one in JSON).",
    )
    _json(command)


def _lineage_arguments(command: Parser) -> None:
    command.add_argument(
        "path", metavar="PATH", help="A file under the datastore, e.g. set-1/L3/x.png."
    )
    command.add_argument(
        "--version",
        metavar="VERSION",
        help="Another version than the current one: its id (pipeline files --history)"
        " or a prefix of its SHA-256.",
    )
    _json(command)


def _api_arguments(command: Parser) -> None:
    command.add_argument("--host", metavar="ADDRESS", help="Address to listen on.")
    command.add_argument("--port", type=_whole(1, 65535), metavar="PORT", help="Port to listen on.")


def _worker_arguments(command: Parser) -> None:
    command.add_argument(
        "--queues",
        metavar="QUEUES",
        help="Queues to consume, comma-separated (default: every queue named).",
    )
    command.add_argument(
        "--concurrency",
        type=_whole(1),
        metavar="N",
        help="Pool processes (default: worker_concurrency).",
    )
    command.add_argument(
        "--hostname", metavar="NAME", help="This host's name in the records (worker@NAME)."
    )


def _flower_arguments(command: Parser) -> None:
    command.add_argument(
        "--log-file", type=Path, metavar="FILE", help="Write Flower's log to this file."
    )


@dataclass(frozen=True)
class Command:
    """A command of the ``pipeline`` program: what it does, the function that runs it (none
    for a group of commands), and what adds its arguments to its parser."""

    summary: str
    run: Callable[[argparse.Namespace], int | None] | None = None
    arguments: Callable[[Parser], None] | None = None


#: Every command by its path, in the order the help lists them; a path of two words is a
#: command of the group the first names.
COMMANDS: dict[str, Command] = {
    "cluster": Command("The local cluster under PIPELINE_HOME."),
    "cluster init": Command(
        "Create PIPELINE_HOME and its database, and import every definition.",
        cluster_init,
        _cluster_init_arguments,
    ),
    "cluster start": Command(
        "Start Redis, workers, beat, the HTTP API and Flower: only those not already running.",
        cluster_start,
        _cluster_start_arguments,
    ),
    "cluster stop": Command("Stop the processes `cluster start` started.", cluster_stop),
    "cluster status": Command(
        "Which home this shell uses, which of its cluster's processes are alive, and whether "
        "beat's reconciler runs.",
        cluster_status,
        _json,
    ),
    "cluster credentials": Command(
        "The HTTP API's URL and bearer token, and Flower's URL and login.",
        cluster_credentials,
        _json,
    ),
    "definitions": Command("Pipeline definitions."),
    "definitions import": Command(
        "Import definition files, all or nothing; a changed file becomes a new version.",
        definitions_import,
        _definitions_import_arguments,
    ),
    "definitions list": Command(
        "The newest version of every pipeline definition.", definitions_list, _json
    ),
    "definitions export": Command(
        "A pipeline's newest definition as a Ziggy pipelineDefinition file, on stdout.",
        definitions_export,
        _all_of(
            lambda command: command.add_argument("name", metavar="NAME", help="The pipeline."),
            lambda command: command.add_argument(
                "--format", choices=["ziggy"], default="ziggy", help="Ziggy's XML (the only one)."
            ),
        ),  # fmt: skip
    ),
    "definitions show": Command(
        "A pipeline's nodes, their algorithms, inputs, outputs and execution settings.",
        definitions_show,
        _all_of(
            lambda command: command.add_argument("name", metavar="NAME", help="The pipeline."),
            _json,
        ),  # fmt: skip
    ),
    "params": Command("Parameter sets."),
    "params list": Command("The newest version of every parameter set.", params_list, _json),
    "params import": Command(
        "Import a Ziggy parameter library (partial sets override the values they name):"
        " what it would do first, then apply once confirmed (--yes: at once).",
        params_import,
        _params_import_arguments,
    ),
    "params export": Command(
        "Parameter sets as a Ziggy parameter library, on stdout.",
        params_export,
        lambda command: command.add_argument(
            "names", nargs="*", metavar="NAME", help="The sets (default: all)."
        ),
    ),
    "params show": Command(
        "A parameter set's values and types.", params_show, _params_show_arguments
    ),
    "params set": Command(
        "Change values; a locked version (used by an instance) gets a new version instead.",
        params_set,
        _params_set_arguments,
    ),
    "datastore": Command("Data into the datastore, and old versions out."),
    "datastore import": Command(
        "Receive files into the datastore, all or nothing, each recorded in the ledger.",
        datastore_import,
        _datastore_import_arguments,
    ),
    "datastore manifest": Command(
        "Write a Ziggy XML manifest of a delivery directory (Ziggy's generate-manifest).",
        datastore_manifest,
        _datastore_manifest_arguments,
    ),
    "datastore prune": Command(
        "Remove the bytes of old versions (their ledger rows stay): run --dry-run first.",
        datastore_prune,
        _datastore_prune_arguments,
    ),
    "models": Command(
        "The model registry: every version of every model type, the newest last.",
        models_list,
        _models_arguments,
    ),
    "models import": Command(
        "Receive a model file as a version of its type (kept forever).",
        models_import,
        _models_import_arguments,
    ),
    "environments": Command(
        "Remote environments (Ziggy's): each batch system's architectures and queues, as the"
        " definitions declare them.",
        environments,
        _json,
    ),
    "events": Command(
        "Event handlers: the directories whose ready files start a pipeline, each with its"
        " last event.",
        events_list,
        _json,
    ),
    "events enable": Command(
        "Enable an event handler: its ready files start its pipeline.",
        events_enable,
        _handler_name,
    ),
    "events disable": Command(
        "Disable an event handler: its ready files wait.", events_disable, _handler_name
    ),
    "taskdirs": Command("Task directories: where subtasks ran, with their logs."),
    "taskdirs prune": Command(
        "Remove the directories of tasks complete without failures, and of earlier attempts.",
        taskdirs_prune,
        _taskdirs_prune_arguments,
    ),
    "submit": Command("Submit a pipeline instance.", submit, _submit_arguments),
    "instances": Command(
        "Pipeline instances and their states: the newest, in id order.", instances, _rows
    ),
    "tasks": Command(
        "The tasks of an instance in id order: P-state, error flag and subtask counts.",
        tasks,
        _all_of(_id("instance", "INSTANCE"), _rows),
    ),
    "task": Command(
        "A task's details and its history of transitions.",
        task,
        _all_of(_id("task", "TASK"), _json),
    ),
    "subtasks": Command(
        "A task's subtasks in index order: state, attempts and error.",
        subtasks,
        _all_of(_id("task", "TASK"), _rows),
    ),
    "logs": Command(
        "The algorithm's output (stdout and stderr) of each subtask of a task.",
        logs,
        _logs_arguments,
    ),
    "wait": Command(
        "Wait for an instance: exit 0 when COMPLETED, 1 when it stops with errors, 3 on timeout,"
        " 4 when STALE.",
        wait,
        _wait_arguments,
    ),
    "restart": Command(
        "Restart failed tasks: each in its own mode, or every failed task of an instance.",
        restart,
        _restart_arguments,
    ),
    "halt": Command(
        "Halt tasks: queued work dropped, running subtasks revoked, the error flag set.",
        halt,
        _halt_arguments,
    ),
    "queues": Command(
        "The queues: messages waiting on the broker, tasks waiting, the oldest one's wait.",
        queues,
        _json,
    ),
    "workers": Command(
        "The workers of the cluster: host, up or silent, queues, pool size, last heartbeat.",
        workers,
        _json,
    ),
    "alerts": Command(
        "Alerts: lost work the reconciler dispatched again or failed.",
        alerts_list,
        _alerts_arguments,
    ),
    "alerts ack": Command(
        "Acknowledge an alert: it leaves the default list.", alerts_ack, _id("id", "ID")
    ),
    "files": Command(
        "Datastore files and who produced each (the current versions, unless asked).",
        files,
        _files_arguments,
    ),
    "lineage": Command(
        "Who produced a file: each producer back to the data received, with its parameters.",
        lineage,
        _lineage_arguments,
    ),
    "api": Command(
        "Serve the HTTP API alone (FastAPI on uvicorn; host and port from settings).",
        api,
        _api_arguments,
    ),
    "worker": Command(
        "Run a Celery worker in the foreground, on any host, pointed at the central host.",
        worker,
        _worker_arguments,
    ),
    "flower": Command(
        "Run Flower with the pipeline console, behind basic auth (`pipeline cluster credentials`).",
        flower,
        _flower_arguments,
    ),
}


def _builder(path: str) -> Callable[[Parser], None]:
    """What builds the parser of the command at ``path`` ("" for the program): its
    arguments, then a parser for each of its subcommands, each built when it is used."""

    def build(command: Parser) -> None:
        arguments = COMMANDS[path].arguments if path else None
        if arguments is not None:
            arguments(command)
        below = [sub for sub in COMMANDS if sub.rpartition(" ")[0] == path]
        if not below:
            return
        choices = command.add_subparsers(title="commands", metavar="COMMAND")
        for sub in below:
            summary, run = COMMANDS[sub].summary, COMMANDS[sub].run
            parsed: Parser = choices.add_parser(
                sub.rpartition(" ")[2],
                help=summary,
                description=summary,
                epilog=f"Example: {EXAMPLES[sub]}",
            )
            parsed.set_defaults(parser=parsed, **({"run": run} if run else {}))
            parsed.build = _builder(sub)

    return build


@cache
def parser() -> Parser:
    """The parser of the whole ``pipeline`` command line (``COMMANDS``), each command's
    parser built as a command line reaches it. A command line it parsed (see ``parse``)
    holds its command's ``run`` function and the ``parser`` of the deepest command named;
    ``check``, where set, says why its arguments do not go together."""
    top = Parser(
        prog=PROGRAM,
        description="A Ziggy-style science pipeline on Celery.",
        epilog=f"Example: {EXAMPLES['']}",
    )
    top.set_defaults(parser=top)
    top.build = _builder("")
    return top


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """The command line ``argv`` (the words after ``pipeline``) as its command will run it.
    Raises ``UsageError`` with the one-line message of what is wrong (``CommandMissing``
    when it names no command); runs nothing, but ``--help`` prints the help and exits 0."""
    words = list(argv)
    try:
        args, unknown = parser().parse_known_args(words)
        if unknown and hasattr(args, "run"):
            # Positionals after an option (``halt 3 --json 4``): the command's own parser,
            # which has no subcommands, takes them intermixed.
            depth = len(args.parser.prog.split()) - 1
            args, unknown = args.parser.parse_intermixed_args(words[depth:]), []
        if unknown:
            raise UsageError(f"unrecognized arguments: {' '.join(unknown)}", args.parser.prog)
        if not hasattr(args, "run"):
            raise CommandMissing(args.parser)
        check = getattr(args, "check", None)
        problem = check(args) if check else None
        if problem:
            raise UsageError(problem, args.parser.prog)
    except CommandMissing:
        raise
    except UsageError as wrong:
        raise UsageError(_quoting_short(str(wrong), words), wrong.command) from None
    return args


def _quoting_short(message: str, words: list[str]) -> str:
    """The message with each long word of the command line it quotes cut short, as the
    pipeline's errors quote their input (``errors.shown``)."""
    for word in words:
        if len(word) > SHOWN_CHARACTERS:
            message = message.replace(repr(word), shown(word)).replace(word, shown(word))
    return message


def main(argv: Sequence[str] | None = None) -> NoReturn:
    """Run the ``pipeline`` command line (``sys.argv`` by default): every error is one line
    on stderr. Exit statuses: 0 success, 1 refused or errors in the run, 2 a usage error
    (the command line itself), 3 a timeout, 4 stale, 130 interrupted (Ctrl-C)."""
    try:
        args = parse(sys.argv[1:] if argv is None else argv)
        status = args.run(args)
    except CommandMissing as missing:
        missing.parser.print_help()
        raise SystemExit(EXIT_USAGE) from None
    except UsageError as wrong:
        _error(wrong.line)
        raise SystemExit(EXIT_USAGE) from None
    except KeyboardInterrupt:
        sys.stderr.write("\ninterrupted\n")  # the shell's prompt on a line of its own
        raise SystemExit(EXIT_INTERRUPTED) from None
    except Exception as exc:  # noqa: BLE001 - reported, or raised again
        fail(exc)
    raise SystemExit(status or EXIT_OK)


def fail(exc: Exception) -> NoReturn:
    """Report an error an operator can cause or meet in one line and exit 1; raise anything
    else (a bug, with its traceback). The pipeline's own errors are told without loading
    the database libraries that the others need (a read command may not have)."""
    if isinstance(exc, PipelineError):
        _error(one_line(str(exc)))
        raise SystemExit(EXIT_REFUSED) from None
    from pipeline.operations.problems import problem

    found = problem(exc)
    if found is None:
        raise exc
    _error(found.message)
    raise SystemExit(EXIT_REFUSED) from None


def _error(message: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(f"[red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
