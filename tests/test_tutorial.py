"""docs/tutorial.md is a test: its blocks run in order, in one bash shell, in a fresh
directory outside the repository, exactly as written (the conventions are in the comment
at its top). It fails when the doc and the product disagree: a command that fails, a
file the product refuses, an output line the doc shows that the run did not print."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import REPO, clean_env

TUTORIAL = REPO / "docs" / "tutorial.md"
#: A fenced block: its info string and its text.
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: The whole run's deadline; it takes well under a minute on an idle machine.
RUN_SECONDS = 600


@dataclass(frozen=True)
class Block:
    info: str
    text: str
    line: int

    @property
    def words(self) -> list[str]:
        return self.info.split()

    @property
    def file(self) -> str | None:
        return next((w.removeprefix("file=") for w in self.words if w.startswith("file=")), None)


def blocks(markdown: str) -> list[Block]:
    """The fenced blocks, outside HTML comments, with the line each starts on."""
    visible = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group().count("\n"), markdown, flags=re.S)
    return [
        Block(m.group(1).strip(), m.group(2), visible.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(visible)
    ]


def script(found: list[Block]) -> str:
    """One bash script: ``sh`` blocks as they are, ``file=`` blocks written by heredoc."""
    parts = ["set -euo pipefail"]
    for block in found:
        where = f'echo "# docs/tutorial.md line {block.line} at $SECONDS s" >&2'
        if block.file:
            path = shlex.quote(block.file)
            parts += [
                where,
                f'mkdir -p "$(dirname {path})"',
                f"cat > {path} <<'TUTORIAL_FILE'\n{block.text}TUTORIAL_FILE",
            ]
            if block.text.startswith("#!"):
                parts.append(f"chmod +x {path}")
        elif block.words == ["sh"]:
            parts += [where, block.text]
    return "\n".join(parts) + "\n"


def expected_lines(found: list[Block]) -> list[str]:
    return [
        line.rstrip()
        for block in found
        if block.words == ["text", "output"]
        for line in block.text.splitlines()
        if line.strip()
    ]


def test_the_tutorial_blocks_recognised() -> None:
    """The conventions as the doc uses them: files, commands and outputs, none lost."""
    found = blocks(TUTORIAL.read_text())
    files = {block.file for block in found if block.file}
    assert files == {"lightcurves.yaml", "steps.py", "bin/summarize.sh"}
    assert sum(block.words == ["sh"] for block in found) >= 10
    assert "star-a: mean 6.00 electrons, 1.00 x reference" in expected_lines(found)


@pytest.mark.e2e
def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    found = blocks(TUTORIAL.read_text())
    (tmp_path / "script.sh").write_text(script(found))
    user = tmp_path / "user"
    user.mkdir()
    env = clean_env(HOME=str(user))
    # Nothing on the path but what a user has: the workers must find steps.py themselves.
    for name in ("PYTHONPATH", "COLUMNS", "PIPELINE_HOME"):
        env.pop(name, None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    home = tmp_path / "lightcurves" / ".pipeline"
    try:
        result = subprocess.run(
            ["bash", str(tmp_path / "script.sh")],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
        )
    finally:
        subprocess.run(
            ["pipeline", "cluster", "stop"],
            cwd=tmp_path,
            env={**env, "PIPELINE_HOME": str(home)},
            capture_output=True,
            timeout=120,
        )
    tail = f"\n--- stdout (end)\n{result.stdout[-4000:]}\n--- stderr (end)\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"the tutorial stopped with status {result.returncode}{tail}"
    missing = [line for line in expected_lines(found) if line not in result.stdout]
    assert not missing, f"the doc shows lines the run did not print: {missing}{tail}"
    assert not (user / ".pipeline").exists(), "the tutorial's cluster went to ~/.pipeline"
