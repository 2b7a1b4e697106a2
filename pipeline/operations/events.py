"""Event handlers (Ziggy's): data that starts its own processing.

A handler, defined in a pipeline's definition (``events: {NAME: {directory: DIR}}``),
watches ``DIR`` for ready files ``LABEL.READY.NAME.COUNT`` (zero-length), ``NAME`` the
event's: the handler's own name, or any name for a handler alone on its directory (as
Ziggy's, whose senders name their events). Once all COUNT labels of an event are there,
it receives the delivery in each ``DIR/LABEL`` (``operations.delivery``, all or
nothing, checked against its manifest), submits its pipeline for exactly the units of
work that arrived, the event recorded on the instance and its handler, NAME and labels
given to the algorithm (Ziggy's ``ZiggyEventLabels``), then removes the ready files. As
Ziggy's, the label may be left out of the only ready file of an event, ``READY.NAME.1``:
its delivery is the files and manifest at the top of ``DIR``. Senders that cannot write
files say "delivery complete" through the HTTP API instead (``deliver``).

Once per event, whatever happens: an event is a row keyed by the handler, its NAME, its
labels and its manifests' bytes, taken by one scan at a time (``claimed_at``; another takes it over
only after ``stale_after``, from a scan that died); the submit marks it submitted in its
own transaction, so a scan that dies between receipt and submit leaves it to the next
(the receipt is idempotent), and two scans, or a ready file written twice, submit once.
A delivery that fails (its manifest, say) raises an alert, submits nothing and leaves
the ready files for a person; a corrected delivery is another event.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from pipeline.database import transaction
from pipeline.domain.models import EventHandler, PipelineEvent, PipelineInstance, utcnow
from pipeline.engine.alerts import ERROR, raise_or_update
from pipeline.engine.deliveries import READY_FILE
from pipeline.errors import InvalidInput, NotFound, PipelineError, Refused, shown
from pipeline.operations.delivery import manifest_of, receive_delivery
from pipeline.operations.views import (
    EventHandlerView,
    EventView,
    labels_said,
    pipeline_event_view,
)
from pipeline.settings import get_settings

log = logging.getLogger(__name__)

RECEIVING, SUBMITTED, FAILED = "receiving", "submitted", "failed"


@dataclass(frozen=True)
class Ready:
    """One event seen in a handler's directory: its NAME, labels and their ready files."""

    name: str
    labels: tuple[str, ...]
    files: tuple[Path, ...]


# -- handlers --------------------------------------------------------------------------------


def _handler(session: Session, name: str) -> EventHandler:
    handler = session.get(EventHandler, name)
    if handler is None:
        known = ", ".join(session.scalars(select(EventHandler.name).order_by(EventHandler.name)))
        raise NotFound(f"unknown event handler {shown(name)} (known: {known or 'none'})")
    return handler


def set_enabled(name: str, enabled: bool) -> EventHandlerView:
    """Enable or disable a handler (kept across cluster restarts)."""
    with transaction() as session:
        handler = _handler(session, name)
        handler.enabled, handler.updated_at = enabled, utcnow()
        return _handler_view(session, handler)


def list_handlers() -> list[EventHandlerView]:
    """Every handler, with the newest event it saw."""
    with transaction() as session:
        return [
            _handler_view(session, handler)
            for handler in session.scalars(select(EventHandler).order_by(EventHandler.name))
        ]


def _handler_view(session: Session, handler: EventHandler) -> EventHandlerView:
    last = session.scalars(
        select(PipelineEvent)
        .where(PipelineEvent.handler == handler.name)
        .order_by(PipelineEvent.id.desc())
        .limit(1)
    ).first()
    return EventHandlerView(
        name=handler.name,
        pipeline=handler.pipeline,
        directory=handler.directory,
        enabled=handler.enabled,
        last_event=pipeline_event_view(last) if last else None,
    )


def list_events(handler: str | None = None, limit: int = 50) -> list[EventView]:
    """The newest events, of one handler or all."""
    query = select(PipelineEvent).order_by(PipelineEvent.id.desc()).limit(limit)
    if handler is not None:
        query = query.where(PipelineEvent.handler == handler)
    with transaction() as session:
        return [pipeline_event_view(row) for row in session.scalars(query)]


# -- seeing and handling events --------------------------------------------------------------


def ready_events(directory: Path, name: str, alone: bool = False) -> list[Ready]:
    """The complete events of handler ``name`` in ``directory``: for each NAME and COUNT,
    its ready files once there are COUNT of them (labels in name order; none for Ziggy's
    ``READY.NAME.1``). NAME is the handler's own, or any when the handler is ``alone`` on
    its directory. A ready file without a label in an event of several (Ziggy refuses
    it), or whose label names no directory inside ``directory`` (``..``), is none."""
    by_event: dict[tuple[str, int], list[tuple[str | None, Path]]] = {}
    with suppress(FileNotFoundError, NotADirectoryError):
        for path in sorted(directory.iterdir()):
            found = READY_FILE.match(path.name)
            if not found or not (alone or found["name"] == name) or int(found["count"]) < 1:
                continue
            label, count = found["label"], int(found["count"])
            if label in (".", "..") or (label is None and count > 1):
                log.warning("event handler %s: %s is no ready file it takes", name, path.name)
                continue
            by_event.setdefault((found["name"], count), []).append((label, path))
    return [
        Ready(event, tuple(label for label, _ in seen if label), tuple(path for _, path in seen))
        for (event, count), seen in sorted(by_event.items())
        if len(seen) >= count
    ]


def scan() -> dict[str, int]:
    """Handle every complete event of every enabled handler (beat runs it); what it did."""
    with transaction() as session:
        handlers = [
            (h.name, Path(h.directory), h.enabled) for h in session.scalars(select(EventHandler))
        ]
    watched = [directory for _, directory, _ in handlers]  # disabled handlers' too
    done = {"submitted": 0, "failed": 0}
    for name, directory, enabled in handlers:
        if not enabled:
            continue
        for ready in ready_events(directory, name, alone=watched.count(directory) == 1):
            try:
                _, state = handle(name, ready.labels, ready.files, ready.name)
            except Exception:  # one event's trouble is its own: the others go on
                log.exception("event handler %s: labels %s", name, ", ".join(ready.labels))
                continue
            if state in done:
                done[state] += 1
    return done


def deliver(name: str, labels: Sequence[str]) -> EventView:
    """Say "delivery complete", for senders that cannot write ready files: handle the
    event of these labels of handler ``name`` now, as if its ready files were there."""
    with transaction() as session:  # an unknown or disabled handler is the error first
        handler = _handler(session, name)
        if not handler.enabled:
            raise Refused(f"event handler {name!r} is disabled (pipeline events enable {name})")
    labels = [str(label) for label in labels]
    if not labels:
        raise InvalidInput("name the labels of the delivery (at least one)")
    for label in labels:
        if not label or "/" in label or label in (".", "..") or "\x00" in label:
            raise InvalidInput(
                f"label {label[:80]!r}: one directory name in the handler's directory"
            )
    event_id, _ = handle(name, tuple(sorted(set(labels))), ())
    with transaction() as session:
        return pipeline_event_view(session.get(PipelineEvent, event_id))


def handle(
    name: str, labels: tuple[str, ...], ready_files: Sequence[Path], event: str | None = None
) -> tuple[int, str]:
    """Handle one event (see the module docstring), ``event`` the NAME of its ready files
    (unset: the handler's): its id and the state this call left it in ("" when it did
    nothing: handled before, or another scan has it). A failed event is tried again when
    its ready files are written after it failed (a person corrected the delivery), or
    said complete again through the HTTP API (no ready files)."""
    with transaction() as session:
        handler = _handler(session, name)
        pipeline, directory = handler.pipeline, Path(handler.directory)
    deliveries = _deliveries(directory, labels)
    key = _key(name, list(deliveries.values()), event or name)
    touched = max((_mtime(path) for path in ready_files), default=None)
    event_id, state = _claim(name, key, labels, touched)
    if state == SUBMITTED:
        _remove(ready_files)  # handled already: a ready file written again, or left by a crash
    if state != RECEIVING:
        return event_id, ""
    try:
        summary = [
            _received(event_id, label, delivery, pipeline) for label, delivery in deliveries.items()
        ]
        units = sorted({unit for delivery in summary for unit in delivery["units"]})
        if not units:
            raise InvalidInput("the deliveries hold no data file, only models: nothing to run")
        submit_for(event_id, name, pipeline, labels, summary, units, event or name)
    except (PipelineError, OSError) as exc:
        _fail(event_id, name, labels, exc)
        return event_id, FAILED
    _remove(ready_files)
    return event_id, SUBMITTED


def _deliveries(directory: Path, labels: Sequence[str]) -> dict[str, Path]:
    """Each label's delivery, ``directory/LABEL``; an event without labels (Ziggy's
    ``READY.NAME.1``) has one, the top of ``directory``, kept under the label ""."""
    return {label: directory / label for label in labels} or {"": directory}


def _received(event_id: int, label: str, delivery: Path, pipeline: str) -> dict[str, Any]:
    """Receive one label's delivery for the event, and record that it did, in a
    transaction of its own: a scan that takes the event over from one that died receives
    only what was not received (a delivery with a Ziggy manifest is emptied as it is
    received, and its dataset id may not be used twice)."""
    with transaction() as session:
        done = session.get(PipelineEvent, event_id).deliveries
        for found in done:
            if found["label"] == label:
                return found  # type: ignore[no-any-return]
    received = receive_delivery(delivery, pipeline)
    found = {
        "label": label,
        "receipt": received["receipt"],
        "files": len(received["files"]) + received["already"],
        "units": sorted({u for units in received["units"].values() for u in units}),
        "models": [f"{m['model_type']} {m['version']}" for m in received["models"]],
    }
    with transaction() as session:
        event = session.get(PipelineEvent, event_id)
        event.deliveries = [*event.deliveries, found]
        event.updated_at = utcnow()
    return found


def submit_for(
    event_id: int,
    name: str,
    pipeline: str,
    labels: Sequence[str],
    deliveries: list[dict[str, Any]],
    units: list[str],
    event_name: str,
) -> None:
    """Submit the handler's pipeline for ``units``, the event marked submitted in the same
    transaction (refused there when another scan submitted it first); ``event_name`` is
    the NAME its ready files gave it."""
    from pipeline.operations.submit import submit  # loads the Celery app: only here

    def started_by(session: Session, instance: PipelineInstance) -> None:
        query = select(PipelineEvent).where(PipelineEvent.id == event_id).with_for_update()
        event = session.scalars(query).one()
        if event.state == SUBMITTED:
            raise Refused(f"event {event_id} was submitted already (instance {event.instance_id})")
        event.state, event.instance_id = SUBMITTED, instance.id
        event.deliveries, event.updated_at = deliveries, utcnow()
        event.message = f"instance {instance.id} for {', '.join(units)}"
        instance.event = {
            "id": event_id,
            "handler": name,
            "name": event_name,
            "labels": list(labels),
            "deliveries": deliveries,
        }

    try:
        submit(pipeline, units=units, started_by=started_by)
    except Refused:
        log.info("event %s: submitted by another scan", event_id)


def _key(name: str, deliveries: list[Path], event: str) -> str:
    """What makes an event itself: its handler, its NAME (when not the handler's), labels
    and manifests' bytes, Ziggy's XML ones included (a label delivered again with other
    content is another event)."""
    digest = hashlib.sha256(name.encode())
    if event != name:
        digest.update(b"\0event\0" + event.encode())
    for delivery in deliveries:
        digest.update(b"\0" + delivery.name.encode() + b"\0")
        with suppress(OSError, PipelineError):
            digest.update(manifest_of(delivery).read_bytes())
    return digest.hexdigest()


def _mtime(path: Path) -> datetime | None:
    try:
        return datetime.fromtimestamp(path.stat().st_mtime, UTC)
    except OSError:
        return None


def _claim(
    name: str, key: str, labels: tuple[str, ...], touched: datetime | None
) -> tuple[int, str]:
    """Take the event for this scan: (its id, ``receiving``) when this scan has it; else
    its state (``submitted``, ``failed``, or "" while another scan has it). A failed one
    is taken again when its ready files were written since (``touched``), or when there
    are none (said complete through the HTTP API)."""
    now = utcnow()
    try:
        with transaction() as session:
            event = PipelineEvent(
                handler=name,
                key=key,
                labels=list(labels),
                deliveries=[],
                state=RECEIVING,
                claimed_at=now,
            )
            session.add(event)
            session.flush()
            return event.id, RECEIVING
    except IntegrityError:
        pass  # seen before
    with transaction() as session:
        event = session.scalars(
            select(PipelineEvent).where(PipelineEvent.handler == name, PipelineEvent.key == key)
        ).one()
        again = event.state == FAILED and (touched is None or touched > event.updated_at)
        if event.state != RECEIVING and not again:
            return event.id, event.state
        stale = now - timedelta(seconds=get_settings().stale_after)
        if not again and event.claimed_at is not None and event.claimed_at > stale:
            return event.id, ""
        taken = take_over(session, event.id, event.state, event.claimed_at, again)
        return event.id, RECEIVING if taken else ""


def take_over(
    session: Session, event_id: int, state: str, claimed_at: datetime | None, again: bool
) -> bool:
    """Claim the event for this scan, if it is still as this scan read it (its state and
    claim): another scan may have taken it, or submitted it, since."""
    taken = session.execute(
        update(PipelineEvent)
        .where(
            PipelineEvent.id == event_id,
            PipelineEvent.state == state,
            PipelineEvent.claimed_at == claimed_at
            if claimed_at is not None
            else PipelineEvent.claimed_at.is_(None),
        )
        .values(
            claimed_at=utcnow(),
            state=RECEIVING,
            message="tried again" if again else "taken over from a scan that stopped",
        )
        .execution_options(synchronize_session=False)
    )
    return bool(taken.rowcount)


def _fail(event_id: int, name: str, labels: Sequence[str], exc: BaseException) -> None:
    """The event failed: recorded, and an alert; the ready files stay for a person."""
    message = f"event handler {name}: {labels_said(list(labels))}: {exc}; nothing submitted"
    log.warning(message)
    with transaction() as session:
        event = session.get(PipelineEvent, event_id)
        event.state, event.message, event.updated_at = FAILED, str(exc), utcnow()
        raise_or_update(session, f"event:{name}:{event_id}", ERROR, message)


def _remove(files: Sequence[Path]) -> None:
    for path in files:
        with suppress(FileNotFoundError):
            path.unlink()
