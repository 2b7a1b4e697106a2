"""``python -m bench.large [--tasks N] [--subtasks M]`` (``make bench-large``): one instance
of a million no-op subtasks, end to end, on PostgreSQL.

The production shape at production scale, which ``make bench`` is too short to reach: a
cluster of ``figures.POSTGRES_WORKERS`` Celery workers of ``harness.WORKER_PROCESSES``
processes each on a throwaway PostgreSQL, running ``bench-large``: 100 tasks (one per set
of input files) of 10,000 no-op subtasks each. It measures

- subtasks/s from submit to COMPLETED, held to finishing within the 15 minutes budget;
- the peak RSS of every worker process (the workers' main and pool processes; sampled
  apart from the rest, every ``RSS_POLL`` seconds), the largest one and all together, each
  beside its peak once a tenth of the subtasks had finished;
- the database's size at the end (``pg_database_size``);
- the operators' status commands, each a new ``pipeline`` process as an operator types it,
  run while the instance runs (once a quarter, half and three quarters of its subtasks
  have finished), held to the 350 ms of issue 16.

Not part of ``make bench`` (10 to 15 minutes on two cores). The results are written like
``python -m bench``'s, as ``bench/results/<timestamp>-large.json``;
``python -m bench --markdown`` prints them as a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import figures, harness
from bench.__main__ import RESULTS, machine, report
from bench.figures import Figure

TASKS = 100
SUBTASKS_PER_TASK = 10_000
#: The budget of the whole million, submit to COMPLETED.
BUDGET_SECONDS = 900.0
#: Seconds the instance may take before the benchmark gives up on it: well past the budget,
#: so a slow run still finishes and shows by how much it missed.
RUN_TIMEOUT = 4 * BUDGET_SECONDS
#: Seconds between samples of the workers' memory, and between reads of the progress.
RSS_POLL = 0.5
PROGRESS_POLL = 1.0
#: Shares of the subtasks finished at which the status commands run, once each.
STATUS_AT = (0.25, 0.5, 0.75)
#: What an operator may wait for a status command, process start included (issue 16).
STATUS_TARGET_SECONDS = 0.35
PIPELINE = "bench-large"


def status_commands(instance: int, task: int) -> dict[str, list[str]]:
    """The commands timed mid-run: as an operator types them (tables), and the task list
    as JSON too."""
    return {
        "pipeline instances": ["instances"],
        "pipeline tasks INSTANCE": ["tasks", str(instance)],
        "pipeline tasks INSTANCE --json": ["tasks", str(instance), "--json"],
        "pipeline subtasks TASK": ["subtasks", str(task)],
        "pipeline task TASK": ["task", str(task)],
    }


class MemorySampler(threading.Thread):
    """Samples the RSS of every worker process every ``RSS_POLL`` seconds until stopped:
    each process's peak, and the peak of their sum at one sample."""

    def __init__(self, mains: list[int]) -> None:
        super().__init__(daemon=True)
        self.mains = mains
        self.peak: dict[int, int] = {}
        self.peak_total = 0
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.wait(RSS_POLL):
            pids = [pid for main in self.mains for pid in figures.worker_processes(main)]
            sizes = {pid: figures.rss_kib(pid) for pid in pids}
            for pid, kib in sizes.items():
                self.peak[pid] = max(self.peak.get(pid, 0), kib)
            self.peak_total = max(self.peak_total, sum(sizes.values()))

    def snapshot(self) -> tuple[int, int]:
        """The largest process's peak and the total's, in KiB, so far."""
        return max(self.peak.values(), default=0), self.peak_total


class CpuAccount:
    """Where the run's CPU time went: each process tree's user and system seconds (its
    exited children included, once reaped), between ``start`` and ``stop``.

    The trees are the workers (main, pool and forked children), beat, PostgreSQL and Redis;
    this process (the benchmark's polling) and the status commands it runs come from
    ``os.times``; the rest of the machine's busy time is everyone else's.
    """

    def __init__(self, roots: dict[str, list[int]]) -> None:
        self.roots = roots
        self.begun: dict[str, float] = {}

    def sample(self) -> dict[str, float]:
        stats = dict(_process_stats())
        found = {name: _tree_seconds(stats, pids) for name, pids in self.roots.items()}
        own = os.times()
        found["the benchmark process"] = own.user + own.system
        found["the status commands"] = own.children_user + own.children_system
        found["machine busy"] = _machine_busy_seconds()
        return found

    def start(self) -> None:
        self.begun = self.sample()

    def stop(self) -> dict[str, float]:
        """Seconds of CPU of each, and what the machine spent elsewhere (other users)."""
        spent = {name: value - self.begun[name] for name, value in self.sample().items()}
        busy = spent.pop("machine busy")
        spent["everything else on the machine"] = busy - sum(spent.values())
        return {name: round(value, 1) for name, value in spent.items()}


#: Clock ticks a second, the unit of /proc's CPU times.
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _process_stats() -> Iterator[tuple[int, tuple[int, float]]]:
    """(pid, (parent pid, CPU seconds of it and its reaped children)) of every process."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        ticks = sum(int(value) for value in fields[11:15])  # utime stime cutime cstime
        yield int(entry.name), (int(fields[1]), ticks / CLOCK_TICKS)


def _tree_seconds(stats: dict[int, tuple[int, float]], roots: list[int]) -> float:
    """CPU seconds of ``roots`` and every living descendant."""
    children: dict[int, list[int]] = {}
    for pid, (parent, _) in stats.items():
        children.setdefault(parent, []).append(pid)
    total, waiting = 0.0, [pid for pid in roots if pid in stats]
    while waiting:
        pid = waiting.pop()
        total += stats[pid][1]
        waiting += children.get(pid, [])
    return total


def _machine_busy_seconds() -> float:
    """CPU seconds every core spent not idle since boot (/proc/stat)."""
    values = [int(value) for value in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = values[3] + values[4]  # idle, iowait
    return (sum(values[:8]) - idle) / CLOCK_TICKS


def redis_pid(port: int) -> int:
    """The benchmark's redis-server, told by its port."""
    for entry in Path("/proc").iterdir():
        try:
            title = (entry / "cmdline").read_text() if entry.name.isdigit() else ""
        except OSError:
            continue
        if "redis-server" in title and f":{port}" in title:
            return int(entry.name)
    raise RuntimeError(f"no redis-server on port {port}")


def service_pid(cluster: harness.Cluster, name: str) -> int:
    rows = json.loads(cluster.cli("cluster", "status", "--json"))
    return int(next(row["pid"] for row in rows if row["name"] == name))


def write_inputs(datastore: Path, tasks: int, per_task: int) -> None:
    """``per_task`` empty input files in each of ``tasks`` sets: one task per set."""
    for index in range(tasks):
        figures.write_inputs(datastore / f"u{index:03d}" / "large", per_task)


def timed_command(cluster: harness.Cluster, args: list[str]) -> float:
    started = time.perf_counter()
    cluster.cli(*args)
    return time.perf_counter() - started


def run(base: Path, tasks: int, per_task: int) -> tuple[list[Figure], dict[str, float]]:
    """Start the cluster, run the instance, measure; returns the figures and the seconds
    of each step."""
    from pipeline.database import reset_engines
    from pipeline.operations.submit import submit

    steps: dict[str, float] = {}
    total = tasks * per_task
    started = time.perf_counter()
    with harness.redis_server(base) as port:
        pg = base / "postgres"
        pg.mkdir()
        with (
            harness.postgres_server(pg) as url,
            harness.pipeline_cluster(
                pg, f"redis://127.0.0.1:{port}/1", url, figures.POSTGRES_WORKERS
            ) as cluster,
        ):
            steps["cluster start"] = time.perf_counter() - started
            mark = time.perf_counter()
            write_inputs(cluster.datastore, tasks, per_task)
            steps["input files written"] = time.perf_counter() - mark
            reader = figures.StateReader()
            size_sql = "SELECT pg_database_size(current_database())"
            empty_bytes = reader.scalar(size_sql)
            sampler = MemorySampler(cluster.worker_pids())
            cpu = CpuAccount(
                {
                    "the workers": cluster.worker_pids(),
                    "beat": [service_pid(cluster, "beat")],
                    "PostgreSQL": [int((pg / "pg" / "postmaster.pid").read_text().split()[0])],
                    "Redis": [redis_pid(port)],
                }
            )
            sampler.start()
            cpu.start()
            mark = time.perf_counter()
            instance = submit(PIPELINE).id
            task = reader.scalar("SELECT min(id) FROM tasks WHERE instance_id = :i", i=instance)
            commands = status_commands(instance, task)
            timings: dict[str, list[float]] = {name: [] for name in commands}
            rounds: list[dict[str, Any]] = []
            warm: tuple[int, int] | None = None
            done_sql = "SELECT sum(completed_subtasks) FROM tasks WHERE instance_id = :i"
            while (state := reader.state(instance)) not in figures.FINISHED:
                if time.perf_counter() - mark > RUN_TIMEOUT:
                    raise TimeoutError(f"{PIPELINE} instance {instance} after {RUN_TIMEOUT} s")
                done = int(reader.scalar(done_sql, i=instance) or 0)
                if warm is None and done >= total * figures.WARM_UP_SHARE:
                    warm = sampler.snapshot()
                if len(rounds) < len(STATUS_AT) and done >= total * STATUS_AT[len(rounds)]:
                    seconds = {name: timed_command(cluster, a) for name, a in commands.items()}
                    for name, value in seconds.items():
                        timings[name].append(value)
                    rounds.append({"completed_subtasks": done, "seconds": seconds})
                time.sleep(PROGRESS_POLL)
            elapsed = time.perf_counter() - mark
            cpu_seconds = cpu.stop()
            sampler.stopped.set()
            sampler.join()
            if state != "COMPLETED":
                raise RuntimeError(f"{PIPELINE} instance {instance} ended {state}")
            steps["instance"] = elapsed
            if not rounds:  # too small to catch running: time them on the finished instance
                for name, a in commands.items():
                    timings[name].append(timed_command(cluster, a))
            database_bytes = int(reader.scalar(size_sql))
            reader.engine.dispose()
            reset_engines()  # before the server stops
    shape = f"{tasks} tasks x {per_task} no-op subtasks"
    details = {
        "tasks": tasks,
        "subtasks_per_task": per_task,
        "seconds": elapsed,
        "instance": instance,
        "worker_processes": figures.POSTGRES_WORKERS * harness.WORKER_PROCESSES,
        "cpu_seconds": cpu_seconds,
    }
    largest, together = sampler.snapshot()
    warm_largest, warm_together = warm or (largest, together)
    memory = {**details, "peak_kib": sampler.peak, "warm_up": warm}
    found = [
        Figure(
            f"large. throughput on PostgreSQL, 2 workers x 2, {shape}",
            total / elapsed,
            "subtasks/s",
            total / BUDGET_SECONDS,
            f"{total} in {BUDGET_SECONDS / 60:g} min",
            True,
            1.0,
            details,
        ),
        Figure(
            "large. peak RSS of the largest worker process",
            largest / 1024,
            "MiB",
            warm_largest / 1024,
            "its peak after 10%",
            False,
            None,
            memory,
        ),
        Figure(
            "large. peak RSS of all worker processes together",
            together / 1024,
            "MiB",
            warm_together / 1024,
            "their peak after 10%",
            False,
            None,
            memory,
        ),
        Figure(
            "large. database size at the end",
            database_bytes / 2**20,
            "MiB",
            empty_bytes / 2**20,
            "before the submit",
            False,
            None,
            {**details, "bytes_per_subtask": (database_bytes - empty_bytes) / total},
        ),
    ]
    for name, seconds in timings.items():
        found.append(
            Figure(
                f"large. `{name}` while the instance runs",
                statistics.median(seconds),
                "s",
                STATUS_TARGET_SECONDS,
                f"{STATUS_TARGET_SECONDS * 1000:g} ms",
                False,
                1.0,
                {"task_subtasks": per_task, "tasks": tasks, "runs": seconds, "rounds": rounds},
            )
        )
    return found, steps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.large", description=__doc__)
    parser.add_argument("--tasks", type=int, default=TASKS, help="tasks of the instance")
    parser.add_argument(
        "--subtasks", type=int, default=SUBTASKS_PER_TASK, help="no-op subtasks of each task"
    )
    parser.add_argument("--output", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the cluster's home and logs")
    args = parser.parse_args(argv)
    started, begun = datetime.now(UTC), time.perf_counter()
    load_before = os.getloadavg()
    base = Path(tempfile.mkdtemp(prefix="pipeline-bench-large-"))
    base.chmod(0o755)  # PostgreSQL's server runs as its own user, below this directory
    try:
        found, steps = run(base, args.tasks, args.subtasks)
    finally:
        mark = time.perf_counter()
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    steps["files removed"] = time.perf_counter() - mark
    result = {
        "started_at": started.isoformat(),
        "seconds": time.perf_counter() - begun,
        "sizes": {"tasks": args.tasks, "subtasks_per_task": args.subtasks},
        "machine": {**machine(), "load_average_before": load_before},
        "step_seconds": {name: round(value, 2) for name, value in steps.items()},
        "figures": [figure.as_dict() for figure in found],
    }
    cpu = found[0].details["cpu_seconds"]
    lines = [f"steps (s): {result['step_seconds']}", f"CPU seconds of the instance: {cpu}"]
    report(result, found, args.output / f"{started:%Y%m%dT%H%M%SZ}-large.json", lines)
    if args.keep:
        print(f"home and logs kept in {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
