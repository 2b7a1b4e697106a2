"""docs/tutorial.md is a test: its blocks run in order, in one bash shell, in a fresh
directory outside the repository, exactly as written (the conventions are in the comment
at its top and in ``tests/runnable_docs.py``). It fails when the doc and the product
disagree: a command that fails, a file the product refuses, an output line the doc shows
that the run did not print."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runnable_docs import blocks, expected_lines, run_as_written
from tests.support import REPO

TUTORIAL = REPO / "docs" / "tutorial.md"


def test_the_tutorial_blocks_recognised() -> None:
    """The conventions as the doc uses them: files, commands and outputs, none lost."""
    found = blocks(TUTORIAL.read_text())
    files = {block.file for block in found if block.file}
    assert files == {"lightcurves.yaml", "steps.py", "bin/summarize.sh"}
    assert sum(block.runs for block in found) >= 10
    assert "star-a: mean 6.00 electrons, 1.00 x reference" in expected_lines(found)


@pytest.mark.e2e
def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    run_as_written(TUTORIAL, tmp_path, home=tmp_path / "lightcurves" / ".pipeline")
