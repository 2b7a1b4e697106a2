"""The sample datastore: two sets of four small RGB images with known pixel values."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
from PIL import Image

SETS = ("set-1", "set-2")
#: The data file type of the sample's input images.
RAW_IMAGE = "raw_image"
IMAGES_PER_SET = 4
#: Height, width, channels of every sample image.
SHAPE = (12, 16, 3)


def pixels(set_number: int, image_number: int) -> np.ndarray:
    """Deterministic pixel values, different for every image and every channel."""
    y, x, c = np.indices(SHAPE)
    return ((set_number * 50 + image_number * 20 + x * 7 + y * 3 + c * 60) % 256).astype(np.uint8)


def raw_image_path(datastore: Path, set_name: str, image_number: int) -> Path:
    return datastore / set_name / "L0" / f"nasa-logo-file-{image_number}.png"


def write_sample_set(directory: Path, set_number: int) -> Path:
    """Write one set's input images into ``directory`` with a manifest in ``sha256sum``
    format, as a data provider would deliver them; the manifest's path."""
    lines = []
    for image_number in range(IMAGES_PER_SET):
        path = directory / f"nasa-logo-file-{image_number}.png"
        Image.fromarray(pixels(set_number, image_number)).save(path)
        lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {path.name}\n")
    manifest = directory / f"{SETS[set_number - 1]}.sha256"
    manifest.write_text("".join(lines))
    return manifest
