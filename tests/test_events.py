"""Data that starts its own processing, in this process: a delivery laid out as the
datastore is received all or nothing; an event handler's ready files start its pipeline
for exactly the units that arrived, once per event, whatever is run twice or dies in
between; a disabled handler starts nothing; a delivery that fails its manifest raises an
alert, submits nothing and leaves the ready files for a person."""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Mapping
from datetime import timedelta
from pathlib import Path
from types import MappingProxyType

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from pipeline.errors import InvalidInput, Refused
from pipeline.operations import events, facade, lineage, models, queries
from pipeline.operations.delivery import receive_delivery
from pipeline.sample.images import pixels
from pipeline.settings import API_PREFIX, PACKAGED_DEFINITIONS
from tests.support import InProcessWorker, run_cli
from tests.test_models import sample_with_model


def sample_with_handler(directory: Path, incoming: Path, enabled: bool = True) -> None:
    """The sample's definition with an event handler ``ingest`` watching ``incoming``."""
    text = (PACKAGED_DEFINITIONS / "sample.yaml").read_text()
    text += f"\nevents:\n  ingest: {{directory: {incoming}, enabled: {str(enabled).lower()}}}\n"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "sample.yaml").write_text(text)
    incoming.mkdir(parents=True, exist_ok=True)
    facade.import_definitions([directory / "sample.yaml"])


def delivery(
    where: Path, label: str, units: dict[str, int], models: Mapping[str, str] = MappingProxyType({})
) -> Path:
    """A delivery ``where/label``: images for each unit (``{unit: set number}``), laid out
    as the datastore, with its manifest."""
    top = where / label
    lines = []
    for unit, number in units.items():
        (top / unit / "L0").mkdir(parents=True)
        for image in range(2):
            path = top / unit / "L0" / f"nasa-logo-file-{image}.png"
            Image.fromarray(pixels(number, image)).save(path)
            lines.append(f"{hashlib.sha256(path.read_bytes()).hexdigest()}  {unit}/L0/{path.name}")
    for name, text in models.items():
        (top / "models").mkdir(exist_ok=True)
        (top / "models" / name).write_text(text)
        lines.append(f"{hashlib.sha256(text.encode()).hexdigest()}  models/{name}")
    (top / f"{label}.sha256").write_text("\n".join(lines) + "\n")
    return top


def ready(incoming: Path, labels: list[str], count: int | None = None) -> list[Path]:
    files = []
    for label in labels:
        path = incoming / f"{label}.READY.ingest.{count or len(labels)}"
        path.touch()
        files.append(path)
    return files


def test_a_delivery_is_received_by_its_layout_all_or_nothing_and_once(
    home: Path, tmp_path: Path
) -> None:
    top = delivery(tmp_path, "night-1", {"set-3": 3, "set-4": 4})
    received = receive_delivery(top)
    assert received["units"] == {"raw_image": ["set-3", "set-4"]}
    assert sorted(f["path"] for f in received["files"]) == [
        f"set-{n}/L0/nasa-logo-file-{i}.png" for n in (3, 4) for i in range(2)
    ]
    stored = home / "datastore" / "set-3" / "L0" / "nasa-logo-file-0.png"
    assert stored.read_bytes() == (top / "set-3" / "L0" / "nasa-logo-file-0.png").read_bytes()
    assert (top / "night-1.sha256.ack").exists()

    again = receive_delivery(top)
    assert again["files"] == [] and again["already"] == 4, "received again: no second version"
    assert len(lineage.files(path="set-3/L0/nasa-logo-file-0.png", history=True)) == 1

    bad = delivery(tmp_path, "night-2", {"set-5": 5})
    (bad / "set-5" / "L0" / "nasa-logo-file-1.png").write_bytes(b"not what was sent")
    with pytest.raises(InvalidInput, match="nasa-logo-file-1.png: checksum differs"):
        receive_delivery(bad)
    assert not (home / "datastore" / "set-5").exists(), "a refused delivery places nothing"
    assert lineage.files(unit="set-5") == []

    sample_with_model(tmp_path / "defs")
    with_model = receive_delivery(delivery(tmp_path, "night-4", {"set-7": 7}, {"dark-5.txt": "5"}))
    assert [(m["model_type"], m["version"]) for m in with_model["models"]] == [("dark", "5")]
    assert [m["version"] for m in models.list_models()] == ["5"]

    itself = delivery(tmp_path, "night-5", {"set-8": 8})  # its manifest lists itself
    manifest = itself / "night-5.sha256"
    empty = hashlib.sha256(b"").hexdigest()
    manifest.write_text(f"{empty}  night-5.sha256\n" + manifest.read_text())
    assert receive_delivery(itself)["units"] == {"raw_image": ["set-8"]}

    stray = delivery(tmp_path, "night-3", {"set-6": 6})
    (stray / "set-6" / "notes.txt").write_text("?")
    with pytest.raises(InvalidInput, match="set-6/notes.txt: matches no data file type"):
        receive_delivery(stray)
    (stray / "set-6" / "notes.txt").unlink()
    (stray / "other.sha256").write_text("")
    with pytest.raises(InvalidInput, match="2 manifests"):
        receive_delivery(stray)


def test_ready_files_start_one_instance_for_the_units_that_arrived_once(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    incoming = tmp_path / "incoming"
    sample_with_handler(tmp_path / "defs", incoming)
    delivery(incoming, "night-1", {"set-3": 3})
    delivery(incoming, "night-2", {"set-4": 4})
    first = ready(incoming, ["night-1"], count=2)
    assert events.scan() == {"submitted": 0, "failed": 0}, "one of two labels: no event yet"
    assert queries.list_instances() == []
    files = first + ready(incoming, ["night-2"], count=2)

    assert events.scan() == {"submitted": 1, "failed": 0}
    [instance] = queries.list_instances()
    assert instance["units"] == ["set-3", "set-4"]
    assert instance["event"] == "event 1 of ingest (labels night-1, night-2)"
    assert not any(path.exists() for path in files), "the ready files are removed"
    worker.drain()
    assert queries.get_instance(instance["id"])["state"] == "COMPLETED"
    units = {t["unit_of_work"] for t in queries.list_tasks(instance["id"])}
    assert units == {"set-3", "set-4"}, "exactly the units that arrived, at every node"
    chain = lineage.lineage("set-3/L3/averaged-image.png")
    assert {s["event"] for s in chain["steps"] if s["file"]["origin"] == "task"} == {
        "event 1 of ingest (labels night-1, night-2)"
    }

    written_again = ready(incoming, ["night-1", "night-2"])  # the same event, again
    assert events.scan()["submitted"] == 0
    assert len(queries.list_instances()) == 1, "a ready file written twice submits once"
    assert not any(path.exists() for path in written_again)
    [handler] = events.list_handlers()
    assert handler["last_event"]["state"] == "submitted"
    assert handler["last_event"]["instance_id"] == instance["id"]


def test_two_scans_at_once_and_a_scan_that_dies_before_submit_submit_once(
    any_database: str,
    home: Path,
    tmp_path: Path,
    worker: InProcessWorker,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On both databases: the claim and the submit's mark are what keep it once."""
    incoming = tmp_path / "incoming"
    sample_with_handler(tmp_path / "defs", incoming)
    delivery(incoming, "night-1", {"set-3": 3, "set-4": 4})
    ready(incoming, ["night-1"])

    def dies(*_: object, **__: object) -> None:
        raise SystemExit("killed between receipt and submit")

    with monkeypatch.context() as patched:
        patched.setattr(events, "submit_for", dies)
        with pytest.raises(SystemExit):
            events.handle("ingest", ("night-1",), [incoming / "night-1.READY.ingest.1"])
    assert queries.list_instances() == []
    assert lineage.files(unit="set-3"), "received before it died"
    assert events.scan()["submitted"] == 0, "its claim holds until stale_after"

    received_again: list[Path] = []
    monkeypatch.setattr(events, "receive_delivery", lambda *a: received_again.append(a[0]))
    monkeypatch.setenv("PIPELINE_STALE_AFTER", "0.01")
    from pipeline.settings import get_settings

    get_settings.cache_clear()
    barrier = threading.Barrier(3)
    results: list[dict[str, int]] = []

    def scan() -> None:
        barrier.wait()
        results.append(events.scan())

    scans = [threading.Thread(target=scan) for _ in range(3)]
    for thread in scans:
        thread.start()
    for thread in scans:
        thread.join(60)
    assert sum(r["submitted"] for r in results) >= 1
    [instance] = queries.list_instances()
    assert instance["units"] == ["set-3", "set-4"]
    assert len(lineage.files(path="set-3/L0/nasa-logo-file-0.png", history=True)) == 1
    assert not (incoming / "night-1.READY.ingest.1").exists()
    assert received_again == [], "the scan that took over received nothing again"


def test_a_disabled_handler_starts_nothing_until_enabled(
    home: Path, tmp_path: Path, worker: InProcessWorker, capsys: pytest.CaptureFixture[str]
) -> None:
    incoming = tmp_path / "incoming"
    sample_with_handler(tmp_path / "defs", incoming, enabled=False)
    delivery(incoming, "night-1", {"set-3": 3})
    [file] = ready(incoming, ["night-1"])
    assert events.scan() == {"submitted": 0, "failed": 0}
    assert queries.list_instances() == [] and file.exists()
    with pytest.raises(Refused, match="event handler 'ingest' is disabled"):
        events.deliver("ingest", ["night-1"])

    listed = json.loads(run_cli(capsys, "events", "--json").stdout)
    assert [(h["name"], h["enabled"], h["last_event"]) for h in listed] == [("ingest", False, None)]
    assert run_cli(capsys, "events", "enable", "ingest").returncode == 0
    sample_with_handler(tmp_path / "defs", incoming, enabled=False)  # imported again
    assert events.list_handlers()[0]["enabled"], "the operator's choice survives a re-import"
    assert events.scan()["submitted"] == 1
    assert not file.exists()
    refused = run_cli(capsys, "events", "disable", "nosuch")
    assert refused.returncode == 1 and "unknown event handler 'nosuch'" in refused.stderr


def test_a_delivery_failing_its_manifest_alerts_submits_nothing_and_leaves_the_ready_files(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    incoming = tmp_path / "incoming"
    sample_with_handler(tmp_path / "defs", incoming)
    top = delivery(incoming, "night-1", {"set-3": 3})
    (top / "set-3" / "L0" / "nasa-logo-file-0.png").write_bytes(b"corrupt")
    [file] = ready(incoming, ["night-1"])
    assert events.scan() == {"submitted": 0, "failed": 1}
    assert events.scan() == {"submitted": 0, "failed": 0}, "one alert, not one a scan"
    assert queries.list_instances() == [] and file.exists()
    [alert] = [a for a in queries.list_alerts() if "event handler ingest" in a["message"]]
    assert "labels night-1" in alert["message"] and "checksum differs" in alert["message"]
    assert lineage.files(unit="set-3") == []

    Image.fromarray(pixels(3, 0)).save(top / "set-3" / "L0" / "nasa-logo-file-0.png")
    file.touch()  # a person corrected the delivery and wrote its ready file again
    import os

    later = file.stat().st_mtime + 5
    os.utime(file, (later, later))
    assert events.scan()["submitted"] == 1
    assert len(queries.list_instances()) == 1


def test_delivery_complete_through_the_operation_for_senders_without_ready_files(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    incoming = tmp_path / "incoming"
    sample_with_handler(tmp_path / "defs", incoming)
    delivery(incoming, "night-1", {"set-3": 3})
    event = events.deliver("ingest", ["night-1"])
    assert event["state"] == "submitted" and event["labels"] == ["night-1"]
    again = events.deliver("ingest", ["night-1"])
    assert again["id"] == event["id"] and len(queries.list_instances()) == 1
    with pytest.raises(InvalidInput, match="one directory name"):
        events.deliver("ingest", ["../etc"])
    failed = events.deliver("ingest", ["night-9"])
    assert failed["state"] == "failed" and "no such directory" in failed["message"]


def test_the_http_api_lists_switches_and_takes_delivery_complete(
    home: Path, tmp_path: Path, worker: InProcessWorker
) -> None:
    from tests.test_api import AUTH, app

    incoming = tmp_path / "incoming"
    sample_with_handler(tmp_path / "defs", incoming)
    delivery(incoming, "night-1", {"set-3": 3, "set-4": 4})
    with TestClient(app(), base_url=f"http://api{API_PREFIX}", headers=AUTH) as http:
        assert http.post("/events/ingest/disable").json()["enabled"] is False
        refused = http.post("/events/ingest/deliveries", json={"labels": ["night-1"]})
        assert refused.status_code == 409 and "disabled" in refused.json()["detail"]
        assert http.post("/events/ingest/enable").json()["enabled"] is True
        done = http.post("/events/ingest/deliveries", json={"labels": ["night-1"]})
        assert done.status_code == 201, done.text
        assert done.json()["state"] == "submitted"
        [handler] = http.get("/events").json()
        assert handler["last_event"]["instance_id"] == done.json()["instance_id"]
        assert http.post("/events/nosuch/enable").status_code == 404
        assert http.post("/events/ingest/deliveries", json={"labels": []}).status_code == 422
        instance = http.get(f"/instances/{done.json()['instance_id']}").json()
        assert instance["units"] == ["set-3", "set-4"]
        assert instance["event"].startswith("event 1 of ingest")


def test_a_scan_taking_over_never_undoes_a_submit_made_meanwhile(
    home: Path, tmp_path: Path, worker: InProcessWorker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The race PostgreSQL showed: scan B read the event as receiving (its claim stale),
    scan A then submitted it; B's take-over must fail, not set it back to receiving."""
    from pipeline.database import transaction
    from pipeline.domain.models import PipelineEvent

    incoming = tmp_path / "incoming"
    sample_with_handler(tmp_path / "defs", incoming)
    delivery(incoming, "night-1", {"set-3": 3})
    with monkeypatch.context() as patched:
        patched.setattr(events, "submit_for", lambda *a, **k: None)  # as if it died there
        event_id, _ = events.handle("ingest", ("night-1",), [])
    with transaction() as session:
        seen = session.get(PipelineEvent, event_id)
        seen.claimed_at -= timedelta(hours=1)  # the scan that claimed it died long ago
    with transaction() as session:
        seen = session.get(PipelineEvent, event_id)
        seen_state, seen_claim = seen.state, seen.claimed_at  # what scan B read
    events.deliver("ingest", ["night-1"])  # scan A (its claim taken as tried again) submits
    with transaction() as session:
        assert session.get(PipelineEvent, event_id).state == "submitted"
        taken = events.take_over(session, event_id, seen_state, seen_claim, again=False)
    assert not taken, "B's take-over found the event changed since it read it"
    with transaction() as session:
        assert session.get(PipelineEvent, event_id).state == "submitted"
    assert len(queries.list_instances()) == 1
