"""A pipeline of a user's own, outside the repository, imported into a running cluster:
a Python algorithm in a module beside its definition file and an executable given
relative to it, both found by the workers without restarting them.

It shares the cluster of xdist group ``shared-cluster``, whose workers were started long
before the user's files existed and have none of their directories on their path.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import Cluster

pytestmark = [pytest.mark.e2e, pytest.mark.xdist_group("shared-cluster")]

DEFINITION = """\
name: {name}
parameter_sets:
  {name}_values: {{factor: 2.5}}
data_file_types:
  numbers: {{location: "{{run}}/{name}/in", pattern: "*.txt"}}
  scaled: {{location: "{{run}}/{name}/scaled", pattern: "*-scaled.txt"}}
  total: {{location: "{{run}}/{name}/total", pattern: "total.txt"}}
nodes:
  - name: scale
    algorithm: userscale:scale
    inputs: [numbers]
    outputs: [scaled]
    parameter_sets: [{name}_values]
  - name: add
    after: [scale]
    algorithm: {{executable: bin/add.sh}}
    inputs: [scaled]
    outputs: [total]
    subtasks: single
"""

MODULE = """\
def scale(ctx):
    factor = ctx.parameters["factor"]
    for path in ctx.inputs:
        value = float(path.read_text()) * factor
        (ctx.directory / f"{path.stem}-scaled.txt").write_text(f"{value}\\n")
"""

EXECUTABLE = """\
#!/bin/bash
set -euo pipefail
cat *-scaled.txt | awk '{ total += $1 } END { print total }' > total.txt
"""


def write_pipeline(directory: Path, name: str) -> Path:
    """The user's files: definition, module and executable, in ``directory``."""
    (directory / "bin").mkdir(parents=True)
    (directory / "userscale.py").write_text(MODULE)
    script = directory / "bin" / "add.sh"
    script.write_text(EXECUTABLE)
    script.chmod(0o755)
    definition = directory / f"{name}.yaml"
    definition.write_text(DEFINITION.format(name=name))
    return definition


def imported(
    cluster: Cluster, tmp_path: Path, definition: Path, unit: str, values: list[int]
) -> str:
    """Import the definition and deliver ``values`` as number files of ``unit``; its name."""
    name = definition.stem
    incoming = tmp_path / f"incoming-{unit}"
    incoming.mkdir()
    for number, value in enumerate(values):
        (incoming / f"n{number}.txt").write_text(f"{value}\n")
    cluster.cli("definitions", "import", definition)
    cluster.cli(
        "datastore", "import", incoming, "--type", "numbers", "--unit", unit, "--pipeline", name
    )
    return name


def test_a_pipeline_outside_the_repository_runs_on_the_running_workers(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    name = imported(
        shared_cluster,
        tmp_path,
        write_pipeline(tmp_path / "mywork", "userpipe"),
        "run-1",
        [1, 2, 4],
    )
    instance = int(shared_cluster.json("submit", name)["id"])
    shared_cluster.wait(instance)

    tasks = shared_cluster.tasks(instance)
    assert {(t["node"], t["completed_subtasks"], t["failed_subtasks"]) for t in tasks} == {
        ("scale", 3, 0),
        ("add", 1, 0),
    }
    total = shared_cluster.datastore / "run-1" / name / "total" / "total.txt"
    assert float(total.read_text()) == pytest.approx(2.5 * (1 + 2 + 4))


GENERIC_NAMES = """\
name: generic
data_file_types:
  numbers: {location: "{run}/generic/in", pattern: "*.txt"}
  copied: {location: "{run}/generic/copied", pattern: "*-copy.txt"}
  summed: {location: "{run}/generic/summed", pattern: "sum.txt"}
nodes:
  - name: copy
    algorithm: config:copy
    inputs: [numbers]
    outputs: [copied]
  - name: sum
    after: [copy]
    algorithm: settings:total
    inputs: [copied]
    outputs: [summed]
    subtasks: single
"""


def test_user_modules_named_config_and_settings_run_on_the_workers(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    """Modules with the generic names a science team picks for its own code import on a
    worker as the user's, not as something of the product's."""
    work = tmp_path / "generic"
    work.mkdir()
    (work / "config.py").write_text(
        "def copy(ctx):\n"
        "    for path in ctx.inputs:\n"
        "        (ctx.directory / f'{path.stem}-copy.txt').write_text(path.read_text())\n"
    )
    (work / "settings.py").write_text(
        "def total(ctx):\n"
        "    values = [float(p.read_text()) for p in ctx.inputs]\n"
        "    (ctx.directory / 'sum.txt').write_text(f'{sum(values)}\\n')\n"
    )
    definition = work / "generic.yaml"
    definition.write_text(GENERIC_NAMES)
    name = imported(shared_cluster, tmp_path, definition, "run-g", [3, 4])
    instance = int(shared_cluster.json("submit", name)["id"])
    shared_cluster.wait(instance)

    tasks = shared_cluster.tasks(instance)
    assert {(t["node"], t["state"], t["counts"]) for t in tasks} == {
        ("copy", "COMPLETE", "2/2 (0)"),
        ("sum", "COMPLETE", "1/1 (0)"),
    }
    total = shared_cluster.datastore / "run-g" / "generic" / "summed" / "sum.txt"
    assert float(total.read_text()) == 7.0


def test_import_refuses_a_module_the_workers_cannot_find(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    """The module is importable from the importing shell's directory only (``python -m
    pipeline`` puts it on the CLI's path): no worker would find it, so nothing is imported."""
    definition = write_pipeline(tmp_path / "defs", "lostpipe")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (definition.parent / "userscale.py").rename(elsewhere / "lostscale.py")
    definition.write_text(definition.read_text().replace("userscale:", "lostscale:"))

    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "definitions", "import", str(definition)],
        env=shared_cluster.env,
        cwd=elsewhere,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = result.stderr.strip().splitlines()
    assert "lostscale" in line and str(definition.parent) in line, line
    assert "lostpipe" not in shared_cluster.cli("definitions", "list").stdout


def test_import_refuses_an_executable_missing_beside_the_definition(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    definition = write_pipeline(tmp_path / "defs", "noexec")
    (definition.parent / "bin" / "add.sh").unlink()
    result = shared_cluster.cli("definitions", "import", definition, check=False)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert str(definition.parent / "bin" / "add.sh") in line, line


def test_a_fixed_module_runs_at_the_next_submit_without_restarting_workers(
    shared_cluster: Cluster, tmp_path: Path
) -> None:
    """The workers import the user's module afresh for each task: a changed module runs."""
    definition = write_pipeline(tmp_path / "work", "fixpipe")
    module = definition.parent / "userscale.py"
    module.write_text("def scale(ctx):\n    raise ValueError('not written yet')\n")
    name = imported(shared_cluster, tmp_path, definition, "run-2", [3])
    first = int(shared_cluster.json("submit", name)["id"])
    shared_cluster.wait(first, expect=1)
    [failed] = shared_cluster.tasks(first)
    [subtask] = shared_cluster.json("subtasks", failed["id"])
    assert "not written yet" in subtask["error"]

    module.write_text(MODULE)
    shared_cluster.cli("restart", failed["id"], "--mode", "resubmit")
    shared_cluster.wait(first)
    total = shared_cluster.datastore / "run-2" / name / "total" / "total.txt"
    assert float(total.read_text()) == pytest.approx(7.5)
