"""One element of a job array, on a compute node: ``python -m pipeline.engine.batch_element
MANIFEST ELEMENT``.

A compute node reaches neither the broker nor the database, only the shared file system:
the job's manifest (written by the head before it submitted the job) says which subtasks
each element runs and everything the runner needs; the element runs them one after
another with the same runner, timeout and log as a worker (``runner.run_many``), and
writes each outcome to a file of its own as soon as it ends (written whole, then
renamed: the monitor never reads half an outcome). The head's monitor reads them
(``pipeline.engine.batch``). An element killed midway (cancelled, at its walltime) leaves
the outcomes of the subtasks it finished; the rest have none, which the monitor sees. The
subtask running then has none either, though the batch system's signal may reach its
algorithm's process before the element's: ended from outside, it did not fail, and the
monitor runs it again or fails it as ``batch.lost_subtasks`` says.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from pipeline.domain.context import SubtaskContext
from pipeline.engine import runner
from pipeline.engine.runner import SubtaskOutcome

#: The manifest of a job, in its directory.
MANIFEST = "manifest.json"
#: Where the outcomes go, in the job's directory.
OUTCOMES = "outcomes"
#: What a batch system ends a job's processes with.
ENDING_SIGNALS = (signal.SIGTERM, signal.SIGKILL)


def outcome_path(job_dir: Path, index: int, number: int) -> Path:
    """The outcome file of a subtask's dispatch ``number``."""
    return job_dir / OUTCOMES / f"{index}.{number}.json"


def read_outcome(path: Path) -> SubtaskOutcome | None:
    """A subtask's outcome as its element wrote it; None if there is none (yet)."""
    try:
        written = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:  # written by hand, or a disk failing
        return SubtaskOutcome(False, f"its outcome file cannot be read: {exc}")
    return SubtaskOutcome(**written["outcome"])


def write_manifest(job_dir: Path, manifest: dict[str, Any]) -> Path:
    """Write a job's manifest (see the module docstring) into its new directory."""
    (job_dir / OUTCOMES).mkdir(parents=True, exist_ok=True)
    path = job_dir / MANIFEST
    path.write_text(json.dumps(manifest))
    return path


def run_element(manifest_path: Path, element: int) -> int:
    """Run the element's subtasks (see the module docstring); how many it ran."""
    manifest = json.loads(manifest_path.read_text())
    job_dir = manifest_path.parent
    task_dir = Path(manifest["task_dir"])
    assigned = manifest["elements"][element]
    contexts = []
    for index, _number, inputs in assigned:
        directory = task_dir / manifest["subtask_dir_format"].format(index=index)
        contexts.append(
            SubtaskContext(
                directory=directory,
                inputs=[directory / name for name in inputs],
                parameters=manifest["parameters"],
                index=index,
                unit_of_work=manifest["unit_of_work"],
                node=manifest["node"],
                models={k: directory / name for k, name in manifest.get("models", {}).items()},
                parameter_sets=manifest.get("parameter_sets", {}),
                memory_limit=runner.limit_read(manifest.get("memory_limit")),
                **manifest.get("event", {}),
            )
        )
    algorithm, timeout, python_path = (manifest[k] for k in ("algorithm", "timeout", "python_path"))
    calls = manifest.get("calls", "context")
    with closing(
        runner.run_many(algorithm, contexts, timeout, python_path=python_path, calls=calls)
    ) as ran:
        return _write_outcomes(job_dir, assigned, ran)


def _write_outcomes(
    job_dir: Path, assigned: list[list[Any]], outcomes: Iterator[SubtaskOutcome]
) -> int:
    """Write each subtask's outcome as it ends (module docstring); how many."""
    host = socket.gethostname()
    started = _now()
    ran = 0
    for (index, number, _inputs), outcome in zip(assigned, outcomes, strict=False):
        if ended_from_outside(outcome):
            break  # this element is being ended: the monitor decides about the rest
        finished = _now()
        record = {"outcome": asdict(outcome), "host": host, "started": started, "ended": finished}
        path = outcome_path(job_dir, index, number)
        partial = path.with_suffix(".partial")
        partial.write_text(json.dumps(record))
        os.replace(partial, path)
        started, ran = finished, ran + 1
    return ran


def ended_from_outside(outcome: SubtaskOutcome) -> bool:
    """Whether the subtask's run was ended by what ends the element (the batch system's
    SIGTERM, then SIGKILL, at its walltime, an ``scancel``, a node going down): no outcome
    of the subtask's own, so none is written for it."""
    signals = tuple(f"killed by signal {int(number)}" for number in ENDING_SIGNALS)
    return (
        not outcome.ok
        and not outcome.timed_out
        and outcome.error.startswith((runner.GOING_DOWN, *signals))
    )


def _now() -> str:
    return datetime.now(UTC).isoformat()


def main(arguments: list[str]) -> int:
    if len(arguments) != 2 or not arguments[1].isdigit():
        print("usage: python -m pipeline.engine.batch_element MANIFEST ELEMENT", file=sys.stderr)
        return 2
    try:
        run_element(Path(arguments[0]), int(arguments[1]))
    except (OSError, ValueError, KeyError, IndexError) as exc:
        print(f"error: element {arguments[1]} of {arguments[0]}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
