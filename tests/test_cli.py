"""Bad input at the command line: one line naming what was wrong, a non-zero exit, no
traceback, nothing changed. Run through the command's own ``main`` in this process; the
last tests run the installed ``pipeline`` program itself."""

from __future__ import annotations

import json
import re
import shlex
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from pipeline.interfaces.client import ApiError, Client
from pipeline.interfaces.statuses import status as http_status
from pipeline.operations import facade, problems, queries
from tests.support import (
    PIPELINE,
    InProcessWorker,
    assert_one_line_error,
    clean_env,
    free_port,
    point_here,
    run_cli,
    silent_host,
    wait_for,
)


@pytest.fixture
def cli(home: Path, capsys: pytest.CaptureFixture[str]) -> Any:
    """``pipeline ARGS`` on this test's initialised home (no process started)."""
    return lambda *args: run_cli(capsys, *args)


def unchanged() -> tuple[Any, ...]:
    return queries.show_parameter_set("algorithm"), queries.list_instances()


@pytest.mark.parametrize(
    ("args", "fragments"),
    [
        (["submit", "nosuch"], ["unknown pipeline 'nosuch' (known: sample)"]),
        (
            ["submit", "sample", "--start-node", "nosuch"],
            ["pipeline 'sample' has no node 'nosuch'"],
        ),
        (["submit", "sample", "--end-node", "nosuch"], ["pipeline 'sample' has no node 'nosuch'"]),
        (
            ["submit", "sample", "--start-node", "averaging", "--end-node", "permuter"],
            ["node 'permuter' is not downstream of node 'averaging'"],
        ),
        (["submit", "sample", "--priority", "12"], ["priority 12 is out of range"]),
        (["submit", "sample", "--priority", str(2**63)], [f"priority {2**63} is out of range"]),
        (
            ["params", "set", "algorithm", f"execution_pause_seconds={2**63}"],
            [f"algorithm.execution_pause_seconds: {2**63} is out of range"],
        ),
        (
            ["params", "set", "algorithm", "dummy_array_parameter=[1, 1e400]"],
            ["algorithm.dummy_array_parameter: inf is not an int"],
        ),
        (
            ["params", "set", "algorithm", "nosuch=1"],
            ["parameter set 'algorithm' has no parameter 'nosuch'"],
        ),
        (
            ["params", "set", "algorithm", "throw_exception_subtask_0=maybe"],
            ["algorithm.throw_exception_subtask_0: 'maybe' is not a bool"],
        ),
        (
            ["params", "set", "algorithm", "execution_pause_seconds=soon"],
            ["algorithm.execution_pause_seconds: 'soon' is not an int"],
        ),
        (["params", "set", "algorithm", "justtext"], ["'justtext' is not key=value"]),
        (["params", "set", "nosuch", "a=1"], ["unknown parameter set 'nosuch'"]),
        (
            ["params", "show", "algorithm", "--version", "7"],
            ["unknown parameter set 'algorithm version 7'"],
        ),
        (["definitions", "show", "nosuch"], ["unknown pipeline 'nosuch'"]),
        (["tasks", "999"], ["unknown instance 999"]),
        (["task", "999"], ["unknown task 999"]),
        (["subtasks", "999"], ["unknown task 999"]),
        (["logs", "999"], ["unknown task 999"]),
        (["wait", "999"], ["unknown instance 999"]),
        (["restart", "999", "--mode", "sideways"], ["unknown restart mode 'sideways'"]),
        (["restart", "--instance", "1"], ["--instance needs --mode"]),
        (["restart", "4", "--instance", "1", "--mode", "resubmit"], ["not both"]),
        (["restart", "--mode", "resubmit"], ["name the tasks to restart, or --instance ID"]),
        (["restart", "--instance", "999", "--mode", "resubmit"], ["unknown instance 999"]),
        (["halt"], ["name the tasks to halt, or --instance ID"]),
        (["halt", "--instance", "999"], ["unknown instance 999"]),
        (["alerts", "ack", "999"], ["unknown alert 999"]),
        (
            ["definitions", "import", "/nonexistent/pipeline.yaml"],
            ["/nonexistent/pipeline.yaml: cannot read"],
        ),
    ],
)
def test_bad_input_names_the_problem_and_changes_nothing(cli, args, fragments) -> None:
    before = unchanged()
    assert_one_line_error(cli(*args), *fragments)
    assert unchanged() == before


#: An id no database integer holds: every command taking an id says so in one line.
HUGE = 2**63


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["tasks", HUGE], "instance"),
        (["wait", HUGE], "instance"),
        (["task", HUGE], "task"),
        (["subtasks", HUGE], "task"),
        (["logs", HUGE], "task"),
        (["logs", "1", "--subtask", HUGE], "subtask"),
        (["restart", HUGE, "--mode", "resubmit"], "task"),
        (["restart", f"{HUGE}:resubmit"], "task"),
        (["restart", "--instance", HUGE, "--mode", "resubmit"], "instance"),
        (["halt", HUGE], "task"),
        (["halt", "--instance", HUGE], "instance"),
        (["alerts", "ack", HUGE], "alert"),
    ],
)
def test_an_id_out_of_range_is_one_line(cli, args: list[Any], what: str) -> None:
    before = unchanged()
    first, kind = (0, "index") if what == "subtask" else (1, "id")
    expected = f"{what} {kind} {HUGE} is out of range ({first} to {2**31 - 1})"
    assert_one_line_error(cli(*args), expected)
    assert unchanged() == before


def test_no_error_quotes_more_than_a_short_prefix_of_its_input(cli) -> None:
    long = "x" * 100_000
    for args in (
        ["submit", long],
        ["params", "set", "algorithm", f"{long}=1"],
        ["params", "set", "algorithm", f"execution_pause_seconds={long}"],
        ["restart", f"1:{long}"],
        ["definitions", "show", long],
        [long],
        ["tasks", long],
        ["wait", "1", long],
        ["cluster", long],
    ):
        result = cli(*args)
        assert_one_line_error(result)
        # What it quotes of the input, not the commands it lists as choices.
        quoted = result.stderr.split("(choose from")[0]
        assert "x" * 100 not in quoted and len(quoted) < 400, result.stderr[:400]


def test_too_many_tasks_in_one_request(home: Path) -> None:
    """However they come (CLI, API, Flower), at most ``MAX_TASKS_PER_REQUEST`` tasks."""
    many = list(range(1, 250_002))
    for call in (lambda: facade.restart(many, "resubmit"), lambda: facade.halt(many)):
        with pytest.raises(problems.PROBLEMS) as error:
            call()
        found = problems.problem(error.value)
        assert found is not None and http_status(found) == 422
        assert found.message == "250001 tasks in one request: at most 10000"


@pytest.mark.parametrize(
    ("flags", "fragment"),
    [
        (["--set", "subtask_timeout=inf"], "subtask_timeout: Input should be a finite number"),
        (["--set", "subtask_timeout=NaN"], "subtask_timeout: Input should be a finite number"),
        (["--timeout", "1e400"], "subtask_timeout: Input should be a finite number"),
        (
            ["--set", f"max_failed_subtasks={2**63}"],
            "max_failed_subtasks: Input should be less than or equal to 2147483647",
        ),
        (["--max-auto-resubmits", "-1"], "max_auto_resubmits: Input should be greater than"),
        (["--set", "batch_size=0"], "batch_size: Input should be greater than or equal to 1"),
        (["--set", "priority=true"], "priority: Input should be a valid integer"),
    ],
)
def test_restart_refuses_a_setting_out_of_range_in_one_line(
    failed: Path,
    worker: InProcessWorker,
    capsys: pytest.CaptureFixture[str],
    flags: list[str],
    fragment: str,
) -> None:
    """However the value is typed, a restart changes no setting to an infinite, unreadable
    or out-of-range value: one line naming the setting, nothing restarted."""
    before = queries.list_tasks(1)
    result = run_cli(capsys, "restart", "1", "--mode", "resubmit", *flags)
    assert_one_line_error(result, f"execution setting {fragment}")
    assert queries.list_tasks(1) == before
    assert worker.published == []


def test_a_refused_restart_is_a_row_of_the_table_and_exit_1(cli) -> None:
    result = cli("restart", "999", "--mode", "resubmit", "--json")
    assert result.returncode == 1
    assert json.loads(result.stdout) == [
        {
            "task_id": 999,
            "mode": "resubmit",
            "ok": False,
            "message": "unknown task 999",
            "start_from": "",
            "subtasks": [],
            "downstream": [],
        }
    ]


def test_restart_help_lists_every_mode(cli, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")  # wide enough that no mode is cut short
    result = cli("restart", "--help")
    assert result.returncode == 0
    text = re.sub(r"[\s│]+", "", result.stdout)  # however the terminal's width wrapped it
    for mode in facade.restart_modes():
        assert mode.name in text


def _settings(monkeypatch: pytest.MonkeyPatch, **values: str) -> None:
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    point_here()


def test_an_unreachable_broker_is_named_without_its_password(cli, monkeypatch) -> None:
    port = free_port()
    _settings(monkeypatch, PIPELINE_BROKER_URL=f"redis://:secret@127.0.0.1:{port}/0")
    result = cli("submit", "sample")
    assert_one_line_error(result, f"broker unreachable at redis://:***@127.0.0.1:{port}/0")
    assert "secret" not in result.stderr
    assert queries.list_instances() == []
    assert not queries.show_parameter_set("algorithm")["locked"]


#: The broker deadline of the silent-broker test (seconds), and how long its submit may take:
#: a connection, a ping and one retry, each within the deadline, on a busy machine.
BROKER_TIMEOUT = 1.0
SUBMIT_BOUND = 6 * BROKER_TIMEOUT


def test_a_silent_broker_fails_submit_within_its_deadline_and_locks_nothing(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A broker that accepts the connection and never answers: ``submit`` gives up within
    its deadline with one line, and never holds the database meanwhile (the broker is
    asked before the transaction, the messages published after it)."""
    with silent_host() as (url, accepted):
        _settings(monkeypatch, PIPELINE_BROKER_URL=url, PIPELINE_BROKER_TIMEOUT=str(BROKER_TIMEOUT))
        outcome: list[BaseException] = []

        def submit() -> None:
            try:
                facade.submit("sample")
            except BaseException as exc:  # noqa: BLE001 - asserted below
                outcome.append(exc)

        started = time.monotonic()
        thread = threading.Thread(target=submit, daemon=True)
        thread.start()
        wait_for(accepted.is_set, timeout=SUBMIT_BOUND, what="submit to reach the broker")
        # Another writer gets the database at once while submit waits on the broker.
        with sqlite3.connect(home / "pipeline.db", timeout=0.5) as other:
            other.execute("BEGIN IMMEDIATE")
            other.rollback()
        thread.join(timeout=SUBMIT_BOUND)
        assert not thread.is_alive(), f"submit still waiting after {SUBMIT_BOUND} s"
        assert time.monotonic() - started < SUBMIT_BOUND
        [error] = outcome
        found = problems.problem(error)
        assert found is not None and http_status(found) == 503
        assert found.message.startswith(f"broker unreachable at {url}: ")

        started = time.monotonic()
        assert_one_line_error(run_cli(capsys, "submit", "sample"), "broker unreachable at")
        assert time.monotonic() - started < SUBMIT_BOUND
    assert queries.list_instances() == []
    assert not queries.show_parameter_set("algorithm")["locked"]


def test_the_private_broker_not_started(cli) -> None:
    assert_one_line_error(cli("submit", "sample"), "broker unreachable at redis://")


def test_an_unreachable_database_is_named_without_its_password(cli, monkeypatch) -> None:
    port = free_port()
    url = f"postgresql+psycopg://pipeline:secret@127.0.0.1:{port}/db"
    _settings(monkeypatch, PIPELINE_DATABASE_URL=url)
    result = cli("instances")
    assert_one_line_error(
        result, f"database unreachable at postgresql+psycopg://pipeline:***@127.0.0.1:{port}/db"
    )
    assert "secret" not in result.stderr


def test_a_missing_or_empty_datastore(
    cli, home: Path, worker: InProcessWorker, monkeypatch
) -> None:
    _settings(monkeypatch, PIPELINE_DATASTORE_ROOT="/nonexistent/datastore")
    assert_one_line_error(
        cli("submit", "sample"), "datastore /nonexistent/datastore does not exist"
    )
    empty = home / "empty"
    empty.mkdir()
    _settings(monkeypatch, PIPELINE_DATASTORE_ROOT=str(empty))
    result = cli("submit", "sample")
    assert_one_line_error(result, "node 'permuter' finds no raw_image files ({dataset}/L0/*.png)")
    assert queries.list_instances() == []


def test_an_uninitialised_home(cli, tmp_path: Path, monkeypatch) -> None:
    _settings(monkeypatch, PIPELINE_HOME=str(tmp_path / "fresh"))
    assert_one_line_error(cli("instances"), "run `pipeline cluster init`")
    assert_one_line_error(cli("cluster", "start"), f"no cluster at {tmp_path / 'fresh'}")
    # Not "datastore ... does not exist (set PIPELINE_DATASTORE_ROOT)": there is no cluster.
    assert_one_line_error(cli("submit", "sample"), f"no cluster at {tmp_path / 'fresh'}")
    assert not (tmp_path / "fresh").exists()
    assert_one_line_error(cli("api"), "no api_token for", "cluster init")


def test_a_bad_definition_file_is_named_with_its_key(cli, tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\ndata_file_types: {}\nnodes:\n  - name: a\n    algorithm: x\n")
    before = queries.list_definitions()
    assert_one_line_error(cli("definitions", "import", bad), f"{bad}: nodes.0.algorithm: ")
    assert queries.list_definitions() == before


def test_a_bad_setting_and_a_bad_settings_file(cli, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PIPELINE_WORKERS", "many")
    assert_one_line_error(cli("instances"), "setting workers: ")
    monkeypatch.delenv("PIPELINE_WORKERS")
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "settings.toml").write_text("redis_port = = 1\n")
    monkeypatch.setenv("PIPELINE_HOME", str(fresh))
    assert_one_line_error(cli("instances"), "settings file is not valid TOML")


def test_status_and_stop_of_an_uninitialised_home_touch_nothing(
    cli, tmp_path: Path, monkeypatch
) -> None:
    _settings(monkeypatch, PIPELINE_HOME=str(tmp_path / "nothing-here"))
    for command in (["cluster", "status"], ["cluster", "status", "--json"]):
        # No URLs of a cluster that is not there.
        assert_one_line_error(cli(*command), "no cluster at", "pipeline cluster init")
    assert "nothing was running" in cli("cluster", "stop").stdout
    assert not (tmp_path / "nothing-here" / "pipeline.db").exists()


def test_a_cluster_of_fewer_services(cli, monkeypatch) -> None:
    """``PIPELINE_CLUSTER_SERVICES`` names the services ``cluster start`` runs beside Redis,
    the workers and beat; a service it does not know is refused by name."""
    _settings(monkeypatch, PIPELINE_CLUSTER_SERVICES="api")
    status = json.loads(cli("cluster", "status", "--json").stdout)
    assert [row["name"] for row in status] == ["redis", "supervisor", "worker1", "beat", "api"]
    monkeypatch.setenv("PIPELINE_CLUSTER_SERVICES", "api,grafana")
    assert_one_line_error(
        cli("cluster", "status"),
        "setting cluster_services: Value error, unknown service 'grafana'",
        "(of operations, api, flower)",
    )


# -- the installed program -------------------------------------------------------------------


@pytest.mark.e2e
def test_the_installed_program_reports_in_one_line(tmp_path: Path) -> None:
    """``pipeline`` and ``python -m pipeline`` reach the same ``main``: one line, exit 1,
    for an operator's error and for a bad settings file alike."""
    env = clean_env(PIPELINE_HOME=str(tmp_path))
    result = subprocess.run(
        [PIPELINE, "tasks", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert_one_line_error(result, f"no cluster at {tmp_path}", "run `pipeline cluster init`")
    (tmp_path / "settings.toml").write_text("redis_port = = 1\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "instances"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert_one_line_error(result, "settings file is not valid TOML")


#: The deadlines of the silent-database and silent-API tests (seconds), and how long a
#: command may take: a connection attempt and its retry, each within the deadline.
SILENT_DEADLINE = 1.0
SILENT_BOUND = 6 * SILENT_DEADLINE


def test_a_silent_database_fails_a_command_within_its_deadline(
    home: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A PostgreSQL host that accepts the connection and never answers: a command gives
    up within ``database_connect_timeout`` with one line naming the database."""
    with silent_host() as (broker_url, accepted):
        url = broker_url.replace("redis://", "postgresql+psycopg://postgres@").rsplit("/", 1)[0]
        _settings(
            monkeypatch,
            PIPELINE_DATABASE_URL=f"{url}/pipeline",
            PIPELINE_DATABASE_CONNECT_TIMEOUT=str(SILENT_DEADLINE),
        )
        started = time.monotonic()
        result = run_cli(capsys, "instances")
        assert time.monotonic() - started < SILENT_BOUND
        assert accepted.is_set()
        assert_one_line_error(result, "database unreachable at")


def test_a_silent_api_fails_a_client_call_within_its_deadline() -> None:
    """An HTTP API that accepts the connection and never answers: the Python client gives
    up within its timeout with one line."""
    with silent_host() as (broker_url, accepted):
        url = broker_url.replace("redis://", "http://").rsplit("/", 1)[0]
        started = time.monotonic()
        with (
            Client(url, "token", timeout=SILENT_DEADLINE) as client,
            pytest.raises(ApiError) as raised,
        ):
            client.instances()
        assert time.monotonic() - started < SILENT_BOUND
        assert accepted.is_set()
    assert raised.value.message.startswith(f"HTTP API unreachable at {url}: ")
    assert "\n" not in raised.value.message


# -- exit statuses ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "fragment", "command"),
    [
        (["wait", "1", "--timout", "5"], "unrecognized arguments: --timout 5", "pipeline wait"),
        (
            ["cluster", "start", "--worker", "2"],
            "unrecognized arguments: --worker 2",
            "pipeline cluster start",
        ),
        (["nosuchcommand"], "argument COMMAND: invalid choice: 'nosuchcommand'", "pipeline"),
        (["params", "nosuch"], "argument COMMAND: invalid choice: 'nosuch'", "pipeline params"),
        (["wait", "soon"], "argument INSTANCE: 'soon' is not a whole number", "pipeline wait"),
        (["wait"], "the following arguments are required: INSTANCE", "pipeline wait"),
        (["alerts", "ack"], "the following arguments are required: ID", "pipeline alerts ack"),
        (
            ["models", "import", "calibration-3.json"],
            "required: --type",
            "pipeline models import",
        ),
        (["wait", "1", "--timeout"], "argument --timeout: expected one argument", "pipeline wait"),
        (["wait", "1", "--timeout", "soon"], "'soon' is not a number of seconds", "pipeline wait"),
        (
            ["api", "--port", "70000"],
            "argument --port: 70000 is out of range (1 to 65535)",
            "pipeline api",
        ),
        (["restart", "--instance", "1"], "--instance needs --mode", "pipeline restart"),
        (["restart", "4", "--instance", "1", "--mode", "resubmit"], "not both", "pipeline restart"),
        (["halt"], "name the tasks to halt, or --instance ID", "pipeline halt"),
        (["halt", "seven"], "argument TASK: 'seven' is not a whole number", "pipeline halt"),
    ],
)
def test_a_usage_error_exits_2_in_one_line_naming_the_help(cli, args, fragment, command) -> None:
    """A bad option, a missing argument, an unknown command, a bad value, arguments that do
    not go together: one line naming the problem and the help of the command it is about."""
    result = cli(*args)
    assert result.returncode == 2, result
    assert_one_line_error(result, fragment, f"(see '{command} --help')")
    assert result.stdout == ""


def test_a_command_line_is_checked_without_running_anything() -> None:
    """``parse`` says what is wrong with a command line, or gives the command it names, and
    runs nothing: the docs' command lines are checked with it."""
    from pipeline.interfaces.cli import UsageError, parse

    with pytest.raises(UsageError) as wrong:
        parse(["tasks", "1", "--limit", "0"])
    assert wrong.value.line == (
        "argument --limit: 0 is out of range (at least 1) (see 'pipeline tasks --help')"
    )
    args = parse(["restart", "4:resubmit", "7", "--mode", "resume-current-step", "--set", "a=1",
                  "--set", "b=2", "--dry-run"])  # fmt: skip
    assert (args.parser.prog, args.tasks, args.mode, args.set, args.dry_run) == (
        "pipeline restart",
        ["4:resubmit", "7"],
        "resume-current-step",
        ["a=1", "b=2"],
        True,
    )


def test_parsing_imports_none_of_the_heavy_libraries() -> None:
    """Building the parser and parsing every example load nothing but the standard
    library: each command imports what it needs as it runs (a read through the HTTP API
    never loads SQLAlchemy, the settings, or Rich for ``--json``)."""
    heavy = ["sqlalchemy", "pydantic", "pipeline.settings", "pipeline.operations", "celery",
             "rich", "httpx", "orjson"]  # fmt: skip
    lines = [words for _, words in example_command_lines()]
    script = f"""
import sys
from pipeline.interfaces import cli
for words in {lines!r}:
    cli.parse(words)
print(sorted(name for name in {heavy!r} if name in sys.modules))
"""
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


def test_exit_statuses_tell_success_refusal_usage_and_timeout_apart(
    cli, worker: InProcessWorker
) -> None:
    """0 success, 1 refused or errors in the run, 2 a usage error, 3 a timeout: a script
    can tell a wait that timed out from a mistyped option."""
    assert cli("instances").returncode == 0
    assert cli("wait", "999").returncode == 1
    assert cli("wait", "1", "--timout", "1").returncode == 2
    instance = json.loads(cli("submit", "sample", "--json").stdout)["id"]
    timed_out = cli("wait", instance, "--timeout", "0.1")
    assert timed_out.returncode == 3, timed_out
    assert f"instance {instance} still" in timed_out.stdout
    worker.drain()
    assert cli("wait", instance, "--timeout", "5").returncode == 0


def test_help_exits_0_and_no_arguments_shows_the_help(cli) -> None:
    """``--help`` is asked for: exit 0. The program or a group of commands named alone:
    its help, and exit 2 (nothing was run)."""
    helped = cli("--help")
    assert helped.returncode == 0 and helped.stdout.startswith("usage: pipeline ")
    bare = cli()
    assert bare.returncode == 2 and bare.stdout == helped.stdout
    group = cli("cluster")
    assert group.returncode == 2
    assert group.stdout.startswith("usage: pipeline cluster ") and "credentials" in group.stdout


@pytest.mark.e2e
def test_a_table_piped_keeps_every_column_whole(failed: Path) -> None:
    """Piped (no terminal, COLUMNS unset) a table is as wide as its content: a script or
    grep sees each state and error whole, on one line."""
    env = clean_env(PIPELINE_HOME=str(failed))
    env.pop("COLUMNS")
    result = subprocess.run(
        [PIPELINE, "subtasks", "1"], env=env, capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    [failed_row] = [line for line in result.stdout.splitlines() if "FAILED" in line]
    assert "RuntimeError: subtask 0 failed on purpose (throw_exception_subtask_0 = true)" in (
        failed_row
    )
    assert "…" not in result.stdout


def test_every_command_has_an_example_in_its_help(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.interfaces.cli import COMMANDS, EXAMPLES

    assert sorted(["", *COMMANDS]) == sorted(EXAMPLES)
    for path, example in EXAMPLES.items():
        shown = run_cli(capsys, *path.split(), "--help")
        assert shown.returncode == 0, (path, shown.stderr)
        assert "Example:" in shown.stdout and example.split()[1] in shown.stdout, path


def example_command_lines() -> list[tuple[str, list[str]]]:
    """Each ``pipeline`` command line of the examples, by the command it is the example of
    (an example may chain several with ``;`` or ``&&``, and end with a note in brackets)."""
    from pipeline.interfaces.cli import EXAMPLES

    found = []
    for path, example in EXAMPLES.items():
        for line in re.split(r";|&&", example.split("  (")[0]):
            words = shlex.split(line)
            if words[0] == "pipeline":
                found.append((path, words[1:]))
    return found


@pytest.mark.parametrize(("path", "words"), example_command_lines())
def test_every_example_is_a_command_line_the_parser_accepts(path: str, words: list[str]) -> None:
    from pipeline.interfaces.cli import parse

    args = parse(words)  # a UsageError if the example went stale
    assert args.parser.prog.startswith(f"pipeline {path}".strip())


@pytest.mark.parametrize(
    ("argv", "field", "value"),
    [
        (["restart", "7", "--mode", "resubmit", "8"], "tasks", ["7", "8"]),
        (["halt", "3", "--json", "4"], "tasks", [3, 4]),
        (["params", "set", "algorithm", "a=1", "--json", "b=2"], "assignments", ["a=1", "b=2"]),
    ],
)
def test_positionals_may_come_after_an_option(argv: list[str], field: str, value: list) -> None:
    """As operators type them: ``pipeline halt 3 --json 4`` halts tasks 3 and 4."""
    from pipeline.interfaces.cli import parse

    assert getattr(parse(argv), field) == value


# -- pipeline wait, as a new user meets it ------------------------------------------------------


def test_wait_on_an_unknown_instance_draws_no_bar(cli) -> None:
    result = cli("wait", "999")
    assert_one_line_error(result, "unknown instance 999")
    assert result.stdout == "", "no 0/? bar before the error"


def test_wait_shows_the_failed_subtasks_in_its_bar(failed: Path, capsys) -> None:
    result = run_cli(capsys, "wait", "1")
    assert result.returncode == 1
    assert "8/8 subtasks (2 failed)" in result.stdout, result.stdout
    assert "instance 1 ERRORS_STALLED" in result.stdout


def test_ctrl_c_on_wait_exits_130_and_says_the_instance_keeps_running(
    failed: Path, capsys, monkeypatch: pytest.MonkeyPatch
) -> None:
    import time

    from sqlalchemy import update

    from pipeline.database import transaction
    from pipeline.domain.models import PipelineInstance

    with transaction() as session:
        session.execute(update(PipelineInstance).values(state="PROCESSING"))

    def interrupted(_: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(time, "sleep", interrupted)
    result = run_cli(capsys, "wait", "1")
    assert result.returncode == 130
    assert "instance 1 keeps running (PROCESSING)" in result.stdout
    assert "pipeline wait 1 follows it again" in result.stdout
    assert queries.get_instance(1)["state"] == "PROCESSING", "nothing else stopped"


def test_a_quoted_value_is_the_text_inside_its_quotes() -> None:
    """``params set S x='""'`` stores an empty text, not two quote characters."""
    from pipeline.domain.parameters import parse_assignments

    assert parse_assignments(['x=""', "y='a b'", 'z="', "w=plain", "v='it\"s'"]) == {
        "x": "",
        "y": "a b",
        "z": '"',
        "w": "plain",
        "v": 'it"s',
    }


def test_no_state_is_cut_at_80_columns(failed: Path, capsys, monkeypatch) -> None:
    """An 80-column terminal: the other columns give way, never the state (not
    ``ERRORS_STALL…``)."""
    from sqlalchemy import update

    from pipeline.database import transaction
    from pipeline.domain.models import PipelineInstance
    from pipeline.interfaces import reads

    with transaction() as session:
        session.execute(update(PipelineInstance).values(message="a long message " * 8))
    monkeypatch.setattr(reads, "WIDTH", 80)
    reads.console.cache_clear()
    try:
        shown = run_cli(capsys, "instances").stdout
        tasks = run_cli(capsys, "tasks", "1").stdout
    finally:
        reads.console.cache_clear()
    assert max(len(line) for line in shown.splitlines()) <= 80
    assert "ERRORS_STALLED" in shown, shown
    assert "ERROR - ALGORITHM_COMPLETE" in tasks, tasks


def test_units_chosen_at_submit_are_kept_with_the_instance_and_limit_every_node(
    cli, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    planned = cli("submit", "sample", "--units", "set-[0-9]", "--exclude", "set-2", "--dry-run")
    assert "permuter: 1 task (set-1); subtasks 4" in planned.stdout, planned.stdout
    assert "averaging: 1 task (set-1)" in planned.stdout
    before = unchanged()
    assert_one_line_error(
        cli("submit", "sample", "--units", "set-["), "--units 'set-[': not a regular expression"
    )
    assert_one_line_error(
        cli("submit", "sample", "--units", "set-9"),
        "node 'permuter' has none of its units (set-1, set-2) matching 'set-9'",
    )
    assert unchanged() == before, "a refused choice submits nothing"

    result = cli("submit", "sample", "--units", "set-[0-9]", "--exclude", "set-2", "--json")
    assert result.returncode == 0, result.stderr
    instance = json.loads(result.stdout)["id"]
    worker.drain()

    assert queries.get_instance(instance)["state"] == "COMPLETED"
    ran = {(t["node"], t["unit_of_work"]) for t in queries.list_tasks(instance)}
    assert ran == {("permuter", "set-1"), ("flip", "set-1"), ("averaging", "set-1")}
    [listed] = json.loads(cli("instances", "--json").stdout)
    assert (listed["units_regexp"], listed["units_exclude"]) == ("set-[0-9]", "set-2")
    from pipeline.interfaces import reads

    monkeypatch.setattr(reads, "WIDTH", 200)
    reads.console.cache_clear()
    try:
        assert "all (units set-[0-9]; not set-2)" in cli("instances").stdout
    finally:
        reads.console.cache_clear()


def test_submit_dry_run_says_what_would_run_and_submits_nothing(cli) -> None:
    before = unchanged()
    result = cli("submit", "sample", "--end-node", "flip", "--dry-run")
    assert result.returncode == 0, result.stderr
    assert "would run permuter, flip, with algorithm version 1; nothing submitted" in result.stdout
    assert "permuter: 2 tasks (set-1, set-2); subtasks 4, 4 (8 in all)" in result.stdout
    assert "flip: 2 tasks (set-1, set-2); subtasks counted once its parents store" in result.stdout
    assert "not run: averaging (not between the start and end nodes)" in result.stdout
    planned = json.loads(cli("submit", "sample", "--dry-run", "--json").stdout)
    assert planned["nodes"] == ["permuter", "flip", "averaging"] and planned["left_out"] == []
    assert planned["units"] == {"permuter": ["set-1", "set-2"]}
    assert planned["tasks"] == {
        "permuter": [{"unit_of_work": u, "subtasks": 4} for u in ("set-1", "set-2")],
        "flip": [{"unit_of_work": u, "subtasks": None} for u in ("set-1", "set-2")],
        "averaging": [{"unit_of_work": u, "subtasks": None} for u in ("set-1", "set-2")],
    }, "every node's tasks; a child's subtasks are its parents' outputs, not stored yet"
    assert unchanged() == before, "nothing submitted, no parameter set locked"
    assert not queries.show_parameter_set("algorithm")["locked"]
    assert_one_line_error(cli("submit", "sample", "--start-node", "nosuch", "--dry-run"), "nosuch")
