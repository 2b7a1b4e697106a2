"""The operators' read commands (``instances``, ``tasks``, ``subtasks``, ``task``): a table is
a screenful of rows with a counted footer (``--limit N``, ``--all``), ``--json`` every row;
a read written wrong is a usage error; and the output is the same, byte for byte, whether
the home's HTTP API answers the read (``pipeline.interfaces.local_api``) or the CLI reads
the database in process; the Python client reads the same rows from the same API.

The API runs in a thread of this process over the test's own home; the real API process
that ``cluster start`` runs is in ``test_cli_api_cluster.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pipeline.domain.listing import JsonText
from pipeline.errors import NotFound
from pipeline.interfaces import local_api
from pipeline.operations import queries
from tests.support import (
    InProcessWorker,
    assert_one_line_error,
    free_port,
    run_cli,
    wait_for,
)

#: Every read, as a table, as JSON, a page of it, and of an unknown id.
READS = [
    ["instances"],
    ["instances", "--json"],
    ["instances", "--limit", "1"],
    ["tasks", "1"],
    ["tasks", "1", "--json"],
    ["tasks", "1", "--limit", "1"],
    ["tasks", "1", "--all"],
    ["subtasks", "1"],
    ["subtasks", "1", "--json"],
    ["subtasks", "1", "--limit", "2"],
    ["subtasks", "1", "--json", "--limit", "2"],
    ["task", "1"],
    ["task", "1", "--json"],
    ["tasks", "999"],
    ["subtasks", "999"],
    ["task", "999"],
]


@pytest.fixture
def cli(failed: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """``pipeline ARGS`` on this test's failed home: instance 1, tasks 1 and 2 with four
    subtasks each, subtask 0 failed."""
    return lambda *args: run_cli(capsys, *args)


def printed(result: subprocess.CompletedProcess[str]) -> tuple[int, str, str]:
    """What a command printed, and its exit status."""
    return result.returncode, result.stdout, result.stderr


def first_column(table: str) -> list[str]:
    """The first cell of each row of a printed table (not its header's, nor the empty
    ones of a row folded onto more lines)."""
    cells = [line.split("│")[1].strip() for line in table.splitlines() if line.startswith("│")]
    return [cell for cell in cells if cell]


def test_a_table_shows_its_first_rows_and_counts_the_others(cli: Any) -> None:
    page = cli("subtasks", 1, "--limit", 2)
    assert page.returncode == 0, page
    assert first_column(page.stdout) == ["0", "1"]
    assert page.stdout.endswith("showing 2 of 4 subtasks (--all for every one)\n")

    for every in (cli("subtasks", 1, "--all"), cli("subtasks", 1)):  # 4 rows fit the default
        assert first_column(every.stdout) == ["0", "1", "2", "3"]
        assert "showing" not in every.stdout

    tasks = cli("tasks", 1, "--limit", 1)
    assert first_column(tasks.stdout) == ["1"]
    assert "showing 1 of 2 tasks (--all for every one)" in tasks.stdout


def test_instances_shows_the_newest_in_id_order(cli: Any, worker: InProcessWorker) -> None:
    for _ in range(2):
        assert cli("submit", "sample").returncode == 0
    page = cli("instances", "--limit", 2)
    assert first_column(page.stdout) == ["2", "3"]
    assert "showing the newest 2 of 3 instances (--all for every one)" in page.stdout
    assert first_column(cli("instances", "--all").stdout) == ["1", "2", "3"]


def test_json_has_every_row_unless_limited(cli: Any) -> None:
    assert [s["index"] for s in json.loads(cli("subtasks", 1, "--json").stdout)] == [0, 1, 2, 3]
    limited = json.loads(cli("subtasks", 1, "--json", "--limit", 3).stdout)
    assert [s["index"] for s in limited] == [0, 1, 2]
    assert [t["id"] for t in json.loads(cli("tasks", 1, "--json").stdout)] == [1, 2]


def test_the_listings_limit_in_the_database(failed: Path) -> None:

    found = queries.subtasks_listing(1, 3)
    assert ([s["index"] for s in found.rows], found.total) == ([0, 1, 2], 4)
    assert [s["consumed"] for s in found.rows] == [
        s["consumed"] for s in queries.list_subtasks(1)[:3]
    ]
    assert (len(queries.tasks_listing(1, 5).rows), queries.tasks_listing(1, 5).total) == (2, 2)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (["tasks", "1", "--limit", "0"], "argument --limit: 0 is out of range (at least 1)"),
        (["subtasks", "1", "--limit", "-1"], "argument --limit: -1 is out of range"),
        (["instances", "--limit", "x"], "argument --limit: 'x' is not a whole number"),
        (["tasks", "1", "--limit"], "argument --limit: expected one argument"),
        (["subtasks", "1", "--limit", "2", "--all"], "--all: not allowed with argument --limit"),
        (["task", "1", "--limit", "2"], "unrecognized arguments: --limit 2"),
        (["task", "1", "--all"], "unrecognized arguments: --all"),
        (["tasks"], "the following arguments are required: INSTANCE"),
        (["tasks", "1", "2"], "unrecognized arguments: 2"),
        (["instances", "3"], "unrecognized arguments: 3"),
        # A digit to str.isdigit and to int(), not an id anyone types.
        (["tasks", "١"], "argument INSTANCE: '١' is not a whole number"),
    ],
)
def test_a_read_written_wrong_is_a_usage_error(cli: Any, args: list[str], fragment: str) -> None:
    result = cli(*args)
    assert result.returncode == 2, result
    assert_one_line_error(result, fragment, f"(see 'pipeline {args[0]} --help')")


@pytest.mark.parametrize(
    ("plain", "spelled_otherwise"),
    [
        (["subtasks", "1", "--limit", "2"], ["subtasks", "--limit=2", "1"]),
        (["tasks", "1", "--json"], ["tasks", "--json", "1", "--json"]),
        (["task", "1"], ["task", "--", "1"]),
        (["instances", "--all"], ["instances", "--all", "--all"]),
    ],
)
def test_a_read_prints_the_same_however_it_is_spelled(
    cli: Any, plain: list[str], spelled_otherwise: list[str]
) -> None:
    expected = cli(*plain)
    assert expected.returncode == 0 and expected.stdout
    otherwise = cli(*spelled_otherwise)
    assert (otherwise.returncode, otherwise.stdout, otherwise.stderr) == (0, expected.stdout, "")


# -- the same output through the home's HTTP API ---------------------------------------------


class Reads:
    """How the CLI read: each answer ``local_api.get`` gave (None: it read in process)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.answers: list[local_api.Answer | None] = []
        ask = local_api.get

        def get(record: dict[str, Any], path: str, **params: Any) -> local_api.Answer | None:
            self.answers.append(ask(record, path, **params))
            return self.answers[-1]

        monkeypatch.setattr(local_api, "get", get)

    def served(self) -> bool:
        """Did the API answer the last read (and nothing ask it since the last check)?"""
        answers, self.answers = self.answers, []
        return len(answers) == 1 and answers[0] is not None


@pytest.fixture
def api(failed: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[dict[str, Any]]:
    """The home's HTTP API in a thread of this process, named in the home's run file as
    ``pipeline api`` names itself (this process stands for the API's)."""
    import uvicorn

    from pipeline.interfaces.api import create_app, server_config
    from pipeline.settings import API_PREFIX, get_settings

    settings = get_settings()
    port = free_port()
    server = uvicorn.Server(server_config(create_app(settings.api_token), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    monkeypatch.setattr(local_api, "_serving", lambda pid: pid == os.getpid())
    try:
        wait_for(lambda: server.started, timeout=30, what="the API to start")
        url = f"http://127.0.0.1:{port}{API_PREFIX}"
        local_api.publish(failed, url, settings.api_token or "", None)
        yield {"url": url, "token": settings.api_token}
    finally:
        local_api.withdraw(failed)
        server.should_exit = True
        thread.join(timeout=30)


def running(task: int, index: int) -> None:
    """Mark a subtask of the task running on a worker, as the task's detail lists it."""
    from pipeline.database import transaction
    from pipeline.domain.models import Subtask

    with transaction() as session:
        subtask = session.query(Subtask).filter_by(task_id=task, index=index).one()
        subtask.state, subtask.worker_host, subtask.worker_pid = "RUNNING", "worker1@host", 4242


def test_the_api_and_the_database_print_the_same_bytes(
    api: dict[str, Any], cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    running(1, 2)
    reads = Reads(monkeypatch)
    through_api = {}
    for args in READS:
        through_api[tuple(args)] = cli(*args)
        answer = reads.answers[-1] if reads.answers else None
        assert reads.served(), f"the API did not answer pipeline {' '.join(args)}"
        if "--json" in args and args[0] != "task" and through_api[tuple(args)].returncode == 0:
            assert isinstance(answer.data, JsonText), f"{args}: printed as the API wrote it"
    # Another setting in this shell's environment than the API's: read in process.
    monkeypatch.setenv("PIPELINE_WORKERS", "1")
    for args in READS:
        in_process = cli(*args)
        assert not reads.served()
        assert printed(through_api[tuple(args)]) == printed(in_process), args
    assert through_api[("task", "999")].returncode == 1
    assert through_api[("task", "999")].stderr == "error: unknown task 999\n"


def test_the_python_client_reads_the_rows_the_cli_prints(api: dict[str, Any], cli: Any) -> None:
    """The CLI's reads and the Python client are one client of the same API: the same rows,
    and an unknown id is the same one-line message."""
    from pipeline.interfaces.client import ApiError, Client
    from pipeline.settings import API_PREFIX

    with Client(api["url"].removesuffix(API_PREFIX), api["token"]) as client:
        assert client.tasks(1) == json.loads(cli("tasks", 1, "--json").stdout)
        assert client.subtasks(1) == json.loads(cli("subtasks", 1, "--json").stdout)
        assert client.task(1) == json.loads(cli("task", 1, "--json").stdout)
        assert client.alerts(include_acknowledged=True) == json.loads(
            cli("alerts", "--all", "--json").stdout
        )
        with pytest.raises(ApiError) as unknown:
            client.task(999)
    assert (unknown.value.status, unknown.value.message) == (404, "unknown task 999")
    assert cli("task", 999).stderr == f"error: {unknown.value.message}\n"


def test_what_the_api_does_not_answer_is_read_in_process(
    api: dict[str, Any], cli: Any, failed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An id out of range (refused by the API's own validation), a wrong token: the CLI
    reads in process and prints what it always printed."""
    reads = Reads(monkeypatch)
    huge = cli("task", 2**63)
    assert reads.answers == [None] and huge.returncode == 1
    assert "task id 9223372036854775808 is out of range" in huge.stderr

    reads.answers.clear()
    local_api.publish(failed, api["url"], "wrong-token", None)
    assert first_column(cli("tasks", 1).stdout) == ["1", "2"]
    assert reads.answers == [None]


def test_a_stale_run_file_is_passed_over(
    failed: Path, cli: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After a crash the run file stays: a pid that is gone, or reused by another process,
    is never asked; one that looks like an API at a port nobody listens on is refused at
    once. Each time the CLI reads in process."""
    reads = Reads(monkeypatch)
    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], text=True,
                          capture_output=True, check=True)  # fmt: skip
    url = f"http://127.0.0.1:{free_port()}/api/v1"
    monkeypatch.setattr(os, "getpid", lambda: int(gone.stdout))
    local_api.publish(failed, url, "token", None)
    assert first_column(cli("tasks", 1).stdout) == ["1", "2"]
    assert reads.answers == [], "a pid that is gone is never asked"

    looks_like_an_api = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "api"]
    )
    try:
        # Until it has exec'd, the new process still shows this one's command line.
        wait_for(
            lambda: b"api" in Path(f"/proc/{looks_like_an_api.pid}/cmdline").read_bytes(),
            what="the sleeping process to name itself api",
        )
        monkeypatch.setattr(os, "getpid", lambda: looks_like_an_api.pid)
        local_api.publish(failed, url, "token", None)
        assert first_column(cli("tasks", 1).stdout) == ["1", "2"]
        assert reads.answers == [None], "asked, refused, read in process"
    finally:
        looks_like_an_api.kill()
        looks_like_an_api.wait()


def test_the_run_file_is_the_owners_alone_and_names_its_own_process(failed: Path) -> None:
    local_api.publish(failed, "http://127.0.0.1:1/api/v1", "secret", None)
    path = failed / "run" / local_api.RUN_FILE
    assert path.stat().st_mode & 0o777 == 0o600
    assert json.loads(path.read_text())["pid"] == os.getpid()
    local_api.withdraw(failed)
    assert not path.exists()


def test_an_api_started_beside_a_serving_one_leaves_it_the_run_file(
    failed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A second API of the same home (another port, other settings), stopped again, must not
    take the reads away from the first."""
    first = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "api"])
    try:
        wait_for(
            lambda: b"api" in Path(f"/proc/{first.pid}/cmdline").read_bytes(),
            what="the first API's process to name itself api",
        )
        with monkeypatch.context() as patched:
            patched.setattr(os, "getpid", lambda: first.pid)
            local_api.publish(failed, "http://127.0.0.1:1/api/v1", "first", None)
        local_api.publish(failed, "http://127.0.0.1:2/api/v1", "second", None)
        local_api.withdraw(failed)
        record = json.loads((failed / "run" / local_api.RUN_FILE).read_text())
        assert (record["pid"], record["token"]) == (first.pid, "first")
    finally:
        first.kill()
        first.wait()


# -- a new process reads without SQLAlchemy ---------------------------------------------------


def new_process(*args: Any) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``pipeline ARGS`` as a new process: what it printed (its import times left out of its
    standard error) and every module it imported."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "pipeline", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    timing = [line for line in done.stderr.splitlines() if line.startswith("import time:")]
    imported = {line.split("|")[-1].strip() for line in timing}
    stderr = "".join(f"{line}\n" for line in done.stderr.splitlines() if line not in timing)
    return subprocess.CompletedProcess(args, done.returncode, done.stdout, stderr), imported


#: What a read command in a new process must not wait for: pydantic too (the views and the
#: execution settings' defaults come without it, ``read_views`` and the reads file).
HEAVY = {
    "sqlalchemy",
    "pydantic",
    "pydantic_settings",
    "pipeline.settings",
    "pipeline.domain.models",
}


def test_a_new_process_reads_with_the_driver_alone_and_prints_the_same(failed: Path) -> None:
    """The first read keeps the statements compiled for the home's database; every read
    after it, each a new process, imports neither SQLAlchemy nor the settings' libraries
    nor the models, and prints what the usual way prints, byte for byte: tables, JSON,
    footers, and an unknown id's one line."""
    running(1, 2)
    kept = failed / "run" / "reads.json"
    first, imported = new_process("tasks", 1)
    assert first.returncode == 0 and "sqlalchemy" in imported, "the first read: the usual way"
    assert kept.stat().st_mode & 0o777 == 0o600, "it holds how to connect: the owner's alone"
    compiled = {}
    for args in READS:
        compiled[tuple(args)], imported = new_process(*args)
        assert not HEAVY & imported, (args, sorted(HEAVY & imported))

    kept.unlink()  # the usual way every time: each read keeps the file again
    for args in READS:
        kept.unlink(missing_ok=True)
        usual, imported = new_process(*args)
        assert "sqlalchemy" in imported
        assert printed(compiled[tuple(args)]) == printed(usual), args
    assert compiled[("task", "999")].stderr == "error: unknown task 999\n"
    assert compiled[("subtasks", "1", "--json")].stdout.count('"consumed"') == 4


def test_the_views_declare_the_fields_the_read_views_build_in_their_order() -> None:
    """Each read command's view is built without pydantic (``read_views``) and declared for
    the HTTP API with pydantic (``views``): a view declaring other fields, or the same in
    another order, is refused as ``views`` loads."""
    from pipeline.operations import read_views, views

    views.same_fields(views.TaskEventView, read_views.TASK_EVENT_FIELDS)
    with pytest.raises(TypeError, match="TaskEventView declares"):
        views.same_fields(views.TaskEventView, read_views.TASK_EVENT_FIELDS[::-1])
    with pytest.raises(TypeError, match="TaskEventView declares"):
        views.same_fields(views.TaskEventView, read_views.TASK_EVENT_FIELDS[:-1])


def test_reads_kept_with_other_settings_or_code_are_passed_over(
    failed: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another setting in the environment, another settings file or another version of the
    statements' code: the usual way reads, and keeps the file for what is now."""
    from pipeline.operations import compiled_reads, read_statements

    def usable() -> bool:
        with compiled_reads.queries(failed) as found:
            return found is not None

    read_statements.keep(failed)
    assert usable()
    monkeypatch.setenv("PIPELINE_WORKERS", "1")
    assert not usable()
    read_statements.keep(failed)
    assert usable()
    (failed / "settings.toml").write_text((failed / "settings.toml").read_text() + "\n# edited\n")
    assert not usable()
    read_statements.keep(failed)
    monkeypatch.setattr(compiled_reads, "code_stamp", lambda: "another version")
    assert not usable()
    monkeypatch.undo()


def test_the_compiled_reads_give_the_views_the_queries_give_on_either_database(
    any_database: str, worker: InProcessWorker, home: Path
) -> None:
    """Times, JSON, booleans and P-states as each database's driver returns them are read
    back as SQLAlchemy reads them: the views are equal, on SQLite and on PostgreSQL."""
    from pipeline.operations import compiled_reads, facade, read_statements

    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    running(queries.list_tasks(instance)[0]["id"], 2)
    read_statements.keep(home)
    with compiled_reads.queries(home) as compiled:
        assert compiled is not None
        for limit in (None, 1):
            assert compiled.instances_listing(limit) == queries.instances_listing(limit)
            assert compiled.tasks_listing(instance, limit) == queries.tasks_listing(instance, limit)
        for task in queries.list_tasks(instance):
            assert compiled.get_task(task["id"]) == queries.get_task(task["id"])
            for limit in (None, 2):
                assert compiled.subtasks_listing(task["id"], limit) == queries.subtasks_listing(
                    task["id"], limit
                )
        for read in (lambda: compiled.get_task(999), lambda: compiled.tasks_listing(999)):
            with pytest.raises(NotFound):
                read()


def test_the_compiled_reads_take_the_drivers_values_as_sqlalchemy_reads_them(
    any_database: str, worker: InProcessWorker, home: Path
) -> None:
    """Every statement's rows, value for value and type for type, as the compiled reads
    fetch them (on PostgreSQL times and booleans as psycopg gives them; on SQLite each
    converted) and as a SQLAlchemy session reads them; JSON, which both select as its text
    and decode once for each text, as the models read it."""
    from sqlalchemy.dialects import sqlite

    from pipeline.database import transaction
    from pipeline.domain.models import BatchJob, Task, utcnow
    from pipeline.operations import compiled_reads, facade, read_statements
    from pipeline.operations.views import task_view

    facade.set_parameters("algorithm", ["throw_exception_subtask_0=true"])
    instance = facade.submit("sample", None, "permuter")["id"]
    worker.drain()
    task = queries.list_tasks(instance)[0]["id"]
    running(task, 2)
    with transaction() as session:  # a job with every time set, a JSON value and a float
        session.add(
            BatchJob(task_id=task, attempt=1, token="t", system="slurm", subtasks=4, elements=1,
                     seen={"state": "RUNNING"}, submitted_at=utcnow(), ended_at=utcnow(),
                     cost=1.5)
        )  # fmt: skip
    values = {"instance_id": instance, "task_id": task, "limit": 2, "state": "RUNNING", "last": 9}
    read_statements.keep(home)
    with compiled_reads.queries(home) as compiled, transaction() as session:
        assert compiled is not None
        usual = read_statements.SessionReader(session)
        for name, statement in read_statements.statements().items():
            named = statement.compile(dialect=sqlite.dialect()).params
            params = {key: value for key, value in values.items() if key in named}
            fetched, read = compiled.reader.rows(name, **params), usual.rows(name, **params)
            assert fetched, f"{name}: no rows to compare"
            assert [list(row) for row in fetched] == [list(row) for row in read], name
            for got, wanted in zip(fetched, read, strict=True):
                assert [type(value) for value in got] == [type(value) for value in wanted], name
    # Both select JSON as its text and decode it: as the models' own columns read it.
    with transaction() as session:
        stored = session.query(Task).filter_by(instance_id=instance).order_by(Task.id)
        from_models = [task_view(row) for row in stored]
    assert from_models == queries.tasks_listing(instance).rows
