"""The pages of docs/ that do not run as written (README.md's walkthrough and
docs/tutorial.md do: ``test_readme.py``, ``test_tutorial.py``) are checked without running
anything: every ``pipeline`` command in their ``sh`` blocks is one the CLI accepts (the
command exists and its options and values are real; placeholders are not, so the pages
write real-looking values, as the comment at the top of each says); every link between
the docs leads to a file, and with an anchor to a heading; each page starts with a
paragraph saying what it is for.

Only ``cli_accepts`` knows how the CLI is built; everything else reads the pages."""

from __future__ import annotations

import contextlib
import io
import re
import shlex
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.runnable_docs import blocks
from tests.support import REPO

DOCS = REPO / "docs"
#: The pages whose commands are checked here: every page but the tutorial, which runs.
PAGES = sorted(page for page in DOCS.glob("*.md") if page.name != "tutorial.md")
#: Every page whose links must lead somewhere.
LINKED = [REPO / "README.md", *sorted(DOCS.glob("*.md"))]
#: The shells whose blocks hold commands.
SHELLS = {"sh", "bash"}
#: What a command substitution ``$(...)`` stands for in the command around it.
SUBSTITUTED = "SUBSTITUTED"
#: Words that may come before a command on its line without being the command.
PREFIXES = {"{", "}", "!", "do", "then", "else", "if", "while", "until", "time"}


def cli_accepts(argv: list[str]) -> str | None:
    """None when ``pipeline`` would accept ``argv`` (the command exists, its options are
    real, its arguments parse), else why not, in one line; nothing is run.

    The one function here that knows how the CLI is built: its parser, asked to parse."""
    from pipeline.interfaces.cli import UsageError, parse

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # --help prints
            parse(argv)
    except UsageError as wrong:
        return wrong.line
    except SystemExit as exc:  # after --help
        return None if exc.code == 0 else f"exits {exc.code}"
    return None


@dataclass(frozen=True)
class Command:
    """A ``pipeline`` command line of a page: where it is, and its arguments."""

    where: str
    argv: list[str]

    def __str__(self) -> str:
        return f"{self.where}: pipeline {shlex.join(self.argv)}"


def pipeline_commands(page: Path) -> list[Command]:
    """Every ``pipeline`` command in the page's ``sh`` blocks: one per simple command (a
    line may hold several, joined by ``&&``, ``|``, ``;`` or inside ``$(...)``), after
    variable assignments, or run in a service by ``docker compose``; lines continued with
    a backslash joined; comments left out."""
    found = []
    for block in blocks(page.read_text()):
        if not block.words or block.words[0] not in SHELLS:
            continue
        for number, line in _logical_lines(block.text):
            where = f"{page.relative_to(REPO)}:{block.line + number}"
            found += [Command(where, argv) for argv in _commands(line)]
    return found


def _logical_lines(text: str) -> list[tuple[int, str]]:
    """Lines with their continuations joined, each with its first line's offset (1: the
    block's first line)."""
    joined, start, pending = [], 0, ""
    for offset, line in enumerate(text.splitlines(), start=1):
        if not pending:
            start = offset
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append((start, pending + line))
        pending = ""
    return joined


def _commands(line: str) -> list[list[str]]:
    """The argument lists of the ``pipeline`` commands on one shell line."""
    lines = [line]
    while inner := re.search(r"\$\(([^()]*)\)", lines[0]):
        lines.append(inner.group(1))
        lines[0] = lines[0][: inner.start()] + SUBSTITUTED + lines[0][inner.end() :]
    found = []
    for text in lines:
        text = re.sub(r"\s\d*(?:>>|>|<)&?\s*[^\s;&|()]+", " ", text)  # redirections
        lexer = shlex.shlex(text, posix=True, punctuation_chars=True)
        lexer.whitespace_split = True
        simple: list[str] = []
        for token in [*lexer, ";"]:
            if token and set(token) <= set("();<>|&"):
                found += _pipeline_argv(simple)
                simple = []
            else:
                simple.append(token)
    return found


def _pipeline_argv(words: list[str]) -> list[list[str]]:
    while words and (words[0] in PREFIXES or re.match(r"[A-Za-z_]\w*=", words[0])):
        words = words[1:]
    if words and Path(words[0]).name == "pipeline":
        return [words[1:]]
    if words[:3] in (["python", "-m", "pipeline"], ["python3", "-m", "pipeline"]):
        return [words[3:]]
    if words[:2] == ["docker", "compose"] and "pipeline" in words:  # run in a service
        return [words[words.index("pipeline") + 1 :]]
    return []


# -- the commands ------------------------------------------------------------------------------


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_pipeline_command_of_the_page_is_accepted(page: Path) -> None:
    refused = [
        f"{command}: {reason}"
        for command in pipeline_commands(page)
        if (reason := cli_accepts(command.argv)) is not None
    ]
    assert not refused, "\n".join(refused)


def test_the_pages_that_show_commands_have_them_found() -> None:
    """The extraction finds what the pages show: none lost to a block's info string."""
    counted = {page.name: len(pipeline_commands(page)) for page in PAGES}
    for name in ("operator-guide.md", "datastore.md", "deployment.md", "http-api.md"):
        assert counted[name] >= 3, counted
    argvs = [command.argv for command in pipeline_commands(DOCS / "deployment.md")]
    assert ["cluster", "start"] in argvs, "after a variable assignment"
    assert ["worker", "--queues", "gpu,default", "--concurrency", "8", "--hostname", "gpu-01"] in (
        argvs
    )


def test_commands_are_found_wherever_a_shell_line_holds_them() -> None:
    assert _commands("pipeline tasks 2 --json | python3 -c 'print(1)'  # a comment") == [
        ["tasks", "2", "--json"]
    ]
    assert _commands('ID=$(pipeline submit sample --json | jq .id) && pipeline wait "$ID"') == [
        ["wait", "$ID"],
        ["submit", "sample", "--json"],
    ]
    assert _commands('AUTH="Bearer $(pipeline cluster credentials --json)"') == [
        ["cluster", "credentials", "--json"]
    ]
    assert _commands("X=1 pipeline halt 4 5 2>/dev/null; echo pipeline") == [["halt", "4", "5"]]
    assert _commands("f() { pipeline alerts; }") == [["alerts"]]
    assert _commands("docker compose exec worker pipeline instances") == [["instances"]]
    assert _logical_lines("pipeline restart 7 \\\n    --mode resubmit\necho") == [
        (1, "pipeline restart 7      --mode resubmit"),
        (3, "echo"),
    ]


@pytest.mark.parametrize(
    ("argv", "reason"),
    [
        (["restart", "7", "--mode", "resubmit", "--dry-run"], None),
        (["restart", "--instance", "2", "--mode", "resume-current-step"], None),
        (["alerts"], None),
        (["alerts", "--all"], None),
        (["alerts", "ack", "3"], None),
        (["cluster", "start", "--workers", "2"], None),
        (["tasks", "2", "--help"], None),
        (["restart", "7", "--mod", "resubmit"], "unrecognized arguments: --mod resubmit"),
        (["tasks", "TASK"], "argument INSTANCE: 'TASK' is not a whole number"),
        (["tasks", "2", "--limit", "0"], "argument --limit: 0 is out of range"),
        (["cluster", "begin"], "argument COMMAND: invalid choice: 'begin'"),
        (["instance"], "argument COMMAND: invalid choice: 'instance'"),
        (["cluster"], "name a command (see 'pipeline cluster --help')"),
        (["subtasks"], "the following arguments are required: TASK"),
    ],
)
def test_cli_accepts_what_the_cli_accepts_only(argv: list[str], reason: str | None) -> None:
    found = cli_accepts(argv)
    if reason is None:
        assert found is None
    else:
        assert found is not None and reason in found, found


# -- the pages ---------------------------------------------------------------------------------


def _visible(markdown: str) -> str:
    """The page without HTML comments and fenced blocks: what a reader sees as text."""
    markdown = re.sub(r"<!--.*?-->", "", markdown, flags=re.S)
    return re.sub(r"^```.*?^```[ \t]*$", "", markdown, flags=re.S | re.M)


def _anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings."""
    anchors: set[str] = set()
    for heading in re.findall(r"^#{1,6} +(.+?) *$", _visible(page.read_text()), flags=re.M):
        slug = re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")
        anchor, count = slug, 0
        while anchor in anchors:
            count += 1
            anchor = f"{slug}-{count}"
        anchors.add(anchor)
    return anchors


@pytest.mark.parametrize("page", LINKED, ids=lambda page: page.name)
def test_every_link_leads_to_a_file_and_a_heading(page: Path) -> None:
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", _visible(page.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # elsewhere on the web
        path, _, anchor = target.partition("#")
        found = (page.parent / path).resolve() if path else page
        if not found.exists():
            broken.append(f"{target}: no such file")
        elif anchor and anchor not in _anchors(found):
            broken.append(f"{target}: no such heading in {found.name}")
    assert not broken, f"{page.name}: {broken}"


def test_the_readme_links_every_page() -> None:
    readme = (REPO / "README.md").read_text()
    assert [page.name for page in DOCS.glob("*.md") if f"(docs/{page.name})" not in readme] == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_each_page_says_first_what_it_is_for(page: Path) -> None:
    """After the comment that states how its commands are checked: a title, then a
    paragraph (not a table, a list, a picture or a block)."""
    text = page.read_text()
    assert text.startswith("<!--") and "tests/test_docs.py" in text.split("-->", 1)[0]
    title, paragraph = [part.strip() for part in _visible(text).strip().split("\n\n")[:2]]
    assert title.startswith("# ") and "\n" not in title, title
    assert not re.match(r"[#|`!<-]|\d+\.", paragraph), paragraph
    assert paragraph.count(". ") + paragraph.endswith(".") >= 1
