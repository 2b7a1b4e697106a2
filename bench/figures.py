"""Each benchmark figure: what it runs, what it measures, and the target it is held to.

A figure is a value with its unit, the baseline it is compared with (raw Celery, or a
fixed target), and the ratio between them. Sizes come from ``Sizes``: the full run, or a
tenth of it for ``--quick``.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.table import Table
from sqlalchemy import create_engine, text

from bench import harness

#: Seconds an instance may take before the benchmark gives up on it.
RUN_TIMEOUT = 900.0
#: Seconds between polls of an instance's state (short: latency is measured with it).
STATE_POLL = 0.002
#: Seconds between samples of the workers' memory.
MEMORY_POLL = 0.25
#: Share of a memory run's subtasks after which the workers count as warmed up.
WARM_UP_SHARE = 0.1
#: Peak RSS after warm-up may exceed the warm-up peak by this factor (allocator noise).
MEMORY_GROWTH_ALLOWED = 1.05
#: Recording outputs in the ledger may cost at most a tenth of the subtasks/s.
LEDGER_TARGET = 0.9
#: Runs of each side of the ledger figure, in turns.
LEDGER_ROUNDS = 2
#: Two stores of the same outputs keep their bytes once: half of what a copy per version
#: would take.
STORAGE_TARGET = 0.5
#: Figure a against Dramatiq: the pipeline, with all its bookkeeping, at least 1.5 times as
#: fast on SQLite, and as fast on PostgreSQL with 2 workers x 2 (issue 32).
DRAMATIQ_TARGET, DRAMATIQ_TARGET_POSTGRES = 1.5, 1.0
#: Figure b against the raw chain of 4 (median), at most.
LATENCY_TARGET = 3.0
#: The console's /metrics at scale, seconds (counters kept, not recounted per scrape).
METRICS_TARGET = 0.05
#: Seconds from the restart of 1,000 failed tasks to every one running again (issue 16).
RESTART_RUNNING_TARGET = 3.0
#: Celery workers of the PostgreSQL cluster of figure a (each of ``WORKER_PROCESSES``).
POSTGRES_WORKERS = 2
#: Pipeline instance states in which nothing more happens without an operator.
FINISHED = ("COMPLETED", "ERRORS_STALLED", "TRANSITION_FAILED")


#: How much smaller ``--quick`` runs every figure.
QUICK_FACTOR = 10
#: How much smaller ``--smoke`` runs them: only to see that every figure still runs (the
#: test suite's check), its values meaning nothing.
SMOKE_FACTOR = 100


@dataclass(frozen=True)
class Sizes:
    """How big each figure's run is."""

    throughput_subtasks: int = 10_000
    latency_runs: int = 20
    restart_tasks: int = 1_000
    status_tasks: int = 10_000
    status_subtasks_per_task: int = 100
    marshal_rows: int = 100_000
    memory_subtasks: int = 100_000
    #: Times each status query runs (its median is the figure), and chains the breakdown runs.
    status_runs: int = 5
    breakdown_runs: int = 30
    #: Figure h: ledger versions and consumption rows, the new files a marshal finds among
    #: them, and instances the console lists.
    million_rows: int = 1_000_000
    new_files: int = 10_000
    million_instances: int = 10_000
    #: Figure g: subtasks through Slurm, and runs of its one-subtask task each side.
    slurm_subtasks: int = 200
    slurm_task_runs: int = 3

    def smaller(self, factor: int) -> Sizes:
        return Sizes(**{key: max(1, value // factor) for key, value in asdict(self).items()})


@dataclass(frozen=True)
class Figure:
    """One measured value beside its baseline; ``higher_is_better`` orients the ratio."""

    name: str
    value: float
    unit: str
    baseline: float
    baseline_label: str
    higher_is_better: bool
    #: The ratio to reach (at least, or at most); None for a figure reported for information.
    target_ratio: float | None
    details: dict[str, Any]

    @property
    def ratio(self) -> float:
        return self.value / self.baseline if self.baseline else float("inf")

    @property
    def met(self) -> bool | None:
        if self.target_ratio is None:
            return None
        if self.higher_is_better:
            return self.ratio >= self.target_ratio
        return self.ratio <= self.target_ratio

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "met": self.met}


# -- helpers ---------------------------------------------------------------------------------


def write_inputs(directory: Path, count: int) -> None:
    """``count`` empty input files: the algorithm ignores them, marshaling links them.
    (``os.open``, not ``Path.touch``, which first tries to set the times of a file that
    is not there: three times as slow, minutes for ``make bench-large``'s million.)"""
    directory.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        os.close(os.open(directory / f"{index:07d}.in", os.O_CREAT | os.O_WRONLY, 0o644))


class StateReader:
    """Reads instance progress on a connection of its own, outside the pipeline's write
    transactions (SQLite's BEGIN IMMEDIATE would make every poll take the write lock)."""

    def __init__(self) -> None:
        from pipeline.settings import get_settings

        self.engine = create_engine(get_settings().db_url)

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.engine.connect() as connection:
            return list(connection.execute(text(sql), params))

    def scalar(self, sql: str, **params: Any) -> Any:
        with self.engine.connect() as connection:
            return connection.execute(text(sql), params).scalar()

    def state(self, instance_id: int) -> str:
        return str(self.scalar("SELECT state FROM pipeline_instances WHERE id = :i", i=instance_id))

    def wait_finished(self, instance_id: int, poll: float = STATE_POLL) -> str:
        return harness.wait_for(
            lambda: (state := self.state(instance_id)) in FINISHED and state,
            RUN_TIMEOUT,
            f"instance {instance_id}",
            poll,
        )


def run_instance(
    reader: StateReader, pipeline: str, poll: float = STATE_POLL, **options: Any
) -> tuple[int, float]:
    """Submit ``pipeline`` (with ``options``: units ...) and wait for it to finish; returns
    its id and the seconds taken."""
    from pipeline.operations.submit import submit

    started = time.perf_counter()
    instance = submit(pipeline, **options).id
    state = reader.wait_finished(instance, poll)
    elapsed = time.perf_counter() - started
    if state != "COMPLETED":
        raise RuntimeError(f"{pipeline} instance {instance} ended {state}")
    return instance, elapsed


# -- a. throughput and b. latency ------------------------------------------------------------


def raw_throughput(count: int) -> float:
    """Raw Celery no-op tasks per second, sent and every result awaited."""
    from celery.result import ResultSet

    from bench import raw

    started = time.perf_counter()
    results = ResultSet([raw.noop.delay() for _ in range(count)])
    results.get(timeout=RUN_TIMEOUT)
    return count / (time.perf_counter() - started)


def dramatiq_throughput(actor: Any, count: int) -> float:
    """Dramatiq no-op messages per second, sent and every result awaited (a blocking pop
    on each message's result key)."""
    started = time.perf_counter()
    messages = [actor.send() for _ in range(count)]
    for message in messages:
        message.get_result(block=True, timeout=int(RUN_TIMEOUT * 1000))
    return count / (time.perf_counter() - started)


def raw_latency(runs: int) -> tuple[float, float]:
    """Median and 95th percentile seconds of a raw Celery chain of 4 no-op tasks, sent and
    awaited."""
    from celery import chain

    from bench import raw

    times = []
    for _ in range(runs + 1):  # the first warms the connections up
        started = time.perf_counter()
        chain(*(raw.noop.si() for _ in range(4))).apply_async().get(timeout=RUN_TIMEOUT)
        times.append(time.perf_counter() - started)
    return statistics.median(times[1:]), p95(times[1:])


def p95(times: list[float]) -> float:
    """The 95th percentile of ``times``: with 20 runs, between the slowest two."""
    if len(times) < 2:
        return max(times)
    return statistics.quantiles(times, n=20, method="inclusive")[-1]


def pipeline_throughput(cluster: harness.Cluster, count: int) -> tuple[float, dict[str, Any]]:
    write_inputs(cluster.datastore / "throughput" / "many", count)
    reader = StateReader()
    instance, elapsed = run_instance(reader, "bench-throughput", poll=0.05)
    return count / elapsed, {"seconds": elapsed, "instance": instance}


def beside_peers(
    name: str,
    value: float,
    details: dict[str, Any],
    peers: dict[str, float],
    target: float = DRAMATIQ_TARGET,
) -> list[Figure]:
    """Figure a's subtasks/s as a row against raw Celery (at least as fast) and, when
    Dramatiq was measured (``peers["dramatiq"]``), a row against it (``target``)."""
    found = [
        Figure(
            name, value, "subtasks/s", peers["throughput"], "raw Celery tasks/s", True, 1.0, details
        )
    ]
    if "dramatiq" in peers:
        found.append(
            Figure(
                name.replace("throughput", "throughput beside Dramatiq", 1),
                value,
                "subtasks/s",
                peers["dramatiq"],
                f"Dramatiq tasks/s, {harness.DRAMATIQ_THREADS} threads a process",
                True,
                target,
                details,
            )
        )
    return found


def postgres_throughput(
    base: Path, broker: str, count: int, peers: dict[str, float]
) -> list[Figure]:
    """Figure a on PostgreSQL, with ``POSTGRES_WORKERS`` workers of ``WORKER_PROCESSES``
    processes each: the production shape, on the same two cores."""
    from pipeline.database import reset_engines

    base.mkdir(parents=True)
    with (
        harness.postgres_server(base) as url,
        harness.pipeline_cluster(base, broker, url, POSTGRES_WORKERS) as cluster,
    ):
        value, details = pipeline_throughput(cluster, count)
        reset_engines()  # before the server stops
    processes = POSTGRES_WORKERS * harness.WORKER_PROCESSES
    name = f"a. throughput on PostgreSQL, {POSTGRES_WORKERS} workers x {harness.WORKER_PROCESSES}"
    details = {**details, "worker_processes": processes}
    return beside_peers(
        f"{name}, {count} no-op subtasks", value, details, peers, DRAMATIQ_TARGET_POSTGRES
    )


def directories_floor(directory: Path, count: int) -> float:
    """Seconds a plain loop takes to make ``count`` subtask directories and link an input
    file into each: the filesystem's part of giving figure a's subtasks their inputs (done
    by the workers as they run them, not by the marshal), which no code of the pipeline's
    can remove. Nothing is deleted before the run ends: on ext4 without a
    journal (these machines' disk), making an inode skips every inode of its block group
    freed in the last minute or more, one by one, so a large removal slows every later
    mkdir near it for a while (docs/benchmarks.md, "The file system's floor")."""
    directory.mkdir(parents=True)
    source = directory / "input"
    source.touch()
    started = time.perf_counter()
    for index in range(count):
        subtask = f"{directory}/st-{index}"
        os.mkdir(subtask)
        os.link(source, f"{subtask}/input")
    return time.perf_counter() - started


def floor_beside(name: str, floor: float, instance_seconds: float) -> Figure:
    """The directories' floor as a share of figure a's instance (for information)."""
    return Figure(
        name, floor, "s", instance_seconds, "figure a's instance, seconds", False, None, {}
    )


def ledger_cost(cluster: harness.Cluster, count: int) -> Figure:
    """Subtasks/s of a node storing one file per subtask, recorded in the ledger, beside
    the same subtasks whose file is not an output (nothing stored, nothing recorded)."""
    reader = StateReader()
    rates: dict[str, float] = {}
    # Each side twice, in turns, the best run of each: the two sides run a minute apart
    # on a shared machine, whose load alone moved the ratio from 0.74 to 1.02 between runs.
    for _ in range(LEDGER_ROUNDS):
        for pipeline in ("bench-unrecorded", "bench-recorded"):
            write_inputs(cluster.datastore / "ledger" / pipeline.removeprefix("bench-"), count)
            instance, elapsed = run_instance(reader, pipeline, poll=0.05)
            rates[pipeline] = max(rates.get(pipeline, 0.0), count / elapsed)
    recorded = reader.scalar(
        "SELECT count(*) FROM datastore_files WHERE instance_id = :i", i=instance
    )
    if recorded != count:
        raise RuntimeError(f"bench-recorded instance {instance} recorded {recorded} files")
    return Figure(
        f"a. ledger: {count} subtasks storing a file each, recorded (best of {LEDGER_ROUNDS})",
        rates["bench-recorded"],
        "subtasks/s",
        rates["bench-unrecorded"],
        "the same, the file not an output",
        True,
        LEDGER_TARGET,
        {"recorded": recorded},
    )


def ledger_storage(cluster: harness.Cluster, count: int) -> Figure:
    """Bytes the datastore keeps for the versions of several stores of the same outputs
    (the ledger figure's instances, then one more), beside their bytes counted per
    version: each version's bytes are kept once by content, so identical outputs cost
    nothing more (target: at most half, met by any two stores)."""
    from pipeline.engine.datastore import object_path

    reader = StateReader()
    run_instance(reader, "bench-recorded", poll=0.05)
    versions = reader.rows(
        "SELECT f.sha256, f.size FROM datastore_files f"
        " JOIN pipeline_instances i ON i.id = f.instance_id"
        " WHERE i.pipeline = 'bench-recorded' AND NOT f.placing"
    )
    per_version = sum(size for _, size in versions)
    kept = sum(
        object_path(cluster.datastore, sha).stat().st_size for sha in {s for s, _ in versions}
    )
    return Figure(
        f"a. storage: {len(versions)} versions of the same {count} outputs, bytes kept",
        kept,
        "bytes",
        per_version,
        "their bytes counted per version",
        False,
        STORAGE_TARGET,
        {"versions": len(versions), "objects": len({s for s, _ in versions})},
    )


def pipeline_latency(cluster: harness.Cluster, runs: int) -> tuple[float, dict[str, Any]]:
    write_inputs(cluster.datastore / "latency" / "one", 1)
    reader = StateReader()
    times = [run_instance(reader, "bench-latency")[1] for _ in range(runs + 1)]
    details = {"runs": runs, "min": min(times[1:]), "p95": p95(times[1:])}
    return statistics.median(times[1:]), details


def latency_p95(pipeline: dict[str, Any], raw_p95: float) -> Figure:
    """Figure b's 95th percentiles, the pipeline's against the raw chain's: for reference
    beside the medians, which hold the target."""
    return Figure(
        "b. latency p95, one-subtask pipeline",
        pipeline["p95"],
        "s",
        raw_p95,
        "raw Celery chain of 4, p95",
        False,
        None,
        pipeline,
    )


# -- c. restart ------------------------------------------------------------------------------


def restart_failed(cluster: harness.Cluster, tasks: int) -> list[Figure]:
    """An instance whose every task failed; restart them all (resubmit) and time it."""
    from pipeline.operations.restart import restart_failed as restart

    for index in range(tasks):
        write_inputs(cluster.datastore / f"r{index:05d}" / "restart", 1)
    reader = StateReader()
    from pipeline.operations.submit import submit

    instance = submit("bench-restart").id
    state = reader.wait_finished(instance, poll=0.1)
    if state != "ERRORS_STALLED":
        raise RuntimeError(f"bench-restart instance {instance} ended {state}")
    started = time.perf_counter()
    report = restart(instance, "resubmit")
    returned = time.perf_counter() - started
    rerun_sql = (
        "SELECT count(*) FROM subtasks JOIN tasks ON tasks.id = subtasks.task_id"
        " WHERE tasks.instance_id = :i AND subtasks.attempts >= 2"
    )
    harness.wait_for(
        lambda: reader.scalar(rerun_sql, i=instance) >= tasks, RUN_TIMEOUT, "rerun", 0.02
    )
    running = time.perf_counter() - started
    details = {"tasks": tasks, "restarted": sum(o.ok for o in report.outcomes)}
    return [
        Figure("c. restart-failed: call returns", returned, "s", 1.0, "1 s", False, 1.0, details),
        Figure(
            "c. restart-failed: every task running again",
            running,
            "s",
            RESTART_RUNNING_TARGET,
            f"{RESTART_RUNNING_TARGET:g} s",
            False,
            1.0,
            details,
        ),
    ]


# -- d. status at scale ----------------------------------------------------------------------

#: One instance of many tasks with many subtask rows each, written by the database itself
#: (each task's counts those of its rows: every subtask COMPLETE).
SCALE_ROWS_SQL = (
    """
    INSERT INTO pipeline_instances (definition_id, pipeline, definition_version, state,
        definition, parameters, message, created_at, updated_at)
    SELECT id, name, version, 'PROCESSING', spec, '{}', '', now(), now()
    FROM pipeline_definitions WHERE name = 'bench-throughput'
    """,
    """
    INSERT INTO instance_nodes (instance_id, node, state)
    SELECT max(id), 'noop', 'RUNNING' FROM pipeline_instances
    """,
    """
    INSERT INTO tasks (instance_id, node, unit_of_work, p_state, error, error_message, halted,
        attempt, auto_resubmits, total_subtasks, completed_subtasks, failed_subtasks, execution,
        task_dir, worker_host, created_at, updated_at)
    SELECT (SELECT max(id) FROM pipeline_instances), 'noop', 'unit-' || n,
        'ALGORITHM_EXECUTING', false, '', false, 1, 0, :per_task, :per_task, 0,
        '{"queue": "default"}', '', 'host', now(), now()
    FROM generate_series(1, :tasks) AS n
    """,
    """
    INSERT INTO subtasks (task_id, "index", state, attempts, dispatch, error, inputs,
        worker_host, message_id)
    SELECT tasks.id, n, 'COMPLETE', 1, 1, '', '["0000000.in"]', 'host', ''
    FROM tasks CROSS JOIN generate_series(0, :per_task - 1) AS n
    """,
)


def status_at_scale(base: Path, sizes: Sizes) -> list[Figure]:
    """Status queries on PostgreSQL over an instance of ``status_tasks`` tasks and their
    subtask rows (bulk-inserted directly), and the rate marshaling creates subtask rows."""
    from pipeline.database import transaction
    from pipeline.engine import stages
    from pipeline.operations import queries

    base.mkdir(parents=True)
    with harness.postgres_server(base) as url:
        cluster = harness.Cluster(base / "home", harness.cluster_env(base / "home", "", url))
        cluster.cli("cluster", "init", "--no-sample-data")
        cluster.activate()
        per_task = sizes.status_subtasks_per_task
        with transaction() as session:
            for sql in SCALE_ROWS_SQL:
                session.execute(text(sql), {"tasks": sizes.status_tasks, "per_task": per_task})
            instance = session.scalar(text("SELECT max(id) FROM pipeline_instances"))
            session.execute(text("ANALYZE"))
        rows = sizes.status_tasks * per_task
        details = {"tasks": sizes.status_tasks, "subtask_rows": rows}
        found = [
            _held_to_300_ms(
                f"d. tasks --json (in process), {rows} subtask rows",
                median_seconds(lambda: queries.list_tasks(instance), sizes.status_runs),
                details,
            ),
            _held_to_300_ms(
                "d. `pipeline tasks --json` command",
                median_seconds(
                    lambda: cluster.cli("tasks", str(instance), "--json"), min(3, sizes.status_runs)
                ),
                {**details, "includes": "interpreter start"},
            ),
            _held_to_300_ms(
                "d. instance summary",
                median_seconds(lambda: queries.get_instance(instance), sizes.status_runs),
                details,
            ),
            _held_to_300_ms(
                "d. floor: a process importing only the database libraries",
                median_seconds(_import_only, min(3, sizes.status_runs)),
                {"imports": IMPORT_FLOOR},
                target_ratio=None,
            ),
        ]
        found += _status_over_http(cluster, instance, details, sizes.status_runs)
        groups = [["0000000.in"]] * sizes.marshal_rows
        with transaction() as session:
            task_id = session.scalar(text("SELECT min(id) FROM tasks"))
            started = time.perf_counter()
            stages.create_subtasks(session, task_id, groups)
            session.flush()
        rate = sizes.marshal_rows / (time.perf_counter() - started)
        found.append(
            Figure(
                "d. subtask rows created at marshaling",
                rate,
                "rows/s",
                50_000.0,
                "50,000 rows/s",
                True,
                1.0,
                {"rows": sizes.marshal_rows},
            )
        )
        found += _console_pages(instance, task_id, details, sizes.status_runs)
        from pipeline.database import reset_engines

        reset_engines()  # before the server stops
    return found


#: What any ``pipeline`` command that reads the database must import, and nothing else.
IMPORT_FLOOR = "import sqlalchemy.orm, sqlalchemy.dialects.postgresql, psycopg, pydantic_settings"


def _import_only() -> None:
    """A new interpreter that imports the libraries a database read needs, then exits: the
    part of a command's time that no query or code of ours can remove."""
    subprocess.run([sys.executable, "-c", IMPORT_FLOOR], check=True)


def _status_over_http(
    cluster: harness.Cluster, instance: int, details: dict, runs: int
) -> list[Figure]:
    """The same two reads from the HTTP API, a process that stays up (no start-up to pay)."""
    from pipeline.interfaces.client import Client

    with harness.api_server(cluster), Client() as client:
        client.tasks(instance)  # the first request warms the server's connections up
        return [
            _held_to_300_ms(f"d. {label} (HTTP API)", median_seconds(call, runs), details)
            for label, call in (
                ("GET /instances/ID/tasks", lambda: client.tasks(instance)),
                ("GET /instances/ID", lambda: client.instance(instance)),
            )
        ]


#: The console's pages timed at scale: (figure name, path; INSTANCE and TASK replaced).
CONSOLE_PAGES = (
    ("instances", "/pipeline/instances"),
    ("instance (DAG, tasks, run-time figures)", "/pipeline/instances/INSTANCE"),
    ("task (history, subtasks)", "/pipeline/tasks/TASK"),
    ("task, failed subtasks only", "/pipeline/tasks/TASK?state=FAILED"),
    ("subtask log", "/pipeline/tasks/TASK/subtasks/0/log"),
    ("restart page", "/pipeline/restart"),
    ("alerts", "/pipeline/alerts"),
    ("metrics", "/metrics"),
)


@contextmanager
def console_pages() -> Iterator[Callable[[str], None]]:
    """Flower with the console for the activated cluster, in a thread: yields a function
    that gets a page (a path) whole, logged in."""
    import base64
    import urllib.request

    with harness.console_server() as (url, login):
        token = base64.b64encode(":".join(login).encode()).decode()

        def get(path: str) -> None:
            request = urllib.request.Request(url + path)
            request.add_header("Authorization", f"Basic {token}")
            with urllib.request.urlopen(request, timeout=60) as response:
                response.read()

        yield get


def _console_pages(instance: int, task: int, details: dict, runs: int) -> list[Figure]:
    """Each console page rendered by Flower over the same instance (and the task whose
    subtask rows marshaling just created): the time from request to the last byte."""
    subtasks = _subtask_rows(task)
    found = []
    with console_pages() as get:
        for label, path in CONSOLE_PAGES:
            path = path.replace("INSTANCE", str(instance)).replace("TASK", str(task))
            get(path)  # warm: the first request loads the page's template
            seconds = median_seconds(lambda path=path: get(path), runs)
            page = {**details, "path": path, "task_subtasks": subtasks}
            if path == "/metrics":
                found.append(
                    Figure(
                        f"d. console: {label}",
                        seconds,
                        "s",
                        METRICS_TARGET,
                        "50 ms",
                        False,
                        1.0,
                        page,
                    )  # fmt: skip
                )
            else:
                found.append(_held_to_300_ms(f"d. console: {label}", seconds, page))
    return found


def _subtask_rows(task: int) -> int:
    from pipeline.database import transaction

    with transaction() as session:
        found = session.scalar(
            text("SELECT count(*) FROM subtasks WHERE task_id = :t"), {"t": task}
        )
    return int(found or 0)


def _held_to_300_ms(
    name: str, seconds: float, details: dict, target_ratio: float | None = 1.0
) -> Figure:
    """A status figure against the issue's 300 ms (``target_ratio`` None: for reference)."""
    return Figure(name, seconds, "s", 0.3, "300 ms", False, target_ratio, details)


def median_seconds(call: Any, runs: int) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        call()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


# -- e. memory -------------------------------------------------------------------------------


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB (0 once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_processes(main: int) -> list[int]:
    """The Celery worker's main process and its pool processes (not the algorithms' children,
    which are the pool processes' children)."""
    try:
        children = Path(f"/proc/{main}/task/{main}/children").read_text().split()
    except OSError:
        children = []
    return [main, *map(int, children)]


def memory(cluster: harness.Cluster, count: int) -> list[Figure]:
    """Peak RSS of each worker process, at warm-up and over the whole run of ``count`` subtasks."""
    from pipeline.operations.submit import submit

    write_inputs(cluster.datastore / "memory" / "memory", count)
    reader = StateReader()
    main = cluster.worker_pid()
    started = time.perf_counter()
    instance = submit("bench-memory").id
    progress_sql = "SELECT completed_subtasks FROM tasks WHERE instance_id = :i"
    warm: dict[int, int] = {}
    peak: dict[int, int] = {}
    while reader.state(instance) not in FINISHED:
        for pid in worker_processes(main):
            peak[pid] = max(peak.get(pid, 0), rss_kib(pid))
        if not warm and (reader.scalar(progress_sql, i=instance) or 0) >= count * WARM_UP_SHARE:
            warm = dict(peak)
        if time.perf_counter() - started > RUN_TIMEOUT:
            raise TimeoutError(f"bench-memory instance {instance}")
        time.sleep(MEMORY_POLL)
    warm_peak = max(warm.values(), default=0) / 1024
    final_peak = max(peak.values(), default=0) / 1024
    details = {
        "subtasks": count,
        "seconds": time.perf_counter() - started,
        "warm_up_kib": warm,
        "peak_kib": peak,
    }
    return [
        Figure(
            f"e. peak worker RSS, {count} subtasks",
            final_peak,
            "MiB",
            warm_peak,
            "peak after 10% (warm-up)",
            False,
            MEMORY_GROWTH_ALLOWED,
            details,
        )
    ]


def table(found: list[Figure]) -> Table:
    view = Table(title="Benchmarks: the pipeline beside its baselines")
    for column in ("figure", "value", "baseline", "ratio", "target", "met"):
        view.add_column(column)
    for figure in found:
        sign = ">=" if figure.higher_is_better else "<="
        target = "-" if figure.target_ratio is None else f"{sign} {figure.target_ratio:g}"
        met = {None: "-", True: "[green]yes", False: "[red]no"}[figure.met]
        view.add_row(
            figure.name,
            f"{figure.value:.4g} {figure.unit}",
            f"{figure.baseline:.4g} ({figure.baseline_label})",
            f"{figure.ratio:.3g}",
            target,
            met,
        )
    return view
