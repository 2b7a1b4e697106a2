"""Figure g: a node's subtasks through a real one-host Slurm (``tests/slurm.py``, the tests'
own) beside the same subtasks on the Celery workers, and what one task pays on Slurm for
its job array's submission and monitoring.

Both sides run in one cluster, one after the other, on the same inputs: ``bench-throughput``
and ``bench-latency`` on the workers, ``bench-slurm`` and ``bench-slurm-latency``
(``bench/pipelines/slurm/``) as job arrays. The cluster's reconciler, which follows every
job with one ``squeue`` a cycle, runs each ``RECONCILE_INTERVAL`` seconds: a job's end is
seen within one interval. Where Slurm cannot start (not installed, munge refusing), the
figure is not measured and the run says why.
"""

from __future__ import annotations

import statistics
import subprocess
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench import figures, harness
from bench.figures import Figure, Sizes
from pipeline.domain.words import counted
from tests.slurm import SlurmUnavailable, one_host_slurm

#: Seconds between the reconciler's cycles in figure g's cluster.
RECONCILE_INTERVAL = 1.0
#: The job name figure g's jobs share.
JOB_NAME = "pipeline-bench"
#: The Slurm side's definitions, imported by figure g's cluster alone.
PIPELINES = harness.DEFINITIONS / "slurm"


def slurm_figures(base: Path, broker: str, sizes: Sizes, notes: list[str]) -> list[Figure]:
    """Figure g's two rows, or none (and a note) where Slurm does not start."""
    base.mkdir(parents=True)
    with ExitStack() as stack:
        try:
            slurm = stack.enter_context(one_host_slurm())
        except (SlurmUnavailable, subprocess.SubprocessError, AssertionError, OSError) as exc:
            notes.append(f"g: no Slurm could start here ({exc})")
            return []
        env = {
            "SLURM_CONF": str(slurm.conf),
            "PIPELINE_RECONCILE_INTERVAL": str(RECONCILE_INTERVAL),
            "PIPELINE_BATCH_JOB_NAME": JOB_NAME,
        }
        cluster = stack.enter_context(harness.pipeline_cluster(base, broker, extra=env))
        cluster.cli("definitions", "import", *map(str, sorted(PIPELINES.glob("*.yaml"))))
        figures.write_inputs(cluster.datastore / "slurm" / "many", sizes.slurm_subtasks)
        figures.write_inputs(cluster.datastore / "slurm" / "one", 1)
        reader = figures.StateReader()
        return [
            throughput(reader, sizes.slurm_subtasks),
            overhead(reader, sizes.slurm_task_runs),
        ]


def throughput(reader: figures.StateReader, count: int) -> Figure:
    """Subtasks per second, submit to COMPLETED, through Slurm beside the workers."""
    _, on_workers = figures.run_instance(reader, "bench-throughput", poll=0.05)
    instance, on_slurm = figures.run_instance(reader, "bench-slurm", poll=0.05)
    jobs = instance_jobs(instance)
    elements = counted(sum(job.elements for job in jobs), "element")
    arrays = f"{counted(len(jobs), 'job array')} of {elements}"
    return Figure(
        f"g. Slurm throughput, {count} no-op subtasks in {arrays}",
        count / on_slurm,
        "subtasks/s",
        count / on_workers,
        "the same subtasks on the Celery workers",
        True,
        None,
        {"seconds": on_slurm, "workers_seconds": on_workers, "instance": instance},
    )


def overhead(reader: figures.StateReader, runs: int) -> Figure:
    """Seconds from submit to COMPLETED of a task of one no-op subtask on Slurm beside the
    workers (median of ``runs``): the difference is what a task pays for its job array's
    submission (``sbatch``) and monitoring (the reconciler's cycles), and Slurm's own
    start of the job."""
    on_workers = [figures.run_instance(reader, "bench-latency", 0.01)[1] for _ in range(runs)]
    on_slurm = []
    submissions: list[float] = []
    for _ in range(runs):
        instance, seconds = figures.run_instance(reader, "bench-slurm-latency", 0.01)
        on_slurm.append(seconds)
        submissions += [
            (job.submitted_at - job.created_at).total_seconds()
            for job in instance_jobs(instance)
            if job.submitted_at is not None
        ]
    median, workers_median = statistics.median(on_slurm), statistics.median(on_workers)
    details: dict[str, Any] = {
        "runs": runs,
        "overhead_seconds": median - workers_median,
        "submission_seconds_median": statistics.median(submissions),
        "reconcile_interval": RECONCILE_INTERVAL,
        "seconds": on_slurm,
        "workers_seconds": on_workers,
    }
    return Figure(
        "g. Slurm per-task overhead, submit to COMPLETED of one no-op subtask",
        median,
        "s",
        workers_median,
        "the same task on the Celery workers",
        False,
        None,
        details,
    )


def instance_jobs(instance: int) -> list[Any]:
    """The job arrays of the instance's tasks."""
    from sqlalchemy import select

    from pipeline.database import transaction
    from pipeline.domain.models import BatchJob, Task

    with transaction() as session:
        found = session.scalars(
            select(BatchJob)
            .join(Task, Task.id == BatchJob.task_id)
            .where(Task.instance_id == instance)
        )
        jobs = list(found)
        session.expunge_all()
        return jobs
