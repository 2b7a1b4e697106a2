"""The HTTP API's client (``pipeline.interfaces.client``) against a small recording server of
the standard library's: what it sends (the token, the query, JSON), how it reads an error
answer, how it keeps its one connection (reused while open, made anew once the server
closed it, no request sent twice), and whom it trusts over HTTPS. The client against the
real API: ``test_cli_reads.py`` (in a thread), ``test_api_cluster.py`` and
``test_security.py`` (a cluster's).
"""

from __future__ import annotations

import json
import ssl
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from pipeline.interfaces.client import ApiError, Client, Connection, healthy
from tests.support import free_port, make_certificates, wait_for


@dataclass(frozen=True)
class Seen:
    """A request as the server read it, and the client's end of its connection."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    peer: tuple[str, int]


#: An answer: status, body.
Answer = tuple[int, bytes]


@dataclass
class Recording:
    """What the server saw, and how many of its connections it has closed."""

    url: str
    seen: list[Seen] = field(default_factory=list)
    closed: int = 0


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self, answer: Callable[[Seen], Answer], close_after: bool, recording: Recording
    ) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.answer, self.close_after, self.recording = answer, close_after, recording

    def shutdown_request(self, request: Any) -> None:
        super().shutdown_request(request)
        self.recording.closed += 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as uvicorn serves the API
    server: _Server

    def do_GET(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        seen = Seen(
            self.command,
            self.path,
            dict(self.headers),
            self.rfile.read(length),
            self.client_address,
        )
        self.server.recording.seen.append(seen)
        status, body = self.server.answer(seen)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        # Closed without saying so (no Connection: close), as a server closes an idle one.
        self.close_connection = self.server.close_after

    do_POST = do_GET

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the test reads what the server saw from its recording."""


@contextmanager
def recording(
    answer: Callable[[Seen], Answer] = lambda seen: (200, b"[]"),
    close_after: bool = False,
    tls: ssl.SSLContext | None = None,
) -> Iterator[Recording]:
    """A server in a thread that answers each request with ``answer``, and closes each
    connection after one answer when ``close_after``."""
    found = Recording("")
    server = _Server(answer, close_after, found)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    found.url = f"{'https' if tls else 'http'}://127.0.0.1:{server.server_address[1]}"
    # Polled for shutdown every 0.05 s (0.5 by default): each test ends that much sooner.
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield found
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=30)


def test_the_token_the_query_and_the_body_are_sent_as_the_api_reads_them() -> None:
    with recording() as server, Client(server.url, "secret") as client:
        client.alerts(include_acknowledged=True)
        client.files(instance=2, unit="set 1")
        client.restart({7: "resubmit"}, {"priority": 1}, dry_run=True)
    alerts, files, restart = server.seen
    assert (alerts.method, alerts.path) == ("GET", "/api/v1/alerts?all=true")
    assert files.path == "/api/v1/files?instance=2&unit=set+1&history=false"
    assert (restart.method, restart.path) == ("POST", "/api/v1/tasks/restart")
    assert restart.headers["Authorization"] == "Bearer secret"
    assert restart.headers["Content-Type"] == "application/json"
    assert json.loads(restart.body) == {
        "tasks": [{"task_id": 7, "mode": "resubmit"}],
        "execution": {"priority": 1},
        "dry_run": True,
        "downstream": False,
    }
    assert len({seen.peer for seen in server.seen}) == 1, "one connection, kept open"


def test_without_a_token_no_authorization_is_sent() -> None:
    with recording() as server, Client(server.url, "") as client:
        client.pipelines()
    assert "Authorization" not in server.seen[0].headers


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((409, b'{"detail": "task 7 is not failed"}'), "task 7 is not failed"),
        ((502, b"bad gateway\n"), "bad gateway"),
        ((500, b""), "Internal Server Error"),
    ],
)
def test_an_error_answer_is_an_api_error_with_its_one_line_detail(
    answer: Answer, message: str
) -> None:
    with (
        recording(lambda seen: answer) as server,
        Client(server.url, "t") as client,
        pytest.raises(ApiError) as error,
    ):
        client.task(7)
    assert (error.value.status, error.value.message) == (answer[0], message)


def test_a_connection_the_server_closed_is_made_anew_and_no_request_is_sent_twice() -> None:
    with recording(close_after=True) as server, Client(server.url, "t") as client:
        assert client.instances() == []
        wait_for(lambda: server.closed == 1, timeout=30, what="the server to close")
        assert client.instances() == []
        assert [seen.path for seen in server.seen] == ["/api/v1/instances"] * 2
        assert len({seen.peer for seen in server.seen}) == 2


def test_no_api_is_an_api_error_503_and_not_healthy() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url, "t") as client, pytest.raises(ApiError) as error:
        client.instances()
    assert error.value.status == 503
    assert error.value.message.startswith(f"HTTP API unreachable at {url}: ")
    assert not healthy(url)
    with recording(lambda seen: (200, b'{"ok": true}')) as server:
        assert healthy(server.url)
    assert server.seen[0].path == "/api/v1/healthz"


def test_an_https_api_is_trusted_by_the_settings_ca_file_only(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The certificate is checked against ``tls_ca_file`` (the Python client's settings) or
    the context given (the CLI's reads, from the API's run file); not the system's CAs."""
    from pipeline.settings import reload_settings

    made = make_certificates(tmp_path / "tls")
    served = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    served.load_cert_chain(made.certificate, made.key)
    with recording(tls=served) as server:
        with Client(server.url, "t") as client, pytest.raises(ApiError) as error:
            client.instances()
        assert error.value.status == 503 and "CERTIFICATE_VERIFY_FAILED" in error.value.message

        monkeypatch.setenv("PIPELINE_TLS_CA_FILE", str(made.ca))
        reload_settings()
        with Client(server.url, "t") as client:
            assert client.instances() == []
        trusted = ssl.create_default_context(cafile=str(made.ca))
        connection = Connection(f"{server.url}/api/v1", "t", 30, tls=trusted)
        try:
            assert connection.request("GET", "/tasks/1").status == 200
        finally:
            connection.close()
    assert [seen.path for seen in server.seen] == ["/api/v1/instances", "/api/v1/tasks/1"]


def test_a_submit_sends_its_nodes_execution_settings_and_environments_are_listed() -> None:
    onto = {"permuter": {"executor": "slurm", "batch.environment": "centre"}}
    with recording() as server, Client(server.url, "secret") as client:
        client.submit("sample", end_node="permuter", execution=onto, dry_run=True)
        client.environments()
    submit, environments = server.seen
    assert (submit.method, submit.path) == ("POST", "/api/v1/instances")
    body = json.loads(submit.body)
    assert (body["execution"], body["end_node"], body["dry_run"]) == (onto, "permuter", True)
    assert (environments.method, environments.path) == ("GET", "/api/v1/environments")
