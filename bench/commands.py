"""Figure f: the operators' read commands as an operator types them, each a new ``pipeline``
process, on PostgreSQL at scale; target 0.35 s each, process start included.

The home's database holds ``INSTANCES`` small instances and a newest one of
``Sizes.status_tasks`` tasks (10,000), whose first task has half as many subtasks (5,000:
mostly complete, some failed with an error, a few running) and a history of transitions,
all inserted by SQL. Each command runs ``Sizes.status_runs`` times (median): first with no
HTTP API (the CLI reads in process), then with the home's ``pipeline api`` running (the
CLI reads through it, ``pipeline.interfaces.local_api``; the API's access log must show
each read, else the figure fails). Beside them, for reference, the import floors: a
process importing only the database libraries (figure d's), and one importing only the
program's entry module (``pipeline.interfaces.cli``, which imports ``reads``).

``python -m bench.commands [--quick | --smoke] [--before TREE]`` runs this group alone;
``--before`` times the same commands run by the code of another source tree (a checkout
of main, say), on the same data, in process, for the "before" column of the doc.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench import harness
from bench.figures import IMPORT_FLOOR, QUICK_FACTOR, SMOKE_FACTOR, Figure, Sizes, table

#: The issue's target for each command, process start included (seconds).
TARGET_SECONDS = 0.35
#: Small instances made before the big one: ``instances`` has more than a screenful.
INSTANCES = 200
#: Subtasks of the big instance's first task, per task of the instance.
SUBTASKS_PER_TASK = 0.5
#: Of that task's subtasks: every Nth failed, and how many run (as on two workers of two).
FAILED_EVERY, RUNNING = 10, 4
#: Transitions in that task's history.
HISTORY = 12
#: Seconds the API's access log may lag behind its answers.
READ_LOG_SECONDS = 10.0
#: What a plain read command imports before it asks the API: the program's entry module.
ENTRY_FLOOR = "import pipeline.interfaces.cli"

ROWS_SQL = (
    """
    INSERT INTO pipeline_instances (definition_id, pipeline, definition_version, state,
        definition, parameters, message, created_at, updated_at)
    SELECT id, name, version, CASE WHEN n = :instances THEN 'ERRORS_RUNNING' ELSE 'COMPLETED'
        END, spec, '{}', '', now() - (:instances - n) * interval '1 minute', now()
    FROM pipeline_definitions CROSS JOIN generate_series(1, :instances) AS n
    WHERE name = 'bench-throughput'
    """,
    """
    WITH newest AS (SELECT max(id) AS id FROM pipeline_instances),
        node AS (INSERT INTO instance_nodes (instance_id, node, state)
            SELECT id, 'noop', 'RUNNING' FROM newest)
    INSERT INTO tasks (instance_id, node, unit_of_work, execution, task_dir, worker_host,
        attempt, auto_resubmits, halted, p_state, error, error_message,
        total_subtasks, completed_subtasks, failed_subtasks, created_at, updated_at)
    SELECT newest.id, 'noop', 'unit-' || n, CAST(:execution AS json), '/tasks/unit-' || n,
        'worker1@bench', 1, 0, false,
        CASE WHEN n % 7 = 0 THEN 'ALGORITHM_COMPLETE' ELSE 'COMPLETE' END, n % 7 = 0,
        CASE WHEN n % 7 = 0 THEN '1 subtask failed' ELSE '' END,
        :subtasks, :subtasks - :subtasks / :failed_every, :subtasks / :failed_every, now(), now()
    FROM newest CROSS JOIN generate_series(1, :tasks) AS n
    """,
    """
    INSERT INTO subtasks (task_id, "index", state, attempts, dispatch, error, inputs,
        outputs, worker_host, worker_pid, message_id, started_at, finished_at, heartbeat_at)
    SELECT (SELECT min(id) FROM tasks), n,
        CASE WHEN n < :running THEN 'RUNNING' WHEN n % :failed_every = 1 THEN 'FAILED'
            ELSE 'COMPLETE' END, 1, 1,
        CASE WHEN n >= :running AND n % :failed_every = 1
            THEN 'RuntimeError: subtask ' || n || ' failed' ELSE '' END,
        json_build_array(lpad(n::text, 7, '0') || '.in'), 1, 'worker1@bench', 4242, '',
        now(), CASE WHEN n < :running THEN NULL ELSE now() END, now()
    FROM generate_series(0, :subtasks - 1) AS n
    """,
    """
    INSERT INTO task_events (task_id, at, p_state, error, attempt, host, message)
    SELECT (SELECT min(id) FROM tasks), now(), (ARRAY['INITIALIZING', 'MARSHALING',
        'ALGORITHM_SUBMITTING', 'ALGORITHM_QUEUED', 'ALGORITHM_EXECUTING'])[1 + n % 5],
        false, 1 + n / 5, 'worker1@bench', 'transition ' || n
    FROM generate_series(1, :history) AS n
    """,
)


def _execution() -> str:
    """A task's execution settings as the pipeline stores them (every field)."""
    from pipeline.domain.execution import ExecutionSettings

    return json.dumps(ExecutionSettings().model_dump())


def _make_rows(tasks: int) -> tuple[int, int]:
    """The instances, tasks, subtasks and history; the big instance's id and its first task's."""
    from pipeline.database import transaction

    values = {
        "instances": INSTANCES + 1,
        "tasks": tasks,
        "subtasks": max(1, int(tasks * SUBTASKS_PER_TASK)),
        "failed_every": FAILED_EVERY,
        "running": RUNNING,
        "history": HISTORY,
        "execution": _execution(),
    }
    with transaction() as session:
        for sql in ROWS_SQL:
            session.execute(text(sql), values)
        instance = session.scalar(text("SELECT max(id) FROM pipeline_instances"))
        task = session.scalar(text("SELECT min(id) FROM tasks"))
        session.execute(text("ANALYZE"))
    return int(instance), int(task)


def commands(instance: int, task: int) -> list[tuple[str, list[str], str]]:
    """Each command timed: its label, its arguments, and the API path it reads."""
    return [
        ("instances", ["instances"], "/instances"),
        ("tasks INSTANCE", ["tasks", str(instance)], f"/instances/{instance}/tasks"),
        ("subtasks TASK", ["subtasks", str(task)], f"/tasks/{task}/subtasks"),
        ("task TASK", ["task", str(task)], f"/tasks/{task}"),
        (
            "tasks INSTANCE --json",
            ["tasks", str(instance), "--json"],
            f"/instances/{instance}/tasks",
        ),
    ]


def _median_seconds(
    argv: list[str], env: dict[str, str], runs: int, cwd: Path | None = None
) -> float:
    """The median wall time of ``runs`` new processes running ``argv``; each must exit 0."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, env=env, cwd=cwd, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def _figure(name: str, seconds: float, details: dict[str, Any], target: bool = True) -> Figure:
    return Figure(
        name,
        seconds,
        "s",
        TARGET_SECONDS,
        f"{TARGET_SECONDS * 1000:g} ms",
        False,
        1.0 if target else None,
        details,
    )


def _served(log: Path, path: str) -> int:
    """Requests for ``path`` in the API's access log."""
    if not log.exists():
        return 0
    return log.read_text(errors="replace").count(f'"GET /api/v1{path} HTTP')


def command_times(base: Path, sizes: Sizes, before: Path | None = None) -> list[Figure]:
    """Figure f: each read command, in process and through the HTTP API (and, given
    ``before``, run by that source tree's code), beside the import floors."""
    base.mkdir(parents=True)
    runs = sizes.status_runs
    with harness.postgres_server(base) as url:
        home = base / "home"
        cluster = harness.Cluster(home, harness.cluster_env(home, "", url))
        cluster.cli("cluster", "init", "--no-sample-data")
        cluster.activate()
        instance, task = _make_rows(sizes.status_tasks)
        details = {
            "tasks": sizes.status_tasks,
            "subtasks": max(1, int(sizes.status_tasks * SUBTASKS_PER_TASK)),
            "instances": INSTANCES + 1,
            "includes": "process start",
        }
        found = []
        listed = commands(instance, task)
        if before is not None:
            # `python -m pipeline` in the tree: its own entry point, first on the path.
            env = {**cluster.env, "PYTHONPATH": f"{before}{os.pathsep}{harness.REPO}"}
            program = [sys.executable, "-m", "pipeline"]
            for label, args, _ in listed:
                seconds = _median_seconds([*program, *args], env, runs, before)
                found.append(
                    _figure(f"f. before: {label}", seconds, {**details, "tree": str(before)})
                )
        # The first read with no API loads SQLAlchemy and keeps the statements compiled for
        # the database (run/reads.json); the reads after it run them with the driver alone.
        (home / "run" / "reads.json").unlink(missing_ok=True)
        label, args, _ = listed[0]
        seconds = _median_seconds([harness.PIPELINE, *args], cluster.env, 1)
        found.append(
            _figure(f"f. first read after a change, {label} (in process)", seconds, details, False)
        )
        kept = {**details, "reads": "the statements compiled by the first read"}
        for label, args, _ in listed:
            seconds = _median_seconds([harness.PIPELINE, *args], cluster.env, runs)
            found.append(_figure(f"f. {label} (in process)", seconds, kept))
        with harness.api_server(cluster):
            log = home / "api.log"
            for label, args, path in listed:
                asked = _served(log, path)
                seconds = _median_seconds([harness.PIPELINE, *args], cluster.env, runs)
                harness.wait_for(
                    lambda path=path, asked=asked: _served(log, path) - asked >= runs,
                    READ_LOG_SECONDS,
                    f"`pipeline {' '.join(args)}` to read through the API (its access log)",
                )
                found.append(_figure(f"f. {label} (HTTP API)", seconds, {**details, "path": path}))
        for label, imports in (
            ("database libraries", IMPORT_FLOOR),
            ("the program's entry module", ENTRY_FLOOR),
        ):
            seconds = _median_seconds([sys.executable, "-c", imports], cluster.env, runs)
            found.append(
                _figure(
                    f"f. floor: a process importing {label}", seconds, {"imports": imports}, False
                )
            )
        from pipeline.database import reset_engines

        reset_engines()  # before the server stops
    return found


def main(argv: list[str] | None = None) -> int:
    """Run figure f alone and print it (``python -m bench`` runs it with the others)."""
    from rich.console import Console

    parser = argparse.ArgumentParser(prog="python -m bench.commands", description=__doc__)
    sizing = parser.add_mutually_exclusive_group()
    sizing.add_argument("--quick", action="store_true", help=f"every size / {QUICK_FACTOR}")
    sizing.add_argument("--smoke", action="store_true", help=f"every size / {SMOKE_FACTOR}")
    parser.add_argument("--before", type=Path, help="a source tree to time the commands of too")
    args = parser.parse_args(argv)
    factor = QUICK_FACTOR if args.quick else SMOKE_FACTOR if args.smoke else 1
    import shutil
    import tempfile

    base = Path(tempfile.mkdtemp(prefix="pipeline-bench-f-"))
    base.chmod(0o755)  # PostgreSQL's server runs as its own user, below this directory
    load = os.getloadavg()
    try:
        found = command_times(base / "commands", Sizes().smaller(factor), args.before)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    console = Console()
    console.print(table(found))
    console.print(f"load average {load} before, {os.getloadavg()} after")
    return 0


if __name__ == "__main__":
    sys.exit(main())
