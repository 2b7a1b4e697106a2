"""Deliveries waiting in the receipt directory: the units of work of Ziggy's built-in
``data-receipt`` node, and the hook that receives one as a task's marshaling.

Ziggy's two rules: files and a manifest at the top of the receipt directory are one
delivery (its unit of work is the directory's own name); otherwise each subdirectory
holding a manifest is one. What receiving means (the manifest checked, the files placed
and recorded, the directory cleared) is the operations' (``operations.delivery``): the
process that runs tasks names it with ``use_receiver``, so this layer never imports it.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from pipeline.errors import PipelineError

#: A manifest's name ends so: Ziggy's XML manifest, or this product's ``sha256sum`` one.
ZIGGY_MANIFEST_SUFFIX = "-manifest.xml"
SHA256_MANIFEST_SUFFIX = ".sha256"
#: An event's ready file: ``LABEL.READY.NAME.COUNT``, or ``READY.NAME.1`` (Ziggy's grammar).
#: It sits beside the deliveries it announces, never one of their files.
READY_FILE = re.compile(r"^(?:(?P<label>\S+)\.)?READY\.(?P<name>\S+)\.(?P<count>[0-9]+)$")

#: Receives the delivery in a directory for a pipeline, its files recorded with the
#: producer's fields (instance, task, attempt, node); the line the task's history keeps.
Receiver = Callable[[Path, str, Mapping[str, Any]], str]
_receiver: list[Receiver] = []


def use_receiver(receiver: Receiver) -> None:
    """Name what receives a delivery in this process (the workers' entry point does)."""
    _receiver[:] = [receiver]


def receive(directory: Path, pipeline: str, producer: Mapping[str, Any]) -> str:
    if not _receiver:
        raise PipelineError("this process cannot receive deliveries (no receiver named)")
    return _receiver[0](directory, pipeline, producer)


def has_manifest(directory: Path) -> bool:
    try:
        return any(
            entry.is_file() and entry.name.endswith((ZIGGY_MANIFEST_SUFFIX, SHA256_MANIFEST_SUFFIX))
            for entry in directory.iterdir()
        )
    except (FileNotFoundError, NotADirectoryError):
        return False


def waiting(receipt_dir: Path) -> list[str]:
    """The deliveries waiting in ``receipt_dir``, as units of work (Ziggy's two rules)."""
    if has_manifest(receipt_dir):
        return [receipt_dir.name]
    try:
        entries = sorted(receipt_dir.iterdir())
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [entry.name for entry in entries if entry.is_dir() and has_manifest(entry)]


def directory_of(receipt_dir: Path, unit: str) -> Path:
    """The directory of the delivery ``unit`` names (see ``waiting``)."""
    if unit == receipt_dir.name and (
        has_manifest(receipt_dir) or not (receipt_dir / unit).is_dir()
    ):
        return receipt_dir
    return receipt_dir / unit
