"""A Ziggy node's ``maxWorkers`` on real processes: a worker pool of four runs at most
two of the task's subtasks at once when the node says two, and more when it says six."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support import started_cluster
from tests.test_ziggy import DATASTORE, DEFINITIONS, STEPS

pytestmark = [pytest.mark.e2e]

#: The calibrate step, counting the subtasks running beside it as it starts (each leaves a
#: file in ``running`` while it runs, and the count it saw in ``seen``); its run lasts
#: long enough that subtasks sent out together overlap.
COUNTING = STEPS.replace(
    "def calibrate(inputs):\n",
    "def calibrate(inputs):\n"
    "    import pathlib, time\n"
    '    probe = pathlib.Path(os.environ["ZIGGY_PROBE"])\n'
    '    me = probe / "running" / inputs["dataFilenames"][0]\n'
    "    me.touch()\n"
    '    seen = len(list((probe / "running").iterdir()))\n'
    '    (probe / "seen" / f"{me.name}-{seen}").touch()\n'
    "    time.sleep(2)\n"
    "    me.unlink()\n",
)


def night(datastore: Path, number: int, frames: int) -> None:
    raw = datastore / f"night-{number}" / "raw"
    raw.mkdir(parents=True)
    for frame in range(1, frames + 1):
        (raw / f"frame-{frame}.sci").write_text(str(10 * frame))
        (raw / f"frame-{frame}.dark").write_text("1")


def peak(probe: Path) -> int:
    """The most subtasks any of them saw running, itself included; the record cleared."""
    seen = [int(path.name.rsplit("-", 1)[1]) for path in (probe / "seen").iterdir()]
    for path in (probe / "seen").iterdir():
        path.unlink()
    return max(seen)


def test_max_workers_bounds_the_subtasks_of_a_task_running_at_once(tmp_path: Path) -> None:
    etc, src, probe = tmp_path / "etc" / "ziggy.d", tmp_path / "src" / "optics", tmp_path / "probe"
    for directory in (etc, src, probe / "running", probe / "seen"):
        directory.mkdir(parents=True)
    (etc / "spectra-pipeline.xml").write_text(DEFINITIONS)
    (etc / "spectra-datastore.xml").write_text(DATASTORE)
    (src / "steps.py").write_text(COUNTING)
    with started_cluster(
        PIPELINE_WORKER_CONCURRENCY="4", PIPELINE_CLUSTER_SERVICES="", ZIGGY_PROBE=str(probe)
    ) as cluster:
        cluster.cli("definitions", "import", etc, "--algorithm-path", src.parent)
        night(cluster.datastore, 1, 6)
        instance = int(cluster.json("submit", "spectra")["id"])
        cluster.wait(instance)
        calibrate = next(t for t in cluster.tasks(instance) if t["node"] == "calibrate")
        assert (calibrate["completed_subtasks"], calibrate["failed_subtasks"]) == (6, 0)
        assert peak(probe) <= 2, "maxWorkers=2: at most two of the task's subtasks at once"

        pipeline = etc / "spectra-pipeline.xml"
        pipeline.write_text(pipeline.read_text().replace('maxWorkers="2"', 'maxWorkers="6"'))
        cluster.cli("definitions", "import", etc, "--algorithm-path", src.parent)
        night(cluster.datastore, 2, 6)
        instance = int(cluster.json("submit", "spectra", "--units", "night-2")["id"])
        cluster.wait(instance)
        assert peak(probe) > 2, "the same task under maxWorkers=6 runs more at once"
