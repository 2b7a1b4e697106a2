"""Ziggy's XML manifests and acknowledgements: how a Ziggy delivery says what it holds.

A manifest (``NAME-manifest.xml`` at the top of the delivery) names a ``datasetId``, a
``checksumType`` (SHA1, SHA256, SHA512 or MD5), a ``fileCount`` and, per file, its path
relative to the delivery, its ``size`` and its ``checksum``. Receipt checks every file
against it (``read``, then ``check`` on the bytes actually copied) and answers with an
acknowledgement beside it (``NAME-manifest-ack.xml``): the overall ``transferStatus`` and,
per file, its transfer status (present or absent) and validation status (valid or
invalid). ``write`` makes a manifest of a directory (Ziggy's ``generate-manifest``).
"""

from __future__ import annotations

import hashlib
import os
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

from pipeline.domain.ziggy import parse, xml_attributes
from pipeline.engine.deliveries import ZIGGY_MANIFEST_SUFFIX
from pipeline.errors import InvalidInput

#: A Ziggy manifest's name ends so; its acknowledgement's, so.
SUFFIX = ZIGGY_MANIFEST_SUFFIX
ACK_SUFFIX = "-manifest-ack.xml"
#: Ziggy's checksum types, as ``hashlib`` names them.
CHECKSUMS = {"MD5": "md5", "SHA1": "sha1", "SHA256": "sha256", "SHA512": "sha512"}
#: The dataset id a manifest may use again and again (Ziggy's rule).
REUSABLE_DATASET = 0
_CHUNK = 1 << 20
XML_DECLARATION = '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>'


@dataclass(frozen=True)
class Entry:
    size: int
    checksum: str


@dataclass(frozen=True)
class Manifest:
    path: Path
    dataset_id: int
    checksum_type: str
    files: dict[str, Entry]


def is_manifest(path: Path) -> bool:
    return path.name.endswith(SUFFIX)


def read(path: Path, delivered: list[str]) -> Manifest:
    """The manifest at ``path``; refused, in one line, unless well formed and listing
    exactly the ``delivered`` paths, each once, ``fileCount`` of them."""
    root = parse(path, "manifest", "a Ziggy manifest's")
    kind = root.get("checksumType", "")
    if kind not in CHECKSUMS:
        raise InvalidInput(f"{path}: checksumType {kind!r} is not one of {', '.join(CHECKSUMS)}")
    dataset_id = _whole(path, root, "datasetId")
    files: dict[str, Entry] = {}
    for element in root:
        if element.tag != "file":
            raise InvalidInput(f"{path}: <{element.tag}>: a manifest lists <file> elements")
        name = element.get("name", "")
        if not name or name.startswith("/") or ".." in name.split("/"):
            raise InvalidInput(f"{path}: file {name!r}: names a file outside the delivery")
        if name in files:
            raise InvalidInput(f"{path}: {name}: listed twice")
        checksum = element.get("checksum", "").strip().lower()
        if not checksum:
            raise InvalidInput(f"{path}: {name}: no checksum")
        files[name] = Entry(_whole(path, element, "size"), checksum)
    count = _whole(path, root, "fileCount")
    if count != len(files):
        raise InvalidInput(f"{path}: fileCount {count}, and {len(files)} files listed")
    missing = sorted(set(files) - set(delivered))
    if missing:
        raise InvalidInput(f"{missing[0]}: in the manifest but not in the delivery")
    extra = sorted(set(delivered) - set(files))
    if extra:
        raise InvalidInput(f"{extra[0]}: in the delivery but not in the manifest")
    return Manifest(path, dataset_id, kind, files)


def _whole(path: Path, element: ElementTree.Element, name: str) -> int:
    text = element.get(name, "").strip()
    if not text.isdigit():
        raise InvalidInput(f"{path}: <{element.tag}> {name}={text!r} is not a whole number")
    return int(text)


def check(manifest: Manifest, name: str, copy: Path, size: int, sha256: str) -> None:
    """Refuse the copy of ``name`` (at ``copy``, ``size`` bytes, its SHA-256 known) unless
    its size and checksum are the manifest's."""
    entry = manifest.files[name]
    if size != entry.size:
        raise InvalidInput(f"{name}: {size} bytes, the manifest says {entry.size}")
    kind = manifest.checksum_type
    actual = sha256 if kind == "SHA256" else digest(copy, kind)
    if actual != entry.checksum:
        raise InvalidInput(f"{name}: {manifest.checksum_type} checksum differs from the manifest's")


def digest(path: Path, checksum_type: str) -> str:
    found = hashlib.new(CHECKSUMS[checksum_type])
    with path.open("rb") as file:
        while chunk := file.read(_CHUNK):
            found.update(chunk)
    return found.hexdigest()


def acknowledge(manifest: Manifest) -> Path:
    """Write the acknowledgement of a manifest whose every file was received and valid."""
    path = manifest.path.with_name(manifest.path.name[: -len(SUFFIX)] + ACK_SUFFIX)
    head = {
        "datasetId": manifest.dataset_id,
        "checksumType": manifest.checksum_type,
        "fileCount": len(manifest.files),
        "transferStatus": "valid",
    }
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
        f"<acknowledgement{xml_attributes(head)}>",
    ]
    for name, entry in manifest.files.items():
        attributes = {
            "name": name,
            "size": entry.size,
            "checksum": entry.checksum,
            "transferStatus": "present",
            "validationStatus": "valid",
        }
        lines.append(f"    <file{xml_attributes(attributes)}/>")
    path.write_text("\n".join([*lines, "</acknowledgement>"]) + "\n")
    return path


def write(directory: Path, dataset_id: int, checksum_type: str = "SHA1") -> Path:
    """Write ``DIRNAME-manifest.xml`` at the top of ``directory`` listing every file under
    it (Ziggy's ``generate-manifest``); refused if one is there already."""
    if not directory.is_dir():
        raise InvalidInput(f"{directory}: not a directory")
    if checksum_type not in CHECKSUMS:
        raise InvalidInput(f"checksum {checksum_type!r} is not one of {', '.join(CHECKSUMS)}")
    path = directory / f"{directory.resolve().name}{SUFFIX}"
    if path.exists():
        raise InvalidInput(f"{path}: exists already")
    names = []
    for folder, subfolders, files in os.walk(directory):
        subfolders.sort()
        names += [(Path(folder) / f).relative_to(directory).as_posix() for f in sorted(files)]
    head = {"datasetId": dataset_id, "checksumType": checksum_type, "fileCount": len(names)}
    lines = [
        '<?xml version="1.0" encoding="UTF-8" standalone="yes"?>',
        f"<manifest{xml_attributes(head)}>",
    ]
    for name in names:
        file = directory / name
        attributes = {
            "name": name,
            "size": file.stat().st_size,
            "checksum": digest(file, checksum_type),
        }
        lines.append(f"    <file{xml_attributes(attributes)}/>")
    path.write_text("\n".join([*lines, "</manifest>"]) + "\n")
    return path
