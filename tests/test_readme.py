"""README.md's walkthrough is a test, as docs/tutorial.md is: the demo step by step and
Ziggy's failed task, restarted, run in order in one bash shell on a fresh cluster, exactly
as written (the conventions are in the comment at its top and in
``tests/runnable_docs.py``). It fails when the README and the product disagree."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.runnable_docs import Block, blocks, expected_lines, marker, missing_lines, run_as_written
from tests.support import REPO

README = REPO / "README.md"


def test_the_readme_blocks_recognised() -> None:
    """The two commands at the top are shown, not run; the walkthrough runs, with the
    seed's scenario in it: the error flag, the counts, both restarts."""
    found = blocks(README.read_text())
    [setup] = [block for block in found if block.words == ["sh", "setup"]]
    assert setup.text.startswith("make demo") and "make test" in setup.text
    assert setup is found[0], "the two commands come first"
    commands = "".join(block.text for block in found if block.runs)
    for command in (
        "pipeline params set algorithm throw_exception_subtask_0=true",
        "pipeline restart 7 --mode resubmit",
        "pipeline restart --instance 2 --mode resume-current-step",
    ):
        assert command in commands
    shown = expected_lines(found)
    assert "instance 2 ERRORS_STALLED" in shown and "instance 2 COMPLETED" in shown
    assert any("ERROR - ALGORITHM_COMPLETE │ 3/4 (1)" in line for line in shown)


def test_an_output_line_is_looked_for_in_what_ran_since_the_previous_output() -> None:
    """The runner's own rules: a line printed before the previous output block does not
    count again, and a … stands for any text within one line."""
    shown = [Block("text output", "instance 2 ERRORS_STALLED\n", 10)]
    shown.append(Block("text output", "instance 2 ERRORS_STALLED\nstate … 3/4 (1)\n", 20))
    first, second = "instance 2 ERRORS_STALLED\n", "state COMPLETE  subtasks 3/4 (1)\n"
    stdout = f"{first}\n{marker(0)}\n{second}\n{marker(1)}\n"
    assert missing_lines(shown, stdout) == ["line 20: instance 2 ERRORS_STALLED"]
    assert missing_lines(shown, stdout.replace("subtasks 3/4", "subtasks\n3/4")) == [
        "line 20: instance 2 ERRORS_STALLED",
        "line 20: state … 3/4 (1)",
    ]
    stopped = f"{first}\n{marker(0)}\n"  # the script failed before the second block
    assert len(missing_lines(shown, stopped)) == 2


@pytest.mark.e2e
def test_the_readme_walkthrough_runs_as_written(tmp_path: Path) -> None:
    run_as_written(README, tmp_path, home=tmp_path / ".pipeline")
