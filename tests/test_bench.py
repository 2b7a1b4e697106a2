"""The benchmark suite runs: ``python -m bench --smoke`` (every figure at a hundredth of its
size) once, so no figure rots.

Only that every figure was produced is checked, never a timing: speed targets live in
the benchmarks (``docs/benchmarks.md``), not in tests.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm import missing
from tests.support import REPO, clean_env

#: The figure groups ``python -m bench`` measures (see bench/__main__.py): figure g where
#: a one-host Slurm can start (``make test`` installs it).
GROUPS = ("a.", "b.", "c.", "d.", "e.", "f.", "h.") + (() if missing() else ("g.",))
#: Seconds the smoke run gets on a busy two-core machine.
SMOKE_TIMEOUT = 300


@pytest.mark.e2e
@pytest.mark.postgres
@pytest.mark.xdist_group("bench")
def test_the_benchmarks_produce_every_figure(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--output", str(tmp_path)],
        cwd=REPO,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=SMOKE_TIMEOUT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [written] = tmp_path.glob("*-smoke.json")
    results = json.loads(written.read_text())
    names = [figure["name"] for figure in results["figures"]]
    for group in GROUPS:
        assert any(name.startswith(group) for name in names), f"no figure {group} in {names}"
    assert any(name.startswith("a. ledger") for name in names), names
    assert any(name.startswith("a. floor") for name in names), names
    assert any(name.startswith("a. storage") for name in names), names
    for figure in results["figures"]:
        assert figure["value"] > 0 and figure["baseline"] > 0, figure
    assert results["machine"]["cores"] and results["machine"]["load_average"]
