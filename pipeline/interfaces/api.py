"""The HTTP API: FastAPI routes under ``/api/v1`` over the operations the CLI calls.

Every route but ``/healthz`` needs the cluster's bearer token (``api_token`` in the home's
settings; ``pipeline cluster credentials`` shows it). Every error answers
``{"detail": "<one line>"}``: an operator's problem with its status and line
(404 unknown, 409 refused, 422 invalid, 503 database or broker unreachable), a malformed
request 422, and anything unexpected a clean 500, with the traceback in the API's log.
"""

import gc
import logging
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path as FilePath
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, FastAPI, Path, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.security import HTTPBearer
from pydantic import Field
from starlette.types import ASGIApp, Lifespan, Message, Receive, Scope, Send

from pipeline import __version__
from pipeline.domain.execution import NAME_PATTERN
from pipeline.domain.limits import MAX_ID, MAX_NAME_LENGTH
from pipeline.domain.listing import TOTAL_HEADER, json_text
from pipeline.errors import InvalidInput, Refused, TooLarge, shown
from pipeline.interfaces import api_schemas as models
from pipeline.interfaces import local_api
from pipeline.interfaces.statuses import status as http_status
from pipeline.operations import delivery, events, facade, queries, receipt, views
from pipeline.operations import lineage as lineage_reads
from pipeline.operations import models as model_reads
from pipeline.operations.outcomes import Report
from pipeline.operations.problems import PROBLEMS, problem
from pipeline.recovery.heartbeat import SilenceWatch
from pipeline.settings import API_PREFIX, HEALTHZ, get_settings

#: The most files one listing answers with.
MAX_FILES = 100_000
#: Seconds uvicorn gives requests in progress to finish when it is told to stop.
GRACEFUL_SHUTDOWN_SECONDS = 5
#: Bytes of a request body, at most (docs/deployment.md, Limits): a restart of 10,000
#: tasks fits.
MAX_BODY_BYTES = 1024 * 1024
#: What a client on this host connects to for a server listening on every address.
EVERY_ADDRESS = {"0.0.0.0": "127.0.0.1", "": "127.0.0.1", "::": "[::1]"}
#: The logger of uvicorn's access log, whose records carry the path with its query string.
ACCESS_LOGGER = "uvicorn.access"
MISSING_TOKEN = (
    "missing bearer token: send 'Authorization: Bearer TOKEN'"
    " (`pipeline cluster credentials` shows it)"
)
WRONG_TOKEN = "wrong bearer token"

#: The bearer scheme, as the OpenAPI schema declares it.
BEARER = HTTPBearer(auto_error=False, description="`pipeline cluster credentials` shows it")

log = logging.getLogger(__name__)


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": models.Error} for status in statuses}


InstanceId = Annotated[int, Path(ge=1, le=MAX_ID)]
TaskId = Annotated[int, Path(ge=1, le=MAX_ID)]
AlertId = Annotated[int, Path(ge=1, le=MAX_ID)]
NamePath = Annotated[str, Path(pattern=NAME_PATTERN, max_length=MAX_NAME_LENGTH)]
#: Rows a listing answers with at most (unset: all); its header says how many there are.
Limit = Annotated[
    int | None,
    Query(ge=1, le=MAX_ID, description=f"at most this many rows; {TOTAL_HEADER} says how many"),
]

#: The media type of a Ziggy XML file an export answers with, as the schema declares it.
XML = "application/xml"
XML_ANSWER: dict[str, Any] = {
    "description": "the file",
    "content": {XML: {"schema": {"type": "string"}}},
}

health_router = APIRouter()
router = APIRouter(responses=_errors(400, 401, 422, 500, 503))


@health_router.get(HEALTHZ, response_model=models.Health)
def healthz() -> dict[str, Any]:
    """Liveness, without the token (`cluster start` waits for this to answer), and whether
    beat's reconciler runs: the API answers even when the database does not."""
    health = facade.reconciler_health()
    return {"reconciler_running": health["running"], "reconciler": health["message"]}


# -- instances -------------------------------------------------------------------------------


@router.post(
    "/instances",
    status_code=201,
    response_model=views.SubmittedInstance,
    responses={
        **_errors(404, 409),
        200: {"model": views.SubmitPreview, "description": "dry_run: what it would run"},
    },
)
def submit(request: models.SubmitRequest, response: Response) -> views.SubmittedInstance | Response:
    """Submit an instance of the newest version of a pipeline (as `pipeline submit`);
    with ``dry_run``, every node's tasks and subtask counts, and nothing submitted (200)."""
    chosen = (
        request.pipeline,
        request.start_node,
        request.end_node,
        request.priority,
        request.models,
        request.units,
        request.exclude,
        {
            node: changes.model_dump(exclude_none=True)
            for node, changes in request.execution.items()
        },
    )
    if request.dry_run:
        return JSONResponse(facade.preview_submit(*chosen))
    instance = facade.submit(*chosen)
    response.headers["Location"] = f"{API_PREFIX}/instances/{instance['id']}"
    return instance


@router.get("/instances", response_model=list[views.InstanceView])
def instances(limit: Limit = None) -> Response:
    """Every instance in id order, or the newest ``limit``; the header says how many in all."""
    return _listing(queries.instances_listing(limit))


@router.get("/instances/{instance_id}", response_model=views.InstanceDetail, responses=_errors(404))
def instance(instance_id: InstanceId) -> dict[str, Any]:
    """An instance with its frozen parameters, node states and subtask totals."""
    return queries.get_instance(instance_id)


@router.get(
    "/instances/{instance_id}/tasks", response_model=list[views.TaskView], responses=_errors(404)
)
def instance_tasks(instance_id: InstanceId, limit: Limit = None) -> Response:
    """The instance's tasks in id order, or the first ``limit``."""
    return _listing(queries.tasks_listing(instance_id, limit))


@router.post(
    "/instances/{instance_id}/restart-failed",
    response_model=list[views.OutcomeView],
    responses=_errors(404, 409),
)
def restart_failed(instance_id: InstanceId, request: models.RestartFailedRequest) -> list[Any]:
    """Restart every failed task of the instance in one mode (or retry a failed transition)."""
    return _answer(
        facade.restart_failed(
            instance_id, request.mode, _changes(request), request.dry_run, request.downstream
        )
    )


@router.post(
    "/instances/{instance_id}/halt",
    response_model=list[views.OutcomeView],
    responses=_errors(404, 409),
)
def halt_instance(instance_id: InstanceId) -> list[Any]:
    """Halt every running task of the instance."""
    return _answer(facade.halt_instance(instance_id))


# -- tasks -----------------------------------------------------------------------------------


@router.get("/tasks/{task_id}", response_model=views.TaskDetail, responses=_errors(404))
def task(task_id: TaskId) -> dict[str, Any]:
    """A task with its history of transitions and its running subtasks."""
    return queries.get_task(task_id)


@router.get(
    "/tasks/{task_id}/subtasks", response_model=list[views.ListedSubtask], responses=_errors(404)
)
def subtasks(task_id: TaskId, limit: Limit = None) -> Response:
    """The task's subtasks in index order, or the first ``limit``."""
    return _listing(queries.subtasks_listing(task_id, limit))


@router.get("/tasks/{task_id}/logs", response_model=list[views.LogEntry], responses=_errors(404))
def logs(
    task_id: TaskId,
    subtask: Annotated[
        int | None, Query(ge=0, le=MAX_ID, description="only this subtask's log")
    ] = None,
) -> list[dict[str, Any]]:
    return queries.logs(task_id, subtask)


@router.post("/tasks/restart", response_model=list[views.OutcomeView], responses=_errors(404, 409))
def restart_tasks(request: models.RestartRequest) -> list[Any]:
    """Restart tasks, each in its own mode; refused ones are reported beside the others."""
    requests = [(item.task_id, item.mode) for item in request.tasks]
    return _answer(
        facade.restart(requests, None, _changes(request), request.dry_run, request.downstream)
    )


@router.post("/tasks/{task_id}/halt", response_model=views.OutcomeView, responses=_errors(404, 409))
def halt_task(task_id: TaskId) -> Any:
    """Halt a task: queued work dropped, running subtasks terminated, the error flag set."""
    return _answer(facade.halt([task_id]))[0]


# -- the datastore ---------------------------------------------------------------------------


@router.get("/files", response_model=list[views.FileView])
def files(
    instance: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    task: Annotated[int | None, Query(ge=1, le=MAX_ID)] = None,
    unit: Annotated[str | None, Query(max_length=500)] = None,
    path: Annotated[str | None, Query(max_length=1000)] = None,
    history: Annotated[bool, Query(description="superseded versions too")] = False,
    limit: Annotated[
        int | None, Query(ge=1, le=MAX_FILES, description="at most this many (default: all)")
    ] = None,
    offset: Annotated[int, Query(ge=0, le=MAX_ID, description="from the offset-th")] = 0,
) -> Response:
    """Datastore files and who produced each (as `pipeline files`), oldest first: every
    one, or a page of ``limit`` from ``offset``; ``X-Total-Count`` says how many in all."""
    return _listing(lineage_reads.files_listing(instance, task, unit, path, history, limit, offset))


@router.get("/lineage", response_model=views.LineageView, responses=_errors(404))
def lineage(
    path: Annotated[str, Query(min_length=1, max_length=1000)],
    version: Annotated[
        str | None, Query(max_length=64, description="a ledger id or a SHA-256 prefix")
    ] = None,
) -> views.LineageView:
    """The producers behind a version of a file, back to the data received (as
    `pipeline lineage`)."""
    return lineage_reads.lineage(path, version)


@router.post(
    "/datastore/imports",
    status_code=201,
    response_model=views.ReceiptView,
    responses=_errors(404),
)
def import_files(request: models.ImportRequest) -> views.ReceiptView:
    """Receive a directory of files on the API's host (as `pipeline datastore import`)."""
    manifest = FilePath(request.manifest) if request.manifest else None
    return receipt.receive(
        FilePath(request.directory),
        request.data_file_type,
        request.unit_of_work,
        manifest,
        request.pipeline,
    )


@router.post(
    "/datastore/deliveries",
    status_code=201,
    response_model=views.DeliveryView,
    responses=_errors(404),
)
def import_delivery(request: models.DeliveryRequest) -> views.DeliveryView:
    """Receive a delivery on the API's host: a directory laid out as the datastore, with
    its manifest (as `pipeline datastore import DIR` without --type and --unit)."""
    return delivery.receive_delivery(FilePath(request.directory), request.pipeline)


@router.get("/models", response_model=list[views.ModelView])
def list_models(
    model_type: Annotated[str | None, Query(alias="type", max_length=200)] = None,
) -> list[views.ModelView]:
    """Every model version held, by type, oldest first (as `pipeline models`)."""
    return model_reads.list_models(model_type)


@router.post("/models", status_code=201, response_model=views.ModelReceipt, responses=_errors(404))
def import_model(request: models.ModelImportRequest) -> views.ModelReceipt:
    """Receive a model file on the API's host as a version of its type (as `pipeline
    models import`)."""
    return model_reads.import_model(FilePath(request.file), request.model_type, request.pipeline)


@router.get("/environments", response_model=list[views.EnvironmentView])
def list_environments() -> list[views.EnvironmentView]:
    """The remote environments the newest definitions declare (as `pipeline environments`)."""
    return facade.list_environments()


@router.get("/events", response_model=list[views.EventHandlerView])
def list_event_handlers() -> list[views.EventHandlerView]:
    """The event handlers, each with the newest event it saw (as `pipeline events`)."""
    return events.list_handlers()


@router.post("/events/{name}/enable", response_model=views.EventHandlerView, responses=_errors(404))
def enable_event_handler(name: NamePath) -> views.EventHandlerView:
    """Enable an event handler (as `pipeline events enable`)."""
    return events.set_enabled(name, True)


@router.post(
    "/events/{name}/disable", response_model=views.EventHandlerView, responses=_errors(404)
)
def disable_event_handler(name: NamePath) -> views.EventHandlerView:
    """Disable an event handler: ready files wait (as `pipeline events disable`)."""
    return events.set_enabled(name, False)


@router.post(
    "/events/{name}/deliveries",
    status_code=201,
    response_model=views.EventView,
    responses=_errors(404, 409),
)
def delivery_complete(name: NamePath, request: models.DeliveryComplete) -> views.EventView:
    """ "Delivery complete", for senders that cannot write ready files: the handler receives
    the delivery of each label (a directory in its directory) and submits its pipeline for
    the units that arrived, once per event, as its ready files would."""
    return events.deliver(name, request.labels)


@router.post("/datastore/prune", response_model=views.DatastorePruneView)
def prune_datastore(request: models.DatastorePruneRequest) -> Any:
    """Remove the bytes of old versions (as `pipeline datastore prune`)."""
    since = None if request.keep_days is None else _days_ago(request.keep_days)
    return facade.prune_datastore(request.keep_last, since, request.dry_run)


@router.post("/taskdirs/prune", response_model=views.TaskDirsPruneView)
def prune_task_dirs(request: models.TaskDirsPruneRequest) -> Any:
    """Remove the task directories no restart can want (as `pipeline taskdirs prune`)."""
    return facade.prune_task_dirs(_days_ago(request.older_than_days), request.dry_run)


def _days_ago(days: float) -> datetime:
    return datetime.now(UTC) - timedelta(days=days)


# -- definitions, parameters, alerts ---------------------------------------------------------


@router.get("/pipelines", response_model=list[views.PipelineView])
def pipelines() -> list[views.PipelineView]:
    """The newest version of every pipeline definition."""
    return queries.list_definitions()


@router.get(
    "/pipelines/{name}/export",
    response_class=Response,
    responses={**_errors(404), 200: XML_ANSWER},
)
def export_definition(
    name: NamePath,
    format: Annotated[Literal["ziggy"], Query(description="Ziggy's XML (the only one)")] = "ziggy",
) -> Response:
    """A pipeline's newest definition as a Ziggy pipelineDefinition file (as `pipeline
    definitions export`)."""
    return Response(facade.export_definition(name), media_type=XML)


@router.get("/parameter-sets", response_model=list[views.ParameterSetView])
def parameter_sets() -> list[views.ParameterSetView]:
    """The newest version of every parameter set."""
    return queries.list_parameter_sets()


@router.post(
    "/parameter-sets/imports",
    response_model=list[views.ParameterSetChange],
    responses=_errors(404),
)
def import_parameter_library(
    request: models.ParameterLibraryImport,
) -> list[views.ParameterSetChange]:
    """Import a Ziggy parameter library on the API's host, all or nothing: what it does to
    each set, a preview unless ``apply`` (as `pipeline params import`, `--yes`)."""
    return facade.import_parameter_library(FilePath(request.file), request.apply)


@router.get(
    "/parameter-sets/export",
    response_class=Response,
    responses={**_errors(404), 200: XML_ANSWER},
)
def export_parameter_library(
    name: Annotated[list[Annotated[str, Field(max_length=MAX_NAME_LENGTH)]], Query()] = [],  # noqa: B006 - FastAPI's own default
) -> Response:
    """Parameter sets (``name`` repeated; every set, none named) as a Ziggy parameter
    library file (as `pipeline params export`)."""
    return Response(facade.export_parameter_library(name), media_type=XML)


@router.get("/queues", response_model=list[views.QueueView])
def list_queues() -> list[views.QueueView]:
    """The queues: messages waiting on the broker, tasks waiting, the oldest one's wait."""
    return queries.list_queues()


@router.get("/workers", response_model=list[views.WorkerView])
def list_workers() -> list[views.WorkerView]:
    """The workers of the cluster: host, up or silent, queues and pool size, last heartbeat."""
    return queries.list_workers()


@router.get("/alerts", response_model=list[views.AlertView])
def list_alerts(
    include_acknowledged: Annotated[
        bool, Query(alias="all", description="acknowledged ones too")
    ] = False,
) -> list[dict[str, Any]]:
    """What beat's reconciler did without an operator: lost work dispatched again or failed."""
    return queries.list_alerts(include_acknowledged)


@router.post("/alerts/{alert_id}/ack", response_model=views.AlertView, responses=_errors(404, 409))
def acknowledge_alert(alert_id: AlertId) -> views.AlertView:
    """Acknowledge an alert: it leaves the default list."""
    return facade.acknowledge_alert(alert_id)


# -- helpers ---------------------------------------------------------------------------------


def _listing(found: queries.Listing) -> Response:
    """A listing's rows as JSON, with how many there are in all in the ``TOTAL_HEADER``.

    The rows are encoded as the queries list them, not checked against the route's view
    at each request: pydantic's check of 10,000 tasks took 0.12 s of the 0.36 s the whole
    request took, to answer what the queries had listed. The view stays the schema, and
    the tests hold every listing's rows to it, as text (``test_api``)."""
    return Response(
        json_text(found.rows),  # as the CLI prints it, which prints it as it comes
        media_type="application/json",
        headers={TOTAL_HEADER: str(found.total)},
    )


def _changes(request: models.RestartRequest | models.RestartFailedRequest) -> dict[str, Any]:
    """The execution settings the request changes, unknown keys included for the refusal."""
    return request.execution.model_dump(exclude_none=True) if request.execution else {}


def _answer(report: Report) -> list[views.OutcomeView]:
    """The outcomes; when every task was refused nothing changed, so answer with the refusal.

    A batch in which some tasks went ahead answers 200 and reports the refused ones with
    ``ok`` false, as the CLI prints them.
    """
    refusal = report.refusal()
    if refusal is not None:
        raise refusal
    return report.as_dicts()


def _known_query_parameters(request: Request) -> None:
    """Refuse a query parameter the route does not take: a misspelt one would be ignored."""
    # The routes' own parameters: the token dependency takes none from the query.
    known = {param.alias for param in request.scope["route"].dependant.query_params}
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        accepted = ", ".join(sorted(known)) or "none"
        raise InvalidInput(f"unknown query parameter {shown(unknown[0])} (accepted: {accepted})")


def _token_check(token: str) -> Callable[..., Awaitable[Response]]:
    """Middleware refusing every request without ``token`` (compared in constant time) but
    the health check's: before routing and body parsing, so an unknown path, the schema
    and a malformed body all answer 401 to a caller without the token."""
    expected = token.encode()
    open_path = f"{API_PREFIX}{HEALTHZ}"

    async def check(request: Request, call_next: Callable[..., Awaitable[Response]]) -> Response:
        if request.url.path == open_path:
            return await call_next(request)
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not given.strip():
            return _unauthorized(MISSING_TOKEN)
        if not secrets.compare_digest(given.strip().encode(), expected):
            return _unauthorized(WRONG_TOKEN)
        return await call_next(request)

    return check


def _too_large(size: str) -> str:
    return f"request body of {size} bytes: at most {MAX_BODY_BYTES} bytes"


class BodyLimit:
    """ASGI middleware refusing a body past ``MAX_BODY_BYTES`` with a 413: at once when its
    Content-Length says so, else as soon as more than that has arrived (a chunked body)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > MAX_BODY_BYTES:
            size = declared.decode() if declared.isdigit() else "unknown size"
            return await _error(413, _too_large(size))(scope, receive, send)
        received = 0

        async def limited() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > MAX_BODY_BYTES:  # handled as every operator's problem is: one line
                raise TooLarge(_too_large(f"more than {MAX_BODY_BYTES}"))
            return message

        await self.app(scope, limited, send)


class PathOnly(logging.Filter):
    """Show the path of a request in the access log, never its query string: a token sent
    there (refused: it goes in the header) must not be written to the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        # uvicorn's access record: (client, method, path with query, HTTP version, status).
        args = record.args
        if isinstance(args, tuple) and len(args) == 5 and isinstance(args[2], str):
            record.args = (args[0], args[1], args[2].partition("?")[0], args[3], args[4])
        return True


def _unauthorized(message: str) -> JSONResponse:
    return JSONResponse(
        {"detail": message}, status_code=401, headers={"WWW-Authenticate": "Bearer"}
    )


# -- errors ----------------------------------------------------------------------------------


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"detail": message}, status_code=status)


async def _problem(request: Request, exc: Exception) -> JSONResponse:
    """An operator's problem's status and line; a clean 500 for a bug."""
    found = problem(exc)
    if found is None:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return _error(500, f"internal error ({type(exc).__name__}): see the HTTP API's log")
    code = http_status(found)
    if code >= 500:
        log.error("%s %s: %s", request.method, request.url.path, found.message)
    return _error(code, found.message)


async def _invalid_request(_: Request, exc: RequestValidationError) -> JSONResponse:
    """422 naming each field and what was wrong with it: ``body.priority: Input should be...``."""
    return _error(422, "; ".join(map(_describe_invalid, exc.errors())))


def _describe_invalid(error: dict[str, Any]) -> str:
    if error["type"] == "json_invalid":
        return f"body is not valid JSON: {error['ctx']['error']} at character {error['loc'][-1]}"
    return f"{'.'.join(map(str, error['loc']))}: {error['msg']}"


# -- the app ---------------------------------------------------------------------------------


def create_app(token: str, lifespan: Lifespan | None = None) -> FastAPI:
    """The API app; every route but /healthz needs ``token``. ``lifespan`` is entered when
    the server starts and left when it stops."""
    app = FastAPI(
        lifespan=lifespan,
        title="celery-pipeline",
        version=__version__,
        description="Submit pipeline instances, read their state, restart or halt tasks.",
        openapi_url=f"{API_PREFIX}/openapi.json",
        # The interactive page cannot send the token to load the schema: none.
        docs_url=None,
        redoc_url=None,
    )
    app.include_router(health_router, prefix=API_PREFIX)
    app.include_router(
        router,
        prefix=API_PREFIX,
        # The bearer scheme is declared for the schema; the middleware enforces it.
        dependencies=[Security(BEARER), Depends(_known_query_parameters)],
    )
    app.add_middleware(BodyLimit)
    app.middleware("http")(_token_check(token))  # added last: runs first
    app.add_exception_handler(RequestValidationError, _invalid_request)
    # Each kind of operator's problem is handled where it is raised; anything else, a bug, at
    # the outermost layer (which also logs it).
    for kind in (*PROBLEMS, Exception):
        app.add_exception_handler(kind, _problem)
    return app


def serve(host: str | None = None, port: int | None = None) -> None:
    """Run the API on uvicorn, on the host and port from settings unless given."""
    import uvicorn

    settings = get_settings()
    if not settings.api_token:
        raise Refused(
            f"no api_token for {settings.home}: run `pipeline cluster init`"
            " (or set PIPELINE_API_TOKEN)"
        )
    host, port = host or settings.api_host, port or settings.api_listen_port
    token, home = settings.api_token, settings.home
    ca_file = str(settings.tls_ca_file) if settings.tls_ca_file else None
    url = f"{settings.web_scheme}://{_reachable(host)}:{port}{API_PREFIX}"

    @asynccontextmanager
    async def named(_: FastAPI) -> AsyncIterator[None]:
        """Name this API in the home's run file while it serves, so the CLI of this home
        reads through it (``local_api``). In the app's lifespan: uvicorn ends a process
        stopped by a signal as soon as the app has shut down, before any ``finally``."""
        local_api.publish(home, url, token, ca_file)
        # What the API has made by now (its modules, routes, schemas: hundreds of thousands
        # of objects) lives as long as it does: kept out of the cycle collector, whose
        # full walks of it took a quarter of a listing of 10,000 tasks.
        gc.freeze()
        try:
            yield
        finally:
            local_api.withdraw(home)

    config = server_config(create_app(token, named), host, port)
    watch = SilenceWatch()  # the API raises the alert of a silent reconciler
    watch.start()
    try:
        uvicorn.Server(config).run()
    finally:
        watch.stop()


def _reachable(host: str) -> str:
    """The address this host reaches a server listening on ``host`` at."""
    if host in EVERY_ADDRESS:
        return EVERY_ADDRESS[host]
    return f"[{host}]" if ":" in host else host


def server_config(app: FastAPI, host: str, port: int) -> Any:
    """uvicorn's configuration of the API, its access log showing paths without queries,
    served over HTTPS when the settings name a certificate."""
    import uvicorn

    settings = get_settings()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        ssl_certfile=settings.tls_certfile,
        ssl_keyfile=settings.tls_keyfile,
    )
    access = logging.getLogger(ACCESS_LOGGER)  # configured by uvicorn.Config just now
    if not any(isinstance(existing, PathOnly) for existing in access.filters):
        access.addFilter(PathOnly())
    return config
