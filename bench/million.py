"""Figure h, at a million: the reads Ziggy's own release notes name as its slow spots, on
PostgreSQL with a million ledger versions and consumption rows.

- the lineage of a file ten steps deep (Ziggy's consumed-files query, ZIGGY-548);
- marshaling the new files of a ``reprocess: new`` node whose unit it consumed a hundred
  times before (a million consumption rows of the same node and unit; ZIGGY-577): the
  marshal of 10,000 new files beside the 10,000 it consumed, as the task's own history
  times it (from its MARSHALING transition to the next);
- the console's instances page among 10,000 instances (ZIGGY-605).

The earlier instances, their tasks, subtasks, versions and consumption rows are written by
the database itself (``generate_series``); the files on disk by a plain loop; the new
instance is submitted to a started cluster and runs as any would.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

from sqlalchemy import text

from bench import figures, harness
from bench.figures import Figure, Sizes

#: The marshal's target, seconds; the lineage's; the instances page's.
MARSHAL_TARGET, LINEAGE_TARGET, PAGE_TARGET = 1.0, 0.1, 0.3
#: The lineage's depth: files produced one from another.
CHAIN_STEPS = 10
#: The unit of work the new-data node runs on, and where its files are.
UNIT = "u"
#: A unit of as many new files and no history: the marshal's cost without the million.
FRESH_UNIT = "v"
#: A unit of one file, run first: the worker's first task pays for its imports.
WARM_UNIT = "w"
DIRECTORY = f"{UNIT}/arrived"
OLD_CONTENT = b"consumed before\n"

EARLIER_SQL = (
    # The earlier instances of bench-new, each of one task that consumed every file of the
    # unit, as it was then: instance k (its message says k) consumed version k.
    """
    INSERT INTO pipeline_instances (definition_id, pipeline, definition_version, state,
        definition, parameters, message, created_at, updated_at)
    SELECT d.id, d.name, d.version, 'COMPLETED', d.spec, '{}', 'k=' || k, now(), now()
    FROM pipeline_definitions d CROSS JOIN generate_series(1, :runs) AS k
    WHERE d.name = 'bench-new'
    """,
    """
    INSERT INTO tasks (instance_id, node, unit_of_work, p_state, error, error_message, halted,
        attempt, auto_resubmits, total_subtasks, completed_subtasks, failed_subtasks, execution,
        task_dir, worker_host, created_at, updated_at)
    SELECT id, 'fresh', :unit, 'COMPLETE', false, '', false, 1, 0, :files, :files, 0,
        '{"queue": "default"}', '', 'host', now(), now()
    FROM pipeline_instances WHERE message LIKE 'k=%'
    """,
    """
    INSERT INTO subtasks (task_id, "index", state, attempts, dispatch, error, inputs,
        worker_host, message_id)
    SELECT tasks.id, n, 'COMPLETE', 1, 1, '', '[]', 'host', ''
    FROM tasks JOIN pipeline_instances i ON i.id = tasks.instance_id
    CROSS JOIN generate_series(0, :files - 1) AS n
    WHERE i.message LIKE 'k=%'
    """,
    # Every version but the current one of each file, superseded; ids made from (k, n).
    """
    INSERT INTO datastore_files (id, path, data_file_type, unit_of_work, size, sha256,
        mtime_ns, origin, receipt, node, parameter_versions, stored_at, superseded_at, "placing")
    SELECT :base + (k - 1) * :files + n,
        :directory || '/old-' || lpad(n::text, 7, '0') || '.in', 'arrived', :unit, 4,
        md5(k || '-' || n) || md5(n || '-' || k), 0, 'received', 'bench', '', '{}', now(),
        now(), false
    FROM generate_series(1, :runs - 1) AS k CROSS JOIN generate_series(0, :files - 1) AS n
    """,
)
CONSUMED_SQL = """
    INSERT INTO file_consumptions (task_id, attempt, subtask_index, file_id)
    SELECT tasks.id, 1, n, :base + (substring(i.message from 3)::int - 1) * :files + n
    FROM tasks JOIN pipeline_instances i ON i.id = tasks.instance_id
    CROSS JOIN generate_series(0, :files - 1) AS n
    WHERE i.message LIKE 'k=%'
"""
CURRENT_SQL = """
    INSERT INTO datastore_files (id, path, data_file_type, unit_of_work, size, sha256,
        mtime_ns, origin, receipt, node, parameter_versions, stored_at, "placing")
    VALUES (:id, :path, 'arrived', :unit, :size, :sha256, :mtime_ns, 'received', 'bench', '',
        '{}', now(), false)
"""
#: More instances, each of one finished task, up to the page's 10,000.
MORE_INSTANCES_SQL = (
    """
    INSERT INTO pipeline_instances (definition_id, pipeline, definition_version, state,
        definition, parameters, message, created_at, updated_at)
    SELECT d.id, d.name, d.version, 'COMPLETED', d.spec, '{}', 'more', now(), now()
    FROM pipeline_definitions d CROSS JOIN generate_series(1, :more) AS k
    WHERE d.name = 'bench-new'
    """,
    """
    INSERT INTO tasks (instance_id, node, unit_of_work, p_state, error, error_message, halted,
        attempt, auto_resubmits, total_subtasks, completed_subtasks, failed_subtasks, execution,
        task_dir, worker_host, created_at, updated_at)
    SELECT id, 'fresh', 'elsewhere', 'COMPLETE', false, '', false, 1, 0, 1, 1, 0,
        '{"queue": "default"}', '', 'host', now(), now()
    FROM pipeline_instances WHERE message = 'more'
    """,
)


def write_files(datastore: Path, files: int) -> list[dict[str, Any]]:
    """The unit's files on disk: ``files`` consumed before (their current ledger rows) and
    ``files`` new ones, never recorded."""
    directory = datastore / DIRECTORY
    directory.mkdir(parents=True)
    rows = []
    digest = hashlib.sha256(OLD_CONTENT).hexdigest()
    for n in range(files):
        old = directory / f"old-{n:07d}.in"
        old.write_bytes(OLD_CONTENT)
        status = old.stat()
        path = f"{DIRECTORY}/{old.name}"
        rows.append({"path": path, "size": status.st_size, "sha256": digest,
                     "mtime_ns": status.st_mtime_ns})  # fmt: skip
        (directory / f"new-{n:07d}.in").write_bytes(f"{n}\n".encode())
    return rows


def chain(session: Any, instance: int) -> str:
    """A file made from another ten times over: step 0 received, step k produced by task k
    (subtask 0) from step k - 1. Returns the last step's path."""
    previous = session.scalar(
        text(
            "INSERT INTO datastore_files (path, data_file_type, unit_of_work, size, sha256,"
            ' mtime_ns, origin, receipt, node, parameter_versions, stored_at, "placing")'
            " VALUES ('chain/step-00.dat', 'arrived', 'chain', 1, :sha, 0, 'received', 'bench',"
            " '', '{}', now(), false) RETURNING id"
        ),
        {"sha": hashlib.sha256(b"0").hexdigest()},
    )
    path = "chain/step-00.dat"
    for step in range(1, CHAIN_STEPS + 1):
        task = session.scalar(
            text(
                "INSERT INTO tasks (instance_id, node, unit_of_work, p_state, error,"
                " error_message, halted, attempt, auto_resubmits, total_subtasks,"
                " completed_subtasks, failed_subtasks, execution, task_dir, worker_host,"
                " created_at, updated_at) VALUES (:i, 'fresh', :unit, 'COMPLETE', false, '',"
                " false, 1, 0, 1, 1, 0, '{\"queue\": \"default\"}', '', 'host', now(), now())"
                " RETURNING id"
            ),
            {"i": instance, "unit": f"chain-{step}"},
        )
        session.execute(
            text(
                "INSERT INTO file_consumptions (task_id, attempt, subtask_index, file_id)"
                " VALUES (:t, 1, 0, :f)"
            ),
            {"t": task, "f": previous},
        )
        path = f"chain/step-{step:02d}.dat"
        previous = session.scalar(
            text(
                "INSERT INTO datastore_files (path, data_file_type, unit_of_work, size, sha256,"
                " mtime_ns, origin, receipt, instance_id, task_id, subtask_index, attempt, node,"
                ' definition_version, parameter_versions, stored_at, "placing") VALUES (:p,'
                " 'arrived', 'chain', 1, :sha, 0, 'task', '', :i, :t, 0, 1, 'fresh', 1, '{}',"
                " now(), false) RETURNING id"
            ),
            {"p": path, "sha": hashlib.sha256(path.encode()).hexdigest(), "i": instance, "t": task},
        )
    return path


def million_figures(base: Path, broker: str, sizes: Sizes) -> list[Figure]:
    """Figure h (see the module): a cluster of one worker on PostgreSQL."""
    from pipeline.database import reset_engines, transaction
    from pipeline.operations import lineage

    files, runs = sizes.new_files, max(2, sizes.million_rows // sizes.new_files)
    base.mkdir(parents=True)
    with (
        harness.postgres_server(base) as url,
        harness.pipeline_cluster(base, broker, url) as cluster,
    ):
        current = write_files(cluster.datastore, files)
        values = {"runs": runs, "files": files, "unit": UNIT, "directory": DIRECTORY}
        started = time.perf_counter()
        with transaction() as session:
            base_id = session.scalar(text("SELECT coalesce(max(id), 0) FROM datastore_files")) + 1
            values["base"] = base_id
            for sql in EARLIER_SQL:
                session.execute(text(sql), values)
            session.execute(
                text(CURRENT_SQL),
                [
                    {**row, "id": base_id + (runs - 1) * files + n, "unit": UNIT}
                    for n, row in enumerate(current)
                ],
            )
            session.execute(text(
                "SELECT setval(pg_get_serial_sequence('datastore_files', 'id'),"
                " (SELECT max(id) FROM datastore_files))"
            ))  # fmt: skip
            session.execute(text(CONSUMED_SQL), values)
            more = max(0, sizes.million_instances - runs)
            for sql in MORE_INSTANCES_SQL:
                session.execute(text(sql), {"more": more})
            chain_instance = session.scalar(text("SELECT min(id) FROM pipeline_instances"))
            last = chain(session, chain_instance)
        with transaction() as session:
            session.execute(text("ANALYZE"))
            counted = {
                table: session.scalar(text(f"SELECT count(*) FROM {table}"))  # noqa: S608
                for table in ("datastore_files", "file_consumptions", "pipeline_instances")
            }
        details: dict[str, Any] = {**counted, "rows_written_seconds": time.perf_counter() - started}
        found = [
            Figure(
                f"h. lineage of a file {CHAIN_STEPS} steps deep among"
                f" {counted['datastore_files']} versions",
                figures.median_seconds(lambda: lineage.lineage(last), sizes.status_runs),
                "s",
                LINEAGE_TARGET,
                "100 ms",
                False,
                1.0,
                details,
            ),
            _instances_page(sizes, details),
            *_marshal(cluster, files, details),
        ]
        reset_engines()  # before the server stops
    return found


def _instances_page(sizes: Sizes, details: dict[str, Any]) -> Figure:
    """The console's instances page, request to last byte (median, after a first)."""
    with figures.console_pages() as get:
        get("/pipeline/instances")
        seconds = figures.median_seconds(lambda: get("/pipeline/instances"), sizes.status_runs)
    return Figure(
        f"h. console: instances page among {details['pipeline_instances']} instances",
        seconds,
        "s",
        PAGE_TARGET,
        "300 ms",
        False,
        1.0,
        details,
    )


def _marshal(cluster: harness.Cluster, files: int, details: dict[str, Any]) -> list[Figure]:
    """Run bench-new on a unit of as many new files and no history, then on the unit with
    its million rows; each task's marshal, from its MARSHALING transition to the next."""
    from pipeline.operations.submit import submit

    for unit, count in ((WARM_UNIT, 1), (FRESH_UNIT, files)):
        fresh = cluster.datastore / unit / "arrived"
        fresh.mkdir(parents=True)
        for n in range(count):
            (fresh / f"new-{n:07d}.in").write_bytes(f"{n}\n".encode())
    reader = figures.StateReader()
    seconds = {}
    figures.run_instance(reader, "bench-new", units=[WARM_UNIT])  # the worker's first task
    for unit in (FRESH_UNIT, UNIT):
        instance = submit("bench-new", units=[unit]).id
        state = reader.wait_finished(instance)
        [(task, total)] = reader.rows(
            "SELECT id, total_subtasks FROM tasks WHERE instance_id = :i", i=instance
        )
        if state != "COMPLETED" or total != files:
            raise RuntimeError(f"bench-new on {unit}: {state}, {total} subtasks, not {files}")
        first, after = reader.rows(
            "SELECT at FROM task_events WHERE task_id = :t ORDER BY id LIMIT 2", t=task
        )
        seconds[unit] = (after.at - first.at).total_seconds()
    return [
        Figure(
            f"h. marshal of {files} new files, {details['file_consumptions']} consumed before",
            seconds[UNIT],
            "s",
            MARSHAL_TARGET,
            "1 s",
            False,
            1.0,
            details,
        ),
        Figure(
            f"h. the same marshal of {files} new files, nothing consumed before",
            seconds[FRESH_UNIT],
            "s",
            seconds[UNIT],
            "among the million, s",
            False,
            None,
            details,
        ),
    ]
