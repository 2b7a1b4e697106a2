"""Docs that are tests (README.md's walkthrough, docs/tutorial.md): their blocks run in
order, in one bash shell, in a fresh directory outside the repository, exactly as written.
A doc fails when it and the product disagree: a command that fails, a file the product
refuses, an output line the doc shows that the run did not print.

The conventions, which each such doc states in an HTML comment at its top:

  ```sh                 run with bash (set -euo pipefail), all blocks in one shell
  ```LANG file=PATH     written to PATH (made executable when it starts with #!)
  ```text output        every line must appear in what the blocks since the previous
                        output block printed; a … in a line stands for any text
  ```sh setup           shown, not run (the test has made the environment already)

A doc spanning several hosts (docs/worker-host.md) names the hosts of each block that runs:

  ```sh host=a,b        run on host a, then on host b, each time in a fresh bash
  ```LANG file=PATH host=a   written to PATH on host a

Other blocks are shown, not run.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.support import REPO, clean_env

#: A fenced block: its info string and its text.
FENCE = re.compile(r"^```([^\n]*)\n(.*?)^```[ \t]*$", re.MULTILINE | re.DOTALL)
#: What an output block's line may leave out, any text within the line.
ELLIPSIS = "…"
#: A whole run's deadline; a doc takes well under a minute on an idle machine.
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

    @property
    def is_output(self) -> bool:
        return self.words == ["text", "output"]

    @property
    def runs(self) -> bool:
        return self.words[:1] == ["sh"] and all(w.startswith("host=") for w in self.words[1:])

    @property
    def hosts(self) -> list[str]:
        """The hosts the block runs on or is written to, in order (``host=a,b``)."""
        named = [w.removeprefix("host=") for w in self.words if w.startswith("host=")]
        return [host for word in named for host in word.split(",")]


def blocks(markdown: str) -> list[Block]:
    """The fenced blocks, outside HTML comments, with the line each starts on."""
    visible = re.sub(r"<!--.*?-->", lambda m: "\n" * m.group().count("\n"), markdown, flags=re.S)
    return [
        Block(m.group(1).strip(), m.group(2), visible.count("\n", 0, m.start()) + 1)
        for m in FENCE.finditer(visible)
    ]


def marker(number: int) -> str:
    """The line the script prints where the doc shows its output block ``number``: what the
    blocks printed between two markers is what that block is checked against."""
    return f"@@ output block {number} @@"


def script(found: list[Block], name: str) -> str:
    """One bash script: ``sh`` blocks as they are, ``file=`` blocks written by heredoc, and
    a marker on stdout where each output block stands."""
    parts = ["set -euo pipefail"]
    outputs = 0
    for block in found:
        where = f'echo "# {name} line {block.line} at $SECONDS s" >&2'
        if block.file:
            parts += [where, *writing(block)]
        elif block.runs:
            parts += [where, block.text]
        elif block.is_output:
            parts.append(f"printf '\\n%s\\n' {shlex.quote(marker(outputs))}")
            outputs += 1
    return "\n".join(parts) + "\n"


def writing(block: Block) -> list[str]:
    """The shell lines that write a ``file=`` block to its path."""
    path = shlex.quote(str(block.file))
    lines = [f'mkdir -p "$(dirname {path})"', f"cat > {path} <<'DOC_FILE'\n{block.text}DOC_FILE"]
    return lines + ([f"chmod +x {path}"] if block.text.startswith("#!") else [])


def expected_lines(found: list[Block]) -> list[str]:
    """Every line the output blocks show, in order."""
    return [line for block in found if block.is_output for line in _lines(block)]


def _lines(block: Block) -> list[str]:
    return [line.rstrip() for line in block.text.splitlines() if line.strip()]


def _pattern(line: str) -> re.Pattern[str]:
    """A line of an output block as a search within one printed line."""
    return re.compile("[^\n]*".join(re.escape(part) for part in line.split(ELLIPSIS)))


def missing_lines(found: list[Block], stdout: str) -> list[str]:
    """The lines of each output block that the blocks before it, since the previous output
    block, did not print; each named with the doc line its block starts on."""
    outputs = [block for block in found if block.is_output]
    pieces = re.split(r"^@@ output block \d+ @@$", stdout, flags=re.MULTILINE)
    missing = []
    for number, block in enumerate(outputs):
        printed = pieces[number] if number < len(pieces) - 1 else ""
        missing += [
            f"line {block.line}: {line}"
            for line in _lines(block)
            if not _pattern(line).search(printed)
        ]
    return missing


def run_as_written(doc: Path, workdir: Path, home: Path) -> None:
    """Run ``doc``'s blocks in ``workdir`` as a user would, with nothing on the path but
    the installed ``pipeline``; fail on the first command that fails or on an output line
    the run did not print. The cluster at ``home`` (the doc's) is stopped whatever
    happens."""
    found = blocks(doc.read_text())
    name = str(doc.relative_to(REPO))
    (workdir / "script.sh").write_text(script(found, name))
    user = workdir / "user"
    user.mkdir()
    env = clean_env(HOME=str(user))
    # Nothing on the path but what a user has: the workers must find a doc's modules
    # themselves, and tables are printed as to a pipe.
    for variable in ("PYTHONPATH", "COLUMNS", "PIPELINE_HOME"):
        env.pop(variable, None)
    env["PATH"] = f"{Path(sys.executable).parent}:{env['PATH']}"
    try:
        result = subprocess.run(
            ["bash", str(workdir / "script.sh")],
            cwd=workdir,
            env=env,
            capture_output=True,
            text=True,
            timeout=RUN_SECONDS,
        )
    finally:
        subprocess.run(
            ["pipeline", "cluster", "stop"],
            cwd=workdir,
            env={**env, "PIPELINE_HOME": str(home)},
            capture_output=True,
            timeout=120,
        )
    tail = f"\n--- stdout (end)\n{result.stdout[-4000:]}\n--- stderr (end)\n{result.stderr[-4000:]}"
    assert result.returncode == 0, f"{name} stopped with status {result.returncode}{tail}"
    missing = missing_lines(found, result.stdout)
    assert not missing, f"{name} shows lines the run did not print: {missing}{tail}"
    assert not (user / ".pipeline").exists(), f"{name}'s cluster went to ~/.pipeline"


@dataclass(frozen=True)
class Shell:
    """How a doc's blocks run on one host: the command that enters it, the working
    directory there and the environment."""

    enter: list[str]
    cwd: str
    env: dict[str, str]


def run_across_hosts(doc: Path, shells: dict[str, Shell]) -> str:
    """Run ``doc``'s blocks in order, each on the hosts its ``host=`` names, each in a fresh
    bash (``set -euo pipefail``): blocks share nothing but the files they write, as commands
    typed on several machines. Fail on the first block that fails, or on an output line the
    run did not print; returns what the blocks printed."""
    found = blocks(doc.read_text())
    name = str(doc.relative_to(REPO))
    printed: list[str] = []
    outputs = 0
    deadline = time.monotonic() + RUN_SECONDS
    for block in found:
        if block.is_output:
            printed.append(f"\n{marker(outputs)}\n")
            outputs += 1
            continue
        if not block.hosts or not (block.runs or block.file):
            continue
        text = "\n".join(writing(block)) if block.file else block.text
        for host in block.hosts:
            shell = shells[host]
            result = subprocess.run(
                [
                    *shell.enter,
                    "bash",
                    "-c",
                    f"set -euo pipefail\ncd {shlex.quote(shell.cwd)}\n{text}",
                ],
                env=shell.env,
                capture_output=True,
                text=True,
                timeout=max(1.0, deadline - time.monotonic()),
            )
            printed.append(result.stdout)
            tail = f"\n--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}"
            assert result.returncode == 0, (
                f"{name} line {block.line} on {host} exited {result.returncode}{tail}"
            )
    stdout = "".join(printed)
    missing = missing_lines(found, stdout)
    assert not missing, f"{name} shows lines the run did not print: {missing}\n{stdout[-4000:]}"
    return stdout
