"""Event handlers on real processes: beat's scan starts the handler's pipeline for the
units that arrived, once, across a process killed between receipt and submit; a disabled
handler starts nothing while another handler's event shows the scan ran."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.settings import PACKAGED_DEFINITIONS
from tests.support import started_cluster, wait_for
from tests.test_events import delivery

pytestmark = [pytest.mark.e2e]

#: Runs one handling of the event and dies as it would be killed between the receipt and
#: the submit (the submit is where it gets SIGKILL).
DIES_BEFORE_SUBMIT = """
import os, signal, sys
from pipeline.operations import events
events.submit_for = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
events.handle("ingest", ("night-1", "night-2"), [])
"""


def test_ready_files_start_one_instance_once_across_a_process_killed_before_submit(
    tmp_path: Path,
) -> None:
    incoming, probes = tmp_path / "incoming", tmp_path / "probes"
    incoming.mkdir()
    probes.mkdir()
    definition = tmp_path / "sample.yaml"
    definition.write_text(
        (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
        + f"\nevents:\n  ingest: {{directory: {incoming}, enabled: false}}\n"
        f"  probe: {{directory: {probes}}}\n"
    )
    with started_cluster(
        PIPELINE_EVENT_SCAN_INTERVAL="0.5", PIPELINE_CLUSTER_SERVICES=""
    ) as cluster:
        cluster.cli("definitions", "import", definition)
        delivery(incoming, "night-1", {"set-3": 3})
        delivery(incoming, "night-2", {"set-4": 4})
        ready = [incoming / f"night-{n}.READY.ingest.2" for n in (1, 2)]
        for path in ready:
            path.touch()

        def probe(label: str) -> None:
            """Another handler's event, whose delivery is missing: once it has failed, a
            scan ran after everything before it was written."""
            (probes / f"{label}.READY.probe.1").touch()
            wait_for(
                lambda: any(
                    f"labels {label}" in a["message"] for a in cluster.json("alerts", "--all")
                ),
                what=f"the probe event {label} to be seen",
            )

        probe("before")
        assert cluster.json("instances") == [], "a disabled handler starts nothing"
        assert all(path.exists() for path in ready)

        died = subprocess.run(
            [sys.executable, "-c", DIES_BEFORE_SUBMIT],
            env=cluster.env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert died.returncode == -9, died.stderr
        received = cluster.json("files", "--unit", "set-3")
        assert len(received) == 2 and received[0]["origin"] == "received"
        assert cluster.json("instances") == [], "killed before its submit"

        cluster.cli("events", "enable", "ingest")
        [instance] = wait_for(lambda: cluster.json("instances"), what="the event's instance")
        cluster.wait(instance["id"])
        assert instance["units"] == ["set-3", "set-4"]
        assert instance["event"].endswith(" of ingest (labels night-1, night-2)")
        tasks = cluster.json("tasks", instance["id"])
        assert {t["unit_of_work"] for t in tasks} == {"set-3", "set-4"}
        assert {t["node"] for t in tasks} == {"permuter", "flip", "averaging"}
        assert not any(path.exists() for path in ready), "its ready files removed"

        for path in ready:  # written again: the same event
            path.touch()
        probe("after")
        assert len(cluster.json("instances")) == 1, "one instance for one event"
        assert not any(path.exists() for path in ready)
        [ingest] = [h for h in cluster.json("events") if h["name"] == "ingest"]
        assert ingest["enabled"] and ingest["last_event"]["state"] == "submitted"
        assert ingest["last_event"]["instance_id"] == instance["id"]
        history = cluster.json("files", "--path", "set-3/L0/nasa-logo-file-0.png", "--history")
        assert len(history) == 1, "received once, though handled twice"


def test_a_model_received_after_submit_waits_for_the_next_instance_and_lineage_names_it(
    tmp_path: Path,
) -> None:
    from tests.test_models import WITH_MODEL, dark, variant_with_model

    with started_cluster(PIPELINE_CLUSTER_SERVICES="") as cluster:
        definition = tmp_path / "defs" / "sample.yaml"
        definition.parent.mkdir()
        text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
        definition.write_text(variant_with_model(text))
        cluster.cli("definitions", "import", definition)
        cluster.cli("models", "import", dark(tmp_path / "in", 1, "dark one"), "--type", "dark")
        cluster.set_parameters(throw_exception_subtask_0=True)
        first = cluster.submit()
        cluster.wait(first, expect=1)
        cluster.cli("models", "import", dark(tmp_path / "in", 2, "dark two"), "--type", "dark")
        cluster.restart("--instance", first, "--mode", "resume-current-step")
        cluster.wait(first)
        note = cluster.datastore / "set-1" / "L3" / "dark-used.txt"
        assert note.read_text().startswith("dark-1.txt True dark one"), "pinned at submit"

        cluster.set_parameters(throw_exception_subtask_0=False)
        second = cluster.submit()
        cluster.wait(second)
        assert note.read_text().startswith("dark-2.txt True dark two"), "the newest, next time"
        chain = cluster.json("lineage", "set-1/L3/averaged-image.png")
        produced = [s for s in chain["steps"] if s["file"]["origin"] == "task"]
        assert {s["file"]["node"] for s in produced} == {"permuter", "flip", "averaging"}
        assert all(s["code_version"] and s["code_version"]["product"] for s in produced)
        [averaged] = [s for s in produced if s["file"]["node"] == "averaging"]
        assert [(m["model_type"], m["version"]) for m in averaged["models"]] == [("dark", "2")]
        assert WITH_MODEL.strip() in definition.read_text()
