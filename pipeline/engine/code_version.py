"""The code that runs a node's algorithm (Ziggy's build info, per attempt): for a Python
step, the distribution that provides its module (name and version) and, for a module in
a git working tree, the commit and whether the tree was modified; for an executable, its
SHA-256 and, in a git working tree, the commit; and this product's own version.

Read where an attempt first runs (``record``) and where a restart is previewed, and
compared (``differences``): a restart whose code differs from the attempt it continues
says so. Each answer is kept for ``CACHE_SECONDS`` per process, while the files that
would show a change are unchanged: a worker starts many attempts of the same few nodes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.machinery
import importlib.metadata
import subprocess
import sys
import time
from collections.abc import Sequence
from functools import cache
from pathlib import Path
from typing import Any

from pipeline import __version__

#: How long a process trusts what it found for one algorithm (seconds), while neither its
#: file nor its git working tree's index and HEAD changed (``_stamp``).
CACHE_SECONDS = 10.0
#: A git command's deadline (seconds): a hung file system must not hold a worker.
GIT_TIMEOUT = 5.0

_found: dict[Any, tuple[float, Any, dict[str, Any]]] = {}


def of(
    algorithm: str | dict[str, Any], python_path: Sequence[str] = (), fresh: bool = False
) -> dict[str, Any]:
    """The code version of a node's algorithm (``Node.algorithm`` as dumped to JSON);
    ``fresh``: looked at now, whatever this process found before (a restart's)."""
    key = (str(algorithm), tuple(python_path))
    if isinstance(algorithm, dict):
        origin: Path | None = Path(algorithm["executable"])
    else:
        origin = _origin(algorithm.partition(":")[0].split(".")[0], list(python_path))
    stamp = _stamp(origin)
    now = time.monotonic()
    kept = _found.get(key)
    if not fresh and kept is not None and now - kept[0] < CACHE_SECONDS and kept[1] == stamp:
        return kept[2]
    if isinstance(algorithm, dict):
        found = _executable(Path(algorithm["executable"]))
    else:
        found = _python(algorithm, origin)
    found["product"] = product_version()
    _found[key] = (now, stamp, found)
    return found


def _origin(top: str, python_path: list[str]) -> Path | None:
    """The file a top-level module is loaded from (a package's ``__init__.py``)."""
    spec = importlib.machinery.PathFinder.find_spec(top, [*python_path, *sys.path])
    return Path(spec.origin) if spec is not None and spec.origin else None


def _stamp(origin: Path | None) -> tuple[Any, ...]:
    """What changes when the code may have: the file's, and its git tree's index and HEAD's,
    modification times and sizes."""
    if origin is None:
        return ()
    files = [origin]
    for directory in origin.parents:
        if (directory / ".git").exists():
            git = directory / ".git"
            files += [git / "index", git / "HEAD", git / "logs" / "HEAD"]
            break
    stamps = []
    for file in files:
        try:
            status = file.stat()
            stamps.append((status.st_mtime_ns, status.st_size))
        except OSError:
            stamps.append(None)
    return tuple(stamps)


def product_version() -> str:
    return __version__


def _python(reference: str, origin: Path | None) -> dict[str, Any]:
    module = reference.partition(":")[0]
    top = module.split(".")[0]
    found: dict[str, Any] = {"module": module}
    distribution = _distributions().get(top)
    if distribution:
        found["distribution"] = distribution
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            found["version"] = importlib.metadata.version(distribution)
    if origin is not None:
        found.update(_git(origin.parent))
    return found


@cache
def _distributions() -> dict[str, str]:
    """Each top-level module mapped to the (first) distribution that provides it."""
    return {top: names[0] for top, names in importlib.metadata.packages_distributions().items()}


def _executable(path: Path) -> dict[str, Any]:
    found: dict[str, Any] = {"executable": str(path)}
    try:
        digest = hashlib.sha256()
        with path.open("rb") as reader:
            while chunk := reader.read(1 << 20):
                digest.update(chunk)
        found["sha256"] = digest.hexdigest()
    except OSError as exc:
        found["sha256"] = ""
        found["problem"] = f"cannot read: {exc.strerror}"
    found.update(_git(path.parent))
    return found


def _git(directory: Path) -> dict[str, Any]:
    """The commit of the git working tree holding ``directory`` and whether its tracked
    files were modified since; nothing outside a working tree (or without git)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
        )
        if commit.returncode != 0:
            return {}
        status = subprocess.run(
            ["git", "-C", str(directory), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=GIT_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired):
        return {}
    return {"git_commit": commit.stdout.strip(), "git_modified": bool(status.stdout.strip())}


def describe(code: dict[str, Any]) -> str:
    """One line an operator reads: ``celery-pipeline 0.1.0, git 1a2b3c4d (modified)``."""
    if not code:
        return "not recorded"
    parts = []
    if "distribution" in code:
        parts.append(f"{code['distribution']} {code.get('version', '?')}")
    elif "module" in code:
        parts.append(f"module {code['module']}")
    if "executable" in code:
        parts.append(f"{Path(code['executable']).name} sha256 {code.get('sha256', '')[:12]}")
    if "git_commit" in code:
        parts.append(
            f"git {code['git_commit'][:10]}" + (" (modified)" if code.get("git_modified") else "")
        )
    parts.append(f"pipeline {code.get('product', '?')}")
    return ", ".join(parts)


#: What tells two code versions apart (the product's version is said too).
COMPARED = ("distribution", "version", "sha256", "git_commit", "git_modified", "product")


def differences(before: dict[str, Any], now: dict[str, Any]) -> str:
    """Why ``now`` is other code than ``before`` ("" when it is the same)."""
    if not before:
        return ""
    changed = [key for key in COMPARED if before.get(key) != now.get(key)]
    if not changed:
        return ""
    return f"code changed: {describe(before)} -> {describe(now)}"
