"""The home's own HTTP API, as the CLI's read commands ask it: found through a run file the
API writes when it starts, asked through the HTTP API's client (``client.Connection``).

A read command that loads SQLAlchemy, the settings and the pipeline's models spends half a
second importing them, above the 0.35 s an operator should wait for ``pipeline tasks``;
the HTTP API of a started cluster has them loaded and its connections open. So the API
writes ``run/api.json`` (private: it holds the token) as it starts, naming its URL, token,
process and what its settings were made from, and removes it as it stops; the CLI asks
the API only when that file names a live API process whose settings were made from the
same settings file and ``PIPELINE_*`` environment as the CLI's own would be. Otherwise (no
file, a process gone or another one's pid, other settings, no connection within
``CONNECT_SECONDS``, an answer other than rows or an unknown id) the CLI reads in process,
as it would without an API: the API only ever makes a read faster, never different.
"""

from __future__ import annotations

import json
import os
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.domain.listing import TOTAL_HEADER, JsonText, is_json_text
from pipeline.home import find_home, settings_fingerprint, write_run_file

if TYPE_CHECKING:
    import ssl

#: The run file under the home's ``run`` directory.
RUN_FILE = "api.json"
#: Seconds the CLI waits for a connection to the API before reading in process (a stale
#: run file names a port nobody listens on, or a firewalled one).
CONNECT_SECONDS = 0.5
#: Seconds the API may take to answer once connected (as the Python client allows).
ANSWER_SECONDS = 30.0
#: The statuses whose answers the CLI prints as the API gives them: rows or a detail, and
#: an unknown instance or task (the queries' message). Any other is read again in process,
#: whose message is the one the CLI has always printed.
OK, NOT_FOUND = 200, 404


@dataclass(frozen=True)
class Answer:
    """What the API answered: its status, its JSON (or an error's one-line detail), and how
    many rows the listing has in all when it said so."""

    status: int
    data: Any
    total: int | None


def publish(home: Path, url: str, token: str, ca_file: str | None) -> None:
    """Name this process's API in the home's run file (owner only, replaced whole), unless
    it names another API that is still serving: the home's first API keeps the name, so one
    started beside it (other settings, another port) and stopped again takes nothing away."""
    with suppress(OSError, ValueError, KeyError, TypeError):
        named = json.loads((home / "run" / RUN_FILE).read_text())["pid"]
        if named != os.getpid() and _serving(named):
            return
    record = {
        "url": url,
        "token": token,
        "ca_file": ca_file,
        "pid": os.getpid(),
        "settings": settings_fingerprint(home),
    }
    write_run_file(home, RUN_FILE, record)


def withdraw(home: Path) -> None:
    """Remove the run file if it still names this process (another API may have taken it)."""
    path = home / "run" / RUN_FILE
    with suppress(OSError, ValueError, KeyError, TypeError):
        if json.loads(path.read_text())["pid"] == os.getpid():
            path.unlink()


def find() -> dict[str, Any] | None:
    """The run file of this shell's home, when it names a live API whose settings are made
    as this process's would be; None otherwise."""
    home = find_home().path
    try:
        record = json.loads((home / "run" / RUN_FILE).read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("settings") != settings_fingerprint(home):
        return None
    return record if _serving(record.get("pid")) else None


def _serving(pid: Any) -> bool:
    """Is ``pid`` a live ``pipeline api`` process (not a pid recycled since a crash)?"""
    try:
        arguments = Path(f"/proc/{int(pid)}/cmdline").read_bytes().split(b"\0")
    except (OSError, TypeError, ValueError):
        return False
    return b"api" in arguments


def get(
    record: dict[str, Any], path: str, *, as_json: bool = False, **params: Any
) -> Answer | None:
    """``GET path`` from the API the run file names: rows, a detail, or an unknown id's
    one-line message; None when it could not be asked or answered anything else. For a
    caller that prints JSON (``as_json``), a listing (it says how many rows it has) in the
    form the caller prints is kept as its text (``JsonText``), not decoded."""
    from pipeline.interfaces.client import UNANSWERED, Connection

    try:
        connection = Connection(
            record["url"],
            record["token"],
            ANSWER_SECONDS,
            connect_timeout=CONNECT_SECONDS,
            tls=_tls(record["url"], record.get("ca_file")),
        )
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None
    try:
        response = connection.request("GET", path, params)
        total = response.header(TOTAL_HEADER)
        counted = int(total) if total is not None else None
        listing = response.status == OK and counted is not None
        if as_json and listing and is_json_text(response.body):
            return Answer(OK, JsonText(response.body), counted)
        body = response.json()
    except (*UNANSWERED, ValueError):
        return None
    finally:
        connection.close()
    if response.status == OK:
        return Answer(OK, body, counted)
    if response.status == NOT_FOUND and isinstance(body, dict):
        detail = body.get("detail")
        return Answer(NOT_FOUND, detail, None) if isinstance(detail, str) else None
    return None


def _tls(url: str, ca_file: str | None) -> ssl.SSLContext | None:
    """What an HTTPS API's certificate is checked against: the ``tls_ca_file`` the API
    named (else the system's CAs), as the Python client checks it."""
    if not url.startswith("https:"):
        return None
    import ssl

    return ssl.create_default_context(cafile=ca_file)
