"""A batch system in this process's memory (``BatchSystem``), for the fast tests: jobs are
queued as submitted, and run when told (``run``), each element through the same entry
point a compute node runs (``batch_element.run_element``); an element can be ended without
running (cancelled by an administrator, killed at its walltime). It answers queries as a
controller does, and counts them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from pipeline.engine import batch_element
from pipeline.engine.batch_system import ArrayRequest, BatchUnreachable, JobStatus


@dataclass
class MemoryJob:
    job_id: str
    request: ArrayRequest
    #: Each element's state (Slurm's words) and elapsed seconds.
    states: list[str] = field(default_factory=list)
    elapsed: list[float] = field(default_factory=list)


class MemoryBatchSystem:
    """Jobs kept in memory, run on demand (module docstring)."""

    name = "slurm"

    def __init__(self) -> None:
        self.jobs: dict[str, MemoryJob] = {}
        self.queries = 0
        #: Set to make the controller stop answering.
        self.down = False

    def submit_array(self, request: ArrayRequest) -> str:
        self._answer()
        job_id = str(len(self.jobs) + 1)
        self.jobs[job_id] = MemoryJob(
            job_id, request, ["PENDING"] * request.elements, [0.0] * request.elements
        )
        return job_id

    def query(self, name: str) -> list[JobStatus]:
        self._answer()
        self.queries += 1
        return [
            JobStatus(job_id, element, state, job.request.comment, elapsed=elapsed)
            for job_id, job in self.jobs.items()
            if job.request.name == name
            for element, (state, elapsed) in enumerate(zip(job.states, job.elapsed, strict=True))
        ]

    def cancel(self, job_ids: Sequence[str]) -> None:
        self._answer()
        for job_id in job_ids:
            self.end(job_id, "CANCELLED")

    def answers(self) -> str:
        self._answer()
        return "in memory: UP"

    def run(self, job_id: str | None = None, elapsed: float = 60.0) -> int:
        """Run the pending elements of a job (None: of every job), each said to take
        ``elapsed`` seconds; how many ran."""
        ran = 0
        for job in self.jobs.values():
            if job_id is not None and job.job_id != job_id:
                continue
            manifest = job.request.directory / batch_element.MANIFEST
            for element, state in enumerate(job.states):
                if state == "PENDING":
                    batch_element.run_element(manifest, element)
                    job.states[element], job.elapsed[element] = "COMPLETED", elapsed
                    ran += 1
        return ran

    def end(self, job_id: str, state: str, elements: Sequence[int] | None = None) -> None:
        """End the job's pending elements (or these) without running them, as ``state``."""
        job = self.jobs[job_id]
        for element in elements if elements is not None else range(len(job.states)):
            if job.states[element] == "PENDING":
                job.states[element] = state

    def _answer(self) -> None:
        if self.down:
            raise BatchUnreachable("slurm: squeue: Unable to contact slurm controller")
