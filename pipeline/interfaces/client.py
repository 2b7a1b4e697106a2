"""A Python client of the HTTP API, for scripts: the same operations as the CLI, over HTTP.

    from pipeline.interfaces.client import Client

    with Client() as api:  # the URL and token of the cluster under PIPELINE_HOME
        instance = api.submit("sample")
        print(api.tasks(instance["id"]))

Every method returns the API's JSON (the fields of the CLI's ``--json`` output); an error
answer raises ``ApiError`` with its status and one-line message.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from types import TracebackType
from typing import Any

import httpx

from pipeline.settings import API_PREFIX, HEALTHZ, get_settings

#: Seconds a request may take; a submit checks the broker, a restart may ask the workers.
DEFAULT_TIMEOUT = 30.0
#: Seconds a readiness probe waits for an answer.
PROBE_TIMEOUT = 0.5
#: The status reported when the API itself cannot be reached.
UNREACHABLE = 503


class ApiError(Exception):
    """An error answer of the HTTP API (or no answer at all: status 503)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status
        self.message = message


def healthy(url: str, timeout: float = PROBE_TIMEOUT) -> bool:
    """Does the API at ``url`` answer its health check?"""
    try:
        answer = httpx.get(f"{url}{API_PREFIX}{HEALTHZ}", timeout=timeout, verify=_verify(url))
        return answer.status_code == 200
    except httpx.HTTPError:
        return False


def _verify(url: str) -> ssl.SSLContext | bool:
    """An HTTPS API's certificate is checked against the settings' ``tls_ca_file`` (else
    the system's CAs)."""
    return get_settings().web_tls() if url.startswith("https:") else True


class Client:
    """The HTTP API at ``url`` with bearer ``token``; by default the home's ``api_url`` and
    ``api_token`` (what ``pipeline cluster credentials`` shows)."""

    def __init__(
        self, url: str | None = None, token: str | None = None, timeout: float = DEFAULT_TIMEOUT
    ) -> None:
        if url is None or token is None:
            settings = get_settings()
            url, token = url or settings.api_url, token or settings.api_token
        self.url = url.rstrip("/")
        # Without a token the API answers 401 and says where to find one.
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._http = httpx.Client(
            base_url=self.url + API_PREFIX,
            headers=headers,
            timeout=timeout,
            verify=_verify(self.url),
        )

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

    def _call(self, method: str, path: str, **options: Any) -> Any:
        try:
            response = self._http.request(method, path, **options)
        except httpx.TransportError as exc:
            raise ApiError(UNREACHABLE, f"HTTP API unreachable at {self.url}: {exc}") from None
        if response.is_error:
            raise ApiError(response.status_code, _detail(response))
        return response.json()

    # -- instances ---------------------------------------------------------------------------

    def submit(
        self,
        pipeline: str,
        start_node: str | None = None,
        end_node: str | None = None,
        priority: int | None = None,
    ) -> dict[str, Any]:
        """Submit an instance; the new instance with the ids of its first tasks."""
        body = {"pipeline": pipeline, "start_node": start_node, "end_node": end_node}
        return self._call("POST", "/instances", json={**body, "priority": priority})

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
        params = {} if subtask is None else {"subtask": subtask}
        return self._call("GET", f"/tasks/{task_id}/logs", params=params)

    def restart(
        self,
        modes: Mapping[int, str],
        execution: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> list[dict[str, Any]]:
        """Restart each task in its mode (``{task_id: "resubmit"}``); one outcome per task."""
        body = {
            "tasks": [{"task_id": task_id, "mode": mode} for task_id, mode in modes.items()],
            "execution": dict(execution or {}),
            "dry_run": dry_run,
        }
        return self._call("POST", "/tasks/restart", json=body)

    def restart_failed(
        self,
        instance_id: int,
        mode: str,
        execution: Mapping[str, Any] | None = None,
        dry_run: bool = False,
    ) -> list[dict[str, Any]]:
        """Restart every failed task of an instance in one mode."""
        body = {"mode": mode, "execution": dict(execution or {}), "dry_run": dry_run}
        return self._call("POST", f"/instances/{instance_id}/restart-failed", json=body)

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
        given = {"instance": instance, "task": task, "unit": unit, "path": path, "limit": limit}
        params = {key: value for key, value in given.items() if value is not None}
        return self._call("GET", "/files", params={**params, "history": history})

    def lineage(self, path: str) -> dict[str, Any]:
        """The producers behind a datastore file, back to the data received."""
        return self._call("GET", "/lineage", params={"path": path})

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
        return self._call("POST", "/datastore/imports", json=body)

    # -- definitions, parameters, alerts -----------------------------------------------------

    def pipelines(self) -> list[dict[str, Any]]:
        return self._call("GET", "/pipelines")

    def parameter_sets(self) -> list[dict[str, Any]]:
        return self._call("GET", "/parameter-sets")

    def alerts(self, include_acknowledged: bool = False) -> list[dict[str, Any]]:
        return self._call("GET", "/alerts", params={"all": include_acknowledged})

    def acknowledge_alert(self, alert_id: int) -> dict[str, Any]:
        return self._call("POST", f"/alerts/{alert_id}/ack")


def _detail(response: httpx.Response) -> str:
    """The error's one-line ``detail``, or the start of whatever else came back."""
    try:
        return str(response.json()["detail"])
    except (ValueError, KeyError, TypeError):
        return response.text.strip()[:200] or response.reason_phrase
