"""The algorithms the benchmark pipelines run: nothing at all, so only overhead is measured."""

from __future__ import annotations

from pipeline.domain.context import SubtaskContext


def noop(ctx: SubtaskContext) -> None:
    """Do nothing: the figure is the pipeline's own cost per subtask."""


def fail(ctx: SubtaskContext) -> None:
    """Always fail, so an instance ends with failed tasks to restart."""
    raise RuntimeError("failing on purpose (benchmark)")


def write_one(ctx: SubtaskContext) -> None:
    """Write one small file named after the subtask's input (the ledger figure's output)."""
    for path in ctx.inputs:
        (ctx.directory / f"{path.stem}.out").write_bytes(path.name.encode())
