"""Slurm, the first ``BatchSystem``: ``sbatch`` submits a job array, one ``squeue`` call
answers for every job of the cluster (by the job name the cluster's jobs share),
``scancel`` cancels. It works from the controller's answers alone: ``sacct`` needs
accounting storage, which many sites (and a one-host Slurm) lack, and ``squeue`` keeps
an ended job for ``MinJobAge`` (300 s by default), long enough for a monitor cycle to see
how it ended.

The commands are found on ``PATH`` and read ``SLURM_CONF`` as usual; each is given
``COMMAND_TIMEOUT`` seconds (a missing configuration makes them retry for a minute).
"""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from datetime import datetime

from pipeline.engine.batch_system import ArrayRequest, BatchRefused, BatchUnreachable, JobStatus

#: Seconds a Slurm command may take before the controller counts as not answering.
COMMAND_TIMEOUT = 30.0
#: What ``squeue`` prints of each element, '|'-separated, the comment last (free text).
SQUEUE_FIELDS = ("%F", "%K", "%T", "%M", "%V", "%S", "%r", "%P", "%D", "%k")
#: What a Slurm command says when it cannot reach the controller (anything else it fails
#: with is a refusal of what it was asked: a partition that does not exist, say).
UNREACHABLE_SIGNS = (
    "Unable to contact",
    "connect failure",
    "Socket timed out",
    "Connection refused",
    "Zero Bytes were transmitted",
    "Unable to process configuration",
)
#: The script each element runs: the element's index is the command's last argument.
SCRIPT = '#!/bin/sh\nexec {command} "$SLURM_ARRAY_TASK_ID"\n'


class Slurm:
    """Slurm through its commands (module docstring)."""

    name = "slurm"

    def submit_array(self, request: ArrayRequest) -> str:
        script = request.directory / "job.sh"
        script.write_text(SCRIPT.format(command=shlex.join(request.command)))
        output = _run(["sbatch", *sbatch_arguments(request), str(script)])
        return output.strip().split(";", 1)[0]

    def query(self, name: str) -> list[JobStatus]:
        output = _run(
            [
                "squeue",
                "--noheader",
                "--array",
                "--states=all",
                f"--name={name}",
                f"--format={'|'.join(SQUEUE_FIELDS)}",
            ]
        )
        now = datetime.now()
        return [parse_squeue_line(line, now) for line in output.splitlines() if line.strip()]

    def cancel(self, job_ids: Sequence[str]) -> None:
        if job_ids:
            _run(["scancel", *job_ids])

    def answers(self) -> str:
        return _run(["scontrol", "ping"]).strip().splitlines()[-1]


def sbatch_arguments(request: ArrayRequest) -> list[str]:
    """``sbatch``'s options for the request (the script comes after them)."""
    last = request.elements - 1
    array = f"0-{last}" + (f"%{request.max_running}" if request.max_running else "")
    arguments = [
        "--parsable",
        f"--job-name={request.name}",
        f"--comment={request.comment}",
        f"--array={array}",
        f"--chdir={request.directory}",
        f"--output={request.directory}/element-%a.log",
        f"--time={request.walltime}",
        f"--cpus-per-task={request.cores}",
        f"--mem={max(1, round(request.memory_gb * 1024))}M",
    ]
    if request.partition:
        arguments.append(f"--partition={request.partition}")
    if request.account:
        arguments.append(f"--account={request.account}")
    return arguments + list(request.options)


def parse_squeue_line(line: str, now: datetime) -> JobStatus:
    """One line of ``squeue`` in ``SQUEUE_FIELDS``' format."""
    job_id, element, state, used, submitted, started, reason, partition, nodes, comment = (
        line.split("|", len(SQUEUE_FIELDS) - 1)
    )
    submit_time, start_time = _time(submitted), _time(started)
    queued = 0.0
    if submit_time is not None:
        queued = max(0.0, ((start_time or now) - submit_time).total_seconds())
    return JobStatus(
        job_id=job_id.strip(),
        element=int(element) if element.strip().isdigit() else None,
        state=state.strip().split()[0] if state.strip() else "UNKNOWN",
        comment=comment.strip(),
        elapsed=elapsed_seconds(used),
        queued=queued,
        reason=reason.strip(),
        partition=partition.strip(),
        nodes=int(nodes) if nodes.strip().isdigit() else 1,
    )


def elapsed_seconds(text: str) -> float:
    """Slurm's ``[D-][HH:]MM:SS`` as seconds (0 for what is not a time: ``INVALID``)."""
    text = text.strip()
    days = 0
    if "-" in text:
        day_text, text = text.split("-", 1)
        days = int(day_text) if day_text.isdigit() else 0
    parts = text.split(":")
    if not all(part.isdigit() for part in parts) or not 1 <= len(parts) <= 3:
        return 0.0
    seconds = 0
    for part in parts:
        seconds = seconds * 60 + int(part)
    return float(days * 86400 + seconds)


def _time(text: str) -> datetime | None:
    """Slurm's local time (``2026-12-06T16:50:55``), or None (``N/A``, ``Unknown``)."""
    try:
        return datetime.fromisoformat(text.strip())
    except ValueError:
        return None


def _run(command: list[str]) -> str:
    """A Slurm command's output; ``BatchUnreachable`` (the controller did not answer) or
    ``BatchRefused`` (it refused), with the command's last error line, if it fails."""
    try:
        done = subprocess.run(
            command, capture_output=True, text=True, timeout=COMMAND_TIMEOUT, check=False
        )
    except FileNotFoundError:
        raise BatchUnreachable(f"slurm: {command[0]} not found (is Slurm installed?)") from None
    except subprocess.TimeoutExpired:
        raise BatchUnreachable(
            f"slurm: {command[0]} did not answer in {COMMAND_TIMEOUT:g} s"
        ) from None
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines()
        why = lines[-1] if lines else f"exit status {done.returncode}"
        unreachable = any(sign in done.stderr for sign in UNREACHABLE_SIGNS)
        raise (BatchUnreachable if unreachable else BatchRefused)(f"slurm: {command[0]}: {why}")
    return done.stdout
