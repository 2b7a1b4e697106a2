"""The sample datastore: two sets of four small RGB images with known pixel values."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SETS = ("set-1", "set-2")
IMAGES_PER_SET = 4
#: Height, width, channels of every sample image.
SHAPE = (12, 16, 3)


def pixels(set_number: int, image_number: int) -> np.ndarray:
    """Deterministic pixel values, different for every image and every channel."""
    y, x, c = np.indices(SHAPE)
    return ((set_number * 50 + image_number * 20 + x * 7 + y * 3 + c * 60) % 256).astype(np.uint8)


def raw_image_path(datastore: Path, set_name: str, image_number: int) -> Path:
    return datastore / set_name / "L0" / f"nasa-logo-file-{image_number}.png"


def write_sample_datastore(datastore: Path) -> list[Path]:
    """Write the sample's input images under ``datastore``; returns the files written."""
    written = []
    for set_number, set_name in enumerate(SETS, start=1):
        for image_number in range(IMAGES_PER_SET):
            path = raw_image_path(datastore, set_name, image_number)
            if path.exists():
                continue
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels(set_number, image_number)).save(path)
            written.append(path)
    return written
