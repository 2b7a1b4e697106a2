"""``python -m bench [--quick | --smoke] [--only a,b,...]``: run the benchmark figures, print
them beside their baselines, and write them to ``bench/results/<timestamp>.json``."""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from importlib.metadata import version
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import breakdown, commands, figures, harness, million, on_slurm, peers
from bench.figures import QUICK_FACTOR, SMOKE_FACTOR, Figure, Sizes, table

RESULTS = Path(__file__).resolve().parent / "results"
#: Every figure group, in the order they run.
GROUPS = ("a", "b", "c", "d", "e", "f", "g", "h")


def machine() -> dict[str, object]:
    """Where the figures were measured: they mean little without it."""
    pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    packages = ("celery", "kombu", "redis", "SQLAlchemy", "psycopg")
    packages += ("dramatiq",) if peers.available() else ()
    return {
        "cores": os.cpu_count(),
        "memory_gb": round(pages / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": {name: version(name) for name in packages},
        "load_average": os.getloadavg(),
    }


#: Seconds each step of the run took, for keeping the suite within its time budget.
STEP_SECONDS: dict[str, float] = {}
#: What the run could not measure, and why: printed under the table and written with it.
NOTES: list[str] = []


@contextmanager
def step(name: str) -> Iterator[None]:
    started = time.perf_counter()
    try:
        yield
    finally:
        STEP_SECONDS[name] = round(time.perf_counter() - started, 2)


def run_cluster_groups(groups: set[str], sizes: Sizes, base: Path) -> list[Figure]:
    """Figures a, b, c and e: a raw Celery worker, then a pipeline cluster, on one Redis."""
    found: list[Figure] = []
    raw: dict[str, float] = {}
    with harness.redis_server(base) as port:
        broker = f"redis://127.0.0.1:{port}"
        if groups & {"a", "b"}:
            with step("raw Celery"), harness.raw_worker(f"{broker}/0", base / "raw.log"):
                if "a" in groups:
                    raw["throughput"] = figures.raw_throughput(sizes.throughput_subtasks)
                if "b" in groups:
                    raw["latency"], raw["latency_p95"] = figures.raw_latency(sizes.latency_runs)
        if "a" in groups and not peers.available():
            NOTES.append("a: Dramatiq is not installed, no ratio to it (pip install -e '.[bench]')")
        elif "a" in groups:
            with (
                step("Dramatiq"),
                harness.dramatiq_worker(f"{broker}/3", base / "dramatiq.log") as actor,
            ):
                raw["dramatiq"] = figures.dramatiq_throughput(actor, sizes.throughput_subtasks)
        if "b" in groups:
            with step("b breakdown"):
                stages = breakdown.stage_breakdown(
                    base / "breakdown", f"{broker}/2", sizes.breakdown_runs
                )
        if not groups & {"a", "b", "c", "e"}:
            return found
        with ExitStack() as stack:
            with step("cluster start"):
                cluster = stack.enter_context(
                    harness.pipeline_cluster(base / "sqlite", f"{broker}/1")
                )
            if "a" in groups:
                from pipeline.settings import get_settings

                with step("a floor"):
                    # Beside the task directories the instance makes: ext4 places a new
                    # directory near its parent's, and the cost of making one differs
                    # between places (see ``figures.directories_floor``).
                    floor = figures.directories_floor(
                        get_settings().tasks_dir / "floor", sizes.throughput_subtasks
                    )
                with step("a"):
                    value, details = figures.pipeline_throughput(cluster, sizes.throughput_subtasks)
                name = f"a. throughput, {sizes.throughput_subtasks} no-op subtasks"
                found += figures.beside_peers(name, value, details, raw)
                found.append(
                    figures.floor_beside(
                        f"a. floor: {sizes.throughput_subtasks} subtask directories made and"
                        " linked by a plain loop",
                        floor,
                        details["seconds"],
                    )
                )
                with step("a ledger"):
                    found.append(figures.ledger_cost(cluster, sizes.throughput_subtasks))
                with step("a storage"):
                    found.append(figures.ledger_storage(cluster, sizes.throughput_subtasks))
            if "b" in groups:
                with step("b"):
                    value, details = figures.pipeline_latency(cluster, sizes.latency_runs)
                details["stages_in_process_ms"] = stages
                found.append(
                    Figure(
                        "b. latency, one-subtask pipeline",
                        value,
                        "s",
                        raw["latency"],
                        "raw Celery chain of 4",
                        False,
                        figures.LATENCY_TARGET,
                        details,
                    )
                )
                found.append(figures.latency_p95(details, raw["latency_p95"]))
            if "c" in groups:
                with step("c"):
                    found += figures.restart_failed(cluster, sizes.restart_tasks)
            if "e" in groups:
                with step("e"):
                    found += figures.memory(cluster, sizes.memory_subtasks)
        if "a" in groups:
            with step("a PostgreSQL"):
                found += figures.postgres_throughput(
                    base / "postgres", f"{broker}/4", sizes.throughput_subtasks, raw
                )
    return found


def markdown(results: dict[str, object]) -> str:
    """A results file as the Markdown table of docs/benchmarks.md."""
    lines = ["| figure | value | baseline | ratio | target | met |", "|---|---|---|---|---|---|"]
    for figure in results["figures"]:  # type: ignore[attr-defined]
        sign = ">=" if figure["higher_is_better"] else "<="
        target = "-" if figure["target_ratio"] is None else f"{sign} {figure['target_ratio']:g}"
        met = {None: "-", True: "yes", False: "**no**"}[figure["met"]]
        lines.append(
            f"| {figure['name']} | {figure['value']:.4g} {figure['unit']}"
            f" | {figure['baseline']:.4g} ({figure['baseline_label']}) | {figure['ratio']:.3g}"
            f" | {target} | {met} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    sizing = parser.add_mutually_exclusive_group()
    sizing.add_argument("--quick", action="store_true", help=f"every size / {QUICK_FACTOR}")
    sizing.add_argument(
        "--smoke", action="store_true", help=f"every size / {SMOKE_FACTOR}: does each run?"
    )
    parser.add_argument("--only", default=",".join(GROUPS), help="figure groups, e.g. a,b")
    parser.add_argument("--output", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("--keep", action="store_true", help="keep the clusters' homes and logs")
    parser.add_argument(
        "--markdown", type=Path, help="print a results file as Markdown, run nothing"
    )
    args = parser.parse_args(argv)
    if args.markdown:
        print(markdown(json.loads(args.markdown.read_text())))
        return 0
    groups = set(args.only.split(","))
    factor = QUICK_FACTOR if args.quick else SMOKE_FACTOR if args.smoke else 1
    sizes = Sizes().smaller(factor)
    label = "-quick" if args.quick else "-smoke" if args.smoke else ""
    started, begun = datetime.now(UTC), time.perf_counter()
    load_before = os.getloadavg()
    found: list[Figure] = []
    base = Path(tempfile.mkdtemp(prefix="pipeline-bench-"))
    base.chmod(0o755)  # PostgreSQL's server runs as its own user, below this directory
    try:
        found += run_cluster_groups(groups, sizes, base)
        if "d" in groups:
            with step("d"):
                found += figures.status_at_scale(base / "status", sizes)
        if "f" in groups:
            with step("f"):
                found += commands.command_times(base / "commands", sizes)
        if "g" in groups:
            with step("g"), harness.redis_server(base) as port:
                found += on_slurm.slurm_figures(
                    base / "slurm", f"redis://127.0.0.1:{port}/5", sizes, NOTES
                )
        if "h" in groups:
            with step("h"), harness.redis_server(base) as port:
                found += million.million_figures(
                    base / "million", f"redis://127.0.0.1:{port}/6", sizes
                )
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    result = {
        "started_at": started.isoformat(),
        "seconds": time.perf_counter() - begun,
        "quick": args.quick,
        "smoke": args.smoke,
        "sizes": sizes.__dict__,
        "machine": {**machine(), "load_average_before": load_before},
        "step_seconds": STEP_SECONDS,
        "notes": NOTES,
        "figures": [figure.as_dict() for figure in found],
    }
    lines = [f"not measured: {note}" for note in NOTES]
    report(result, found, args.output / f"{started:%Y%m%dT%H%M%SZ}{label}.json", lines)
    if args.keep:
        print(f"homes and logs kept in {base}")
    return 0


def report(result: dict[str, Any], found: list[Figure], path: Path, lines: list[str]) -> None:
    """Write a run's results to ``path`` and print them: the table, ``lines``, the load."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    console = Console()
    console.print(table(found))
    for line in lines:
        console.print(line, markup=False)
    before = result["machine"]["load_average_before"]
    console.print(f"load average {before} before, {os.getloadavg()} after; written {path}")


if __name__ == "__main__":
    sys.exit(main())
