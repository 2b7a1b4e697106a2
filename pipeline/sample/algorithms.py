"""The sample pipeline's algorithms, modelled on Ziggy's sample: each runs in its subtask
directory, reads its inputs there and writes its outputs there."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.domain.context import SubtaskContext

#: permuter's fixed shuffle of colour channels: new R, G, B = old B, R, G.
CHANNEL_ORDER = [2, 0, 1]


def _read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def _write(array: np.ndarray, path: Path) -> None:
    Image.fromarray(array.astype(np.uint8)).save(path)


def _pause(ctx: SubtaskContext) -> None:
    seconds = float(ctx.parameters.get("execution_pause_seconds", 0))
    if seconds > 0:
        time.sleep(seconds)


def permuter(ctx: SubtaskContext) -> None:
    """Shuffle the colour channels of one image; subtask 0 fails on request."""
    names = [path.name for path in ctx.inputs]
    print(f"permuter: subtask {ctx.index} of {ctx.unit_of_work}, inputs {names}")
    _pause(ctx)
    if ctx.index == 0 and ctx.parameters.get("throw_exception_subtask_0"):
        raise RuntimeError("subtask 0 failed on purpose (throw_exception_subtask_0 = true)")
    if ctx.index == 1 and not ctx.parameters.get("produce_output_subtask_1", True):
        print("permuter: producing no output (produce_output_subtask_1 = false)")
        return
    for path in ctx.inputs:
        _write(_read(path)[..., CHANNEL_ORDER], ctx.directory / f"{path.stem}-perm.png")


def flip(ctx: SubtaskContext) -> None:
    """Write left-right and up-down flipped copies of one image."""
    _pause(ctx)
    for path in ctx.inputs:
        image = _read(path)
        _write(np.fliplr(image), ctx.directory / f"{path.stem}-lr.png")
        _write(np.flipud(image), ctx.directory / f"{path.stem}-ud.png")


def averaging(ctx: SubtaskContext) -> None:
    """Average every flipped image of a set into one image (rounded to whole values)."""
    _pause(ctx)
    stack = np.stack([_read(path).astype(np.float64) for path in ctx.inputs])
    print(f"averaging: {len(ctx.inputs)} images of {ctx.unit_of_work}")
    _write(np.rint(stack.mean(axis=0)), ctx.directory / "averaged-image.png")
