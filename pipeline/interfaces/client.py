"""The HTTP API's one client, on the standard library's ``http.client``: the Python ``Client``
scripts use, and the ``Connection`` the CLI's read commands ask the home's API through
(``local_api``).

    from pipeline.interfaces.client import Client

    with Client() as api:  # the URL and token of the cluster under PIPELINE_HOME
        instance = api.submit("sample")
        print(api.tasks(instance["id"]))

Every method of ``Client`` returns the API's JSON (the fields of the CLI's ``--json``
output); an error answer raises ``ApiError`` with its status and one-line message.

Why the standard library: a read command must answer within 0.35 s as a new process, and
importing httpx takes 0.15 s where ``http.client`` takes 0.02 s. So this module imports
nothing else at its top, and the pipeline's settings (pydantic, 0.1 s) only when a
``Client`` is made without its URL and token, or checks an HTTPS API's certificate
against the settings' ``tls_ca_file``.
"""

from __future__ import annotations

import http.client
import json
import select
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode, urlsplit

if TYPE_CHECKING:
    import ssl

#: Seconds a request may take; a submit checks the broker, a restart may ask the workers.
DEFAULT_TIMEOUT = 30.0
#: Seconds a readiness probe waits for an answer.
PROBE_TIMEOUT = 0.5
#: The status reported when the API itself cannot be reached.
UNREACHABLE = 503
#: What a request raises when no answer came: no connection, a timeout, a certificate
#: refused, a connection closed or a malformed answer.
UNANSWERED = (OSError, http.client.HTTPException)


class ApiError(Exception):
    """An error answer of the HTTP API (or no answer at all: status 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


@dataclass(frozen=True)
class Response:
    """An answer of the API: its status, headers and body."""

    status: int
    reason: str
    headers: http.client.HTTPMessage
    body: bytes

    def header(self, name: str) -> str | None:
        return self.headers.get(name)

    def json(self) -> Any:
        return json.loads(self.body)

    def detail(self) -> str:
        """An error's one-line ``detail``, or the start of whatever else came back."""
        try:
            return str(self.json()["detail"])
        except (ValueError, KeyError, TypeError):
            text = self.body.decode(errors="replace").strip()
            return text[:200] or self.reason


class Connection:
    """Requests to the API at ``url`` (its prefix included), with bearer ``token``, over one
    connection kept open between requests; one request at a time.

    ``connect_timeout`` bounds the connection (default: ``timeout``), ``timeout`` every
    wait for the answer after it. An HTTPS API's certificate is checked against ``tls``
    (default: the system's CAs). A connection the server closed while it was idle
    (uvicorn does after 5 s) is found closed before a request is sent on it and made anew,
    so no request is ever sent twice."""

    def __init__(
        self,
        url: str,
        token: str | None,
        timeout: float,
        connect_timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"not an HTTP URL: {url}")
        self.url = url.rstrip("/")
        self._address = (parts.hostname or "", parts.port)
        self._https = parts.scheme == "https"
        self._prefix = parts.path.rstrip("/")
        # Without a token the API answers 401 and says where to find one.
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        self._connect_timeout = timeout if connect_timeout is None else connect_timeout
        self._tls = tls
        self._open: http.client.HTTPConnection | None = None
        self._lock = threading.Lock()

    def request(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Response:
        """``METHOD path?params`` with ``body`` as JSON; raises one of ``UNANSWERED`` when
        no answer came."""
        target = f"{self._prefix}{path}{_query(params or {})}"
        headers = dict(self._headers)
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        with self._lock:
            try:
                connection = self._connection()
                connection.request(method, target, body=payload, headers=headers)
                answer = connection.getresponse()
                return Response(answer.status, answer.reason, answer.headers, answer.read())
            except BaseException:
                self._close()  # half a request or an unread answer: never used again
                raise

    def close(self) -> None:
        with self._lock:
            self._close()

    def _connection(self) -> http.client.HTTPConnection:
        """The open connection, or a new one when there is none or the server closed it
        (an idle connection that reads as ready holds its end of file)."""
        if self._open is not None and (
            self._open.sock is None or select.select([self._open.sock], [], [], 0)[0]
        ):
            self._close()
        if self._open is None:
            host, port = self._address
            if self._https:
                import ssl

                context = self._tls or ssl.create_default_context()
                opened: http.client.HTTPConnection = http.client.HTTPSConnection(
                    host, port, timeout=self._connect_timeout, context=context
                )
            else:
                opened = http.client.HTTPConnection(host, port, timeout=self._connect_timeout)
            self._open = opened
            opened.connect()
            opened.sock.settimeout(self._timeout)
        return self._open

    def _close(self) -> None:
        if self._open is not None:
            self._open.close()
            self._open = None


def _query(params: Mapping[str, Any]) -> str:
    """``?key=value&...`` of the params that are set, a boolean as ``true`` or ``false``."""
    pairs = [
        (key, str(value).lower() if isinstance(value, bool) else str(value))
        for key, value in params.items()
        if value is not None
    ]
    return f"?{urlencode(pairs)}" if pairs else ""


def healthy(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Does the API at ``url`` answer its health check?"""
    from pipeline.settings import API_PREFIX, HEALTHZ

    try:
        connection = Connection(url, None, timeout, tls=_tls(url))
        try:
            return connection.request("GET", f"{API_PREFIX}{HEALTHZ}").status == 200
        finally:
            connection.close()
    except (*UNANSWERED, ValueError):
        return False


def _tls(url: str) -> ssl.SSLContext | None:
    """An HTTPS API's certificate is checked against the settings' ``tls_ca_file`` (else
    the system's CAs)."""
    if not url.startswith("https:"):
        return None
    from pipeline.settings import get_settings

    return get_settings().web_tls()


class Client:
    """The HTTP API at ``url`` with bearer ``token``; by default the home's ``api_url`` and
    ``api_token`` (what ``pipeline cluster credentials`` shows). Safe to share between
    threads: their requests take turns on its one connection."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        from pipeline.settings import API_PREFIX

        if url is None or token is None:
            from pipeline.settings import get_settings

            settings = get_settings()
            url, token = url or settings.api_url, token or settings.api_token
        self.url = url.rstrip("/")
        self._http = Connection(self.url + API_PREFIX, token, timeout, tls=_tls(self.url))

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def _call(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        try:
            response = self._http.request(method, path, params, body)
        except UNANSWERED as exc:
            raise ApiError(UNREACHABLE, f"HTTP API unreachable at {self.url}: {exc}") from None
        if response.status >= 400:
            raise ApiError(response.status, response.detail())
        return response.json()

    # -- instances ---------------------------------------------------------------------------

    def submit(
        self,
        pipeline: str,
        start_node: str | None = None,
        end_node: str | None = None,
        priority: int | None = None,
        units: str | None = None,
        exclude: str | None = None,
        dry_run: bool = False,
        execution: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> dict[str, Any]:
        """Submit an instance; the new instance with the ids of its first tasks (``dry_run``:
        every node's tasks and subtask counts, nothing submitted). ``units`` and
        ``exclude`` are regexps its units of work must match, and must not; ``execution``
        changes nodes' settings for this instance (``{node: {"batch.environment": ...}}``)."""
        body = {"pipeline": pipeline, "start_node": start_node, "end_node": end_node}
        chosen = {"priority": priority, "units": units, "exclude": exclude, "dry_run": dry_run}
        by_node = {node: dict(changes) for node, changes in (execution or {}).items()}
        return self._call("POST", "/instances", body={**body, **chosen, "execution": by_node})

    def environments(self) -> list[dict[str, Any]]:
        """The remote environments the definitions declare."""
        return self._call("GET", "/environments")

    def instances(self) -> list[dict[str, Any]]:
        return self._call("GET", "/instances")

    def instance(self, instance_id: int) -> dict[str, Any]:
        return self._call("GET", f"/instances/{instance_id}")

    def tasks(self, instance_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/instances/{instance_id}/tasks")

    # -- tasks -------------------------------------------------------------------------------

    def task(self, task_id: int) -> dict[str, Any]:
        return self._call("GET", f"/tasks/{task_id}")

    def subtasks(self, task_id: int) -> list[dict[str, Any]]:
        return self._call("GET", f"/tasks/{task_id}/subtasks")

    def logs(self, task_id: int, subtask: int | None = None) -> list[dict[str, Any]]:
        return self._call("GET", f"/tasks/{task_id}/logs", params={"subtask": subtask})

    def restart(
        self,
        modes: Mapping[int, str],
        execution: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        downstream: bool = False,
    ) -> list[dict[str, Any]]:
        """Restart each task in its mode (``{task_id: "resubmit"}``); one outcome per task.
        With ``downstream``, the tasks downstream run again too, in order."""
        body = {
            "tasks": [{"task_id": task_id, "mode": mode} for task_id, mode in modes.items()],
            "execution": dict(execution or {}),
            "dry_run": dry_run,
            "downstream": downstream,
        }
        return self._call("POST", "/tasks/restart", body=body)

    def restart_failed(
        self,
        instance_id: int,
        mode: str,
        execution: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        downstream: bool = False,
    ) -> list[dict[str, Any]]:
        """Restart every failed or stale task of an instance in one mode."""
        body = {
            "mode": mode,
            "execution": dict(execution or {}),
            "dry_run": dry_run,
            "downstream": downstream,
        }
        return self._call("POST", f"/instances/{instance_id}/restart-failed", body=body)

    def halt(self, task_id: int) -> dict[str, Any]:
        return self._call("POST", f"/tasks/{task_id}/halt")

    def halt_instance(self, instance_id: int) -> list[dict[str, Any]]:
        return self._call("POST", f"/instances/{instance_id}/halt")

    # -- the datastore -----------------------------------------------------------------------

    def files(
        self,
        instance: int | None = None,
        task: int | None = None,
        unit: str | None = None,
        path: str | None = None,
        history: bool = False,
        limit: int | None = None,
    ) -> list[dict[str, Any]]:
        """Datastore files and their producers: the current versions unless ``history``."""
        params = {"instance": instance, "task": task, "unit": unit, "path": path}
        return self._call("GET", "/files", params={**params, "limit": limit, "history": history})

    def lineage(self, path: str, version: str | int | None = None) -> dict[str, Any]:
        """The producers behind a version of a datastore file (the current one unless
        ``version``), back to the data received."""
        return self._call("GET", "/lineage", params={"path": path, "version": version})

    def import_files(
        self,
        directory: str,
        data_file_type: str,
        unit_of_work: str,
        manifest: str | None = None,
        pipeline: str | None = None,
    ) -> dict[str, Any]:
        """Receive a directory on the API's host into the datastore, all or nothing."""
        body = {
            "directory": directory,
            "data_file_type": data_file_type,
            "unit_of_work": unit_of_work,
            "manifest": manifest,
            "pipeline": pipeline,
        }
        return self._call("POST", "/datastore/imports", body=body)

    # -- definitions, parameters, alerts -----------------------------------------------------

    def pipelines(self) -> list[dict[str, Any]]:
        return self._call("GET", "/pipelines")

    def parameter_sets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/parameter-sets")

    def alerts(self, include_acknowledged: bool = False) -> list[dict[str, Any]]:
        return self._call("GET", "/alerts", params={"all": include_acknowledged})

    def acknowledge_alert(self, alert_id: int) -> dict[str, Any]:
        return self._call("POST", f"/alerts/{alert_id}/ack")
