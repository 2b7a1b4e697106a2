"""The operators' read commands (``instances``, ``tasks``, ``subtasks``, ``task``) as they
print, and how every command of the CLI prints: a table, JSON, a footer.

An operator waits for these reads, so they must answer within 0.35 s, process start
included; SQLAlchemy, the settings and the operations cost half a second to import. So a
read asks the home's HTTP API when it runs with this shell's settings (``local_api``),
which answers the queries' views, and otherwise reads the database with the statements an
earlier read compiled for it (``compiled_reads``), or, the first time, imports the
queries: the same bytes every way. Nothing here imports more than the standard library until it is
used: Rich (40 ms) only when a table or a line of text is printed, never for ``--json``.
"""

from __future__ import annotations

import atexit
import gc
import importlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

from pipeline.domain.listing import TABLE_ROWS, JsonText, json_text
from pipeline.domain.words import BATCH_JOB_COLUMNS, batch_job_cells
from pipeline.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from rich.console import Console

#: The width of what goes to a pipe or a file (COLUMNS unset): wide enough that no column
#: of a table is cut and no line is folded, as a script or ``grep`` needs it.
PIPED_WIDTH = 1000
#: The width of what the CLI prints, decided as it starts (None: the terminal's).
WIDTH = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else PIPED_WIDTH


@cache
def console() -> Console:
    """The console every command prints its text and tables on (standard output)."""
    from rich.console import Console

    return Console(width=WIDTH)


def print_json(data: Any) -> None:
    """Print ``data`` as JSON (``listing.json_text``), or as it is when it is in that form
    already (a listing the HTTP API answered)."""
    sys.stdout.flush()
    sys.stdout.buffer.write(data.text if isinstance(data, JsonText) else json_text(data))
    sys.stdout.buffer.flush()


@cache
def private() -> None:
    """Make what the CLI writes from now on (a home, received files, logs) as private as
    the cluster's own: the settings say to whom."""
    from pipeline.settings import get_settings

    os.umask(get_settings().umask)


def operations(name: str = "facade") -> ModuleType:
    """A module of ``pipeline.operations`` (the facade's commands, the ``queries``, the
    ``lineage`` ...), imported when a command first needs it: with SQLAlchemy, the settings
    and the models it costs half a second, more than a whole read through the home's HTTP
    API takes (``local_api``)."""
    private()
    return importlib.import_module(f"pipeline.operations.{name}")


def _read(
    path: str,
    in_process: Callable[[ModuleType], tuple[Any, int | None]],
    as_json: bool = False,
    **params: Any,
) -> tuple[Any, int | None]:
    """What a read command shows, and how many rows there are in all when it is a listing:
    the home's HTTP API's answer when it runs with this shell's settings, else
    ``in_process(queries)`` (the same views: the API serves the queries'). An unknown id is
    refused with the same message either way. For ``--json`` (``as_json``) an answer of
    the API already in the form printed (``JsonText``) is shown as it came."""
    from pipeline.interfaces import local_api

    with _uncollected():
        record = local_api.find()
        answer = local_api.get(record, path, as_json=as_json, **params) if record else None
        if answer is None:
            return _in_process(in_process)
    if answer.status == local_api.NOT_FOUND:
        raise NotFound(answer.data)
    return answer.data, answer.total


@contextmanager
def _uncollected() -> Iterator[None]:
    """The cycle collector kept out of a read: what it imports and makes (the 10,000 rows
    of a listing) holds no garbage cycle and lives until the command ends, yet the
    collector walked all of it during the read, after it and again as the process exited,
    40 to 60 ms of the 0.35 s a read may take. So it waits during the read; what the read
    made then joins the oldest generation unwalked (``freeze``, ``unfreeze``), and the
    process exits without a last walk (``freeze`` at exit). A process that goes on (a
    test's) collects as before."""
    gc.disable()
    try:
        yield
    finally:
        gc.freeze()
        gc.unfreeze()
        gc.enable()
        atexit.unregister(gc.freeze)  # once, however many reads
        atexit.register(gc.freeze)


def _in_process(in_process: Callable[[Any], tuple[Any, int | None]]) -> tuple[Any, int | None]:
    """``in_process`` over the statements compiled for the home's database when they were
    kept with these settings and this code (``compiled_reads``: no SQLAlchemy to import),
    else over the queries, keeping the compiled statements for the next read."""
    from pipeline.home import pipeline_home
    from pipeline.operations import compiled_reads

    home = pipeline_home()
    with compiled_reads.queries(home) as compiled:
        if compiled is not None:
            try:
                return in_process(compiled)
            except (NotFound, InvalidInput):
                raise
            except Exception:  # noqa: S110, BLE001 - a driver's error: the usual way says what
                pass
    found = in_process(operations("queries"))
    with suppress(OSError):
        operations("read_statements").keep(home)
    return found


def _listing(
    path: str,
    in_process: Callable[[ModuleType, int | None], Any],
    limit: int | None,
    every: bool,
    as_json: bool,
) -> tuple[list[dict[str, Any]] | JsonText, int]:
    """A listing's rows and how many it has in all: ``--limit`` N rows, every one for
    ``--all`` (and for ``--json`` unless ``--limit`` is given: the stable contract of
    scripts), else a screenful, ``TABLE_ROWS``; not both (``cli`` refuses that). The
    database does the limiting."""
    wanted = None if every or (as_json and limit is None) else limit or TABLE_ROWS

    def read(operations: ModuleType) -> tuple[list[dict[str, Any]], int]:
        found = in_process(operations, wanted)
        return found.rows, found.total

    rows, total = _read(path, read, as_json, **({} if wanted is None else {"limit": wanted}))
    return rows, len(rows) if total is None else total  # the API counts what it answers


def _footer(shown: int, total: int, what: str, which: str = "") -> None:
    """Say how many rows a table left out, and how to see them: ``showing 50 of 10,000
    tasks (--all for every one)``."""
    if shown < total:
        console().print(
            f"showing {which}{shown:,} of {total:,} {what} (--all for every one)", highlight=False
        )


def table(
    title: str, columns: list[str], rows: list[list[Any]], whole: tuple[str, ...] = ()
) -> None:
    """Print rows as a table; the ``whole`` columns fold onto more lines rather than be cut,
    and the words an operator acts on (``KEPT``: a state, a mode) are never narrowed:
    the other columns give way first, down to a terminal of 80 columns."""
    from rich.table import Table

    cells = [["" if value is None else str(value) for value in row] for row in rows]
    shown = Table(title=title, title_justify="left")
    for number, column in enumerate(columns):
        widest = max([len(column), *(len(row[number]) for row in cells)])
        shown.add_column(
            column,
            overflow="fold" if column in whole else "ellipsis",
            min_width=widest if column in KEPT and widest <= KEPT_MAX else None,
        )
    for row in cells:
        shown.add_row(*row)
    console().print(shown)


#: Columns whose words are never cut (see ``table``), up to this many characters.
KEPT = frozenset({"id", "state", "mode", "severity", "result", "from", "task", "instance"})
KEPT_MAX = 30


@dataclass(frozen=True)
class Shown:
    """A listing as a read command shows it: what its rows are, where the HTTP API and the
    queries give them, and each row's cells in its table."""

    what: str
    title: str
    path: str
    in_process: Callable[[ModuleType, int | None], Any]
    columns: list[str]
    cells: Callable[[dict[str, Any]], list[Any]]
    #: Which rows a table of some of them shows: "the newest " of the instances.
    which: str = ""


def _show(shown: Shown, limit: int | None, every: bool, as_json: bool) -> None:
    """Print a listing as JSON, or as a table and a footer counting the rows left out."""
    rows, total = _listing(shown.path, shown.in_process, limit, every, as_json)
    if as_json:
        return print_json(rows)
    table(shown.title, shown.columns, [shown.cells(row) for row in rows])
    _footer(len(rows), total, shown.what, shown.which)


def show_instances(limit: int | None, every: bool, as_json: bool) -> None:
    """Pipeline instances and their states: the newest, in id order."""
    columns = ["id", "pipeline", "version", "state", "nodes", "started by", "created", "message"]
    keys = ("id", "pipeline", "definition_version", "state", "", "event", "created_at", "message")
    listed = Shown(
        "instances",
        "instances",
        "/instances",
        lambda f, n: f.instances_listing(n),
        columns,
        lambda r: [(r.get(key) or "") if key else _node_range(r) for key in keys],
        "the newest ",
    )
    _show(listed, limit, every, as_json)


def _node_range(instance: dict[str, Any]) -> str:
    """The nodes an instance runs, and the units of work when it runs some only."""
    chosen = [", ".join(instance["units"])] if instance.get("units") is not None else []
    if instance.get("units_regexp"):
        chosen.append(f"units {instance['units_regexp']}")
    if instance.get("units_exclude"):
        chosen.append(f"not {instance['units_exclude']}")
    units = f" ({'; '.join(chosen)})" if chosen else ""
    if not instance["start_node"] and not instance["end_node"]:
        return "all" + units
    return f"{instance['start_node'] or 'first'} .. {instance['end_node'] or 'last'}{units}"


def show_tasks(instance: int, limit: int | None, every: bool, as_json: bool) -> None:
    """The tasks of an instance in id order: P-state, error flag and subtask counts."""
    columns = ["id", "node", "unit of work", "state", "subtasks", "worker", "error"]
    keys = ("id", "node", "unit_of_work", "state", "counts", "worker_host", "error_message")
    listed = Shown(
        "tasks",
        f"tasks of instance {instance}",
        f"/instances/{instance}/tasks",
        lambda f, n: f.tasks_listing(instance, n),
        columns,
        lambda r: [r[key] for key in keys],
    )
    _show(listed, limit, every, as_json)


def show_subtasks(task_id: int, limit: int | None, every: bool, as_json: bool) -> None:
    """A task's subtasks in index order: state, attempts and error."""
    columns = ["index", "state", "attempts", "worker", "inputs", "outputs", "error"]
    keys = ("index", "state", "attempts", "worker_host", "inputs", "outputs", "error")
    listed = Shown(
        "subtasks",
        f"subtasks of task {task_id}",
        f"/tasks/{task_id}/subtasks",
        lambda f, n: f.subtasks_listing(task_id, n),
        columns,
        lambda r: [", ".join(r[key]) if key == "inputs" else r[key] for key in keys],
    )
    _show(listed, limit, every, as_json)


def show_task(task_id: int, as_json: bool) -> None:
    """A task's details and its history of transitions."""
    detail, _ = _read(f"/tasks/{task_id}", lambda f: (f.get_task(task_id), None))
    if as_json:
        return print_json(detail)
    console().print(
        f"[bold]task {detail['id']}[/]  instance {detail['instance_id']}  node {detail['node']}"
        f"  unit {detail['unit_of_work']}\nstate {detail['state']}  subtasks {detail['counts']}"
        f"  attempt {detail['attempt']}  queue {detail['execution'].get('queue')}"
        f"\ndirectory {detail['task_dir'] or '-'}"
    )
    for ran in detail.get("attempts", [])[-3:]:  # the latest: the history says when code changed
        models = "".join(f", model {kind} v{v}" for kind, v in ran["models"].items())
        console().print(
            f"attempt {ran['attempt']} ran {ran['code_version']}{models}", highlight=False
        )
    if detail["error_message"]:
        halted = " (halted)" if detail["halted"] else ""
        console().print(f"[red]error{halted}[/] {detail['error_message']}")
    if detail["running"]:
        table(
            "running subtasks",
            ["index", "worker", "pid", "started", "last heartbeat"],
            [
                [s["index"], s["worker_host"], s["worker_pid"], s["started_at"], s["heartbeat_at"]]
                for s in detail["running"]
            ],
        )
    if detail["batch_jobs"]:
        table(
            "batch jobs",
            list(BATCH_JOB_COLUMNS),
            [batch_job_cells(job) for job in detail["batch_jobs"]],
        )
    table(
        "history",
        ["time", "p-state", "attempt", "host", "message"],
        [
            [
                e["at"],
                e["state"],
                e["attempt"],
                e["host"],
                e["message"],
            ]
            for e in detail["history"]
        ],
    )
