"""Flower for the pipeline: Celery's monitor, behind basic auth, with the pipeline console.

The app is built as ``celery flower`` builds it (Flower's environment variables and
``flowerconfig.py`` apply), on the host and port of the settings, with basic auth from
``flower_user`` and ``flower_password`` (``pipeline cluster credentials`` prints them).
The console's pages (``pipeline.interfaces.console``) are mounted in Flower's own Tornado
application, behind the same auth, under its ``url_prefix``, with a Pipeline section in
its navbar; the pipeline's figures join Celery's on ``/metrics`` (``prometheus``).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

import tornado.web
from flower.app import Flower
from flower.views.monitor import Metrics
from tornado import template

from pipeline.errors import Refused
from pipeline.interfaces import console, prometheus
from pipeline.interfaces.console import NAMESPACE, TEMPLATES, halt_from_form, restart_from_form
from pipeline.messaging.celery_app import celery_app
from pipeline.settings import DEFAULT_FLOWER_PORT, Settings, get_settings

log = logging.getLogger(__name__)

__all__ = ["build", "halt_from_form", "restart_from_form", "routes", "serve"]

#: The console's pages: (path under Flower's ``url_prefix``, handler, route name for
#: ``reverse_url``).
PAGES = (
    ("/pipeline/instances", console.InstancesPage, "pipeline-instances"),
    (r"/pipeline/instances/([^/]+)", console.InstancePage, "pipeline-instance"),
    (r"/pipeline/tasks/([^/]+)", console.TaskPage, "pipeline-task"),
    (r"/pipeline/tasks/([^/]+)/subtasks/([^/]+)/log", console.LogPage, "pipeline-log"),
    ("/pipeline/alerts", console.AlertsPage, "pipeline-alerts"),
    (r"/pipeline/alerts/([^/]+)/acknowledge", console.AcknowledgeHandler, "pipeline-acknowledge"),
    ("/pipeline/definitions", console.DefinitionsPage, "pipeline-definitions"),
    ("/pipeline/events", console.EventsPage, "pipeline-events"),
    ("/pipeline/parameters", console.ParametersPage, "pipeline-parameters"),
    ("/pipeline/submit", console.SubmitPage, "pipeline-submit"),
    ("/pipeline/restart", console.RestartPage, "pipeline-restart"),
    ("/pipeline/halt", console.HaltHandler, "pipeline-halt"),
)
METRICS_PATH = "/metrics"
NAVBAR_TEMPLATE = "navbar.html"
#: The console's tabs, added to Flower's navbar after its own: (label, route, active_tab).
NAV_TABS = (
    ("Pipeline", "pipeline-instances", "pipeline"),
    ("Submit", "pipeline-submit", "pipeline-submit"),
    ("Restart", "pipeline-restart", "pipeline-restart"),
    ("Alerts", "pipeline-alerts", "pipeline-alerts"),
    ("Definitions", "pipeline-definitions", "pipeline-definitions"),
    ("Events", "pipeline-events", "pipeline-events"),
    ("Parameters", "pipeline-parameters", "pipeline-parameters"),
)
NAV_ITEM = """        <li class="nav-item">
          <a class="nav-link{{% if active_tab == '{tab}' %}} active{{% end %}}"
            href="{{{{ reverse_url('{route}') }}}}"
            {{% if active_tab == '{tab}' %}}aria-current="page"{{% end %}}>{label}</a>
        </li>
"""
NAV_ITEMS = "".join(
    NAV_ITEM.format(label=label, route=route, tab=tab) for label, route, tab in NAV_TABS
)
#: Columns of Flower's task list unless FLOWER_TASKS_COLUMNS or flowerconfig.py say
#: otherwise: the arguments name each stage's pipeline task and attempt.
TASKS_COLUMNS = "name,uuid,state,args,exception,received,runtime,worker"
#: Seconds Flower run in a thread (``in_thread``) gets to start, and to stop.
IN_THREAD_START_SECONDS = 30
#: How ``celery flower`` names itself to Tornado's option parser.
PROG = "flower"


class PipelineTemplates(template.Loader):
    """Flower's templates, the pipeline's pages, and Flower's navbar with a link to them.

    Given as the app's ``template_loader`` so Flower's own pages show the link too; a
    navbar whose layout is not recognised (another Flower version) is left as it is.
    """

    def _create_template(self, name: str) -> template.Template:
        # The pipeline's pages are named "pipeline/...": they cannot shadow Flower's own
        # (its task page is "task.html"); what they extend or include that is not theirs
        # ("pipeline/base.html") is Flower's.
        if name.startswith(NAMESPACE):
            own = TEMPLATES / name.removeprefix(NAMESPACE)
            if own.is_file():
                return template.Template(own.read_bytes(), name=name, loader=self)
            return self._create_template(name.removeprefix(NAMESPACE))
        if name == NAVBAR_TEMPLATE:
            navbar = (Path(self.root) / name).read_text()
            head, end_of_tabs, tail = navbar.partition("</ul>")
            if end_of_tabs:
                navbar = head + NAV_ITEMS + end_of_tabs + tail
            return template.Template(navbar, name=name, loader=self)
        return super()._create_template(name)


class ProtectedMetrics(Metrics):
    """Flower's Prometheus metrics (workers and Celery tasks) and the pipeline's, which
    Flower leaves open, behind the same login as everything else; only ``/healthcheck``
    stays open, for readiness. Scraped off the I/O loop: the pipeline's figures are
    database queries."""

    @tornado.web.authenticated
    async def get(self) -> None:
        self.application.purge_offline_worker_metrics()
        loop = asyncio.get_running_loop()
        self.write(await loop.run_in_executor(None, prometheus.latest))
        self.set_header("Content-Type", "text/plain")


def routes(url_prefix: str | None) -> list[tornado.web.URLSpec]:
    """The pipeline's pages, and the metrics behind auth; these come before Flower's own
    routes. Flower's ``url_prefix`` rewrites only its own routes, so they get it here."""
    prefix = f"/{url_prefix.strip('/')}" if url_prefix else ""
    found = [tornado.web.url(prefix + path, page, name=name) for path, page, name in PAGES]
    return [*found, tornado.web.url(prefix + METRICS_PATH, ProtectedMetrics)]


def build(settings: Settings, log_file: Path | None = None) -> Flower:
    """Flower as ``celery flower`` makes it, with basic auth and the pipeline's pages."""
    from flower import command
    from flower.options import options
    from flower.urls import settings as flower_settings

    if not settings.flower_password:
        raise Refused(
            "no Flower password: run `pipeline cluster init` (or set PIPELINE_FLOWER_PASSWORD)"
        )
    port = settings.flower_port or DEFAULT_FLOWER_PORT
    argv = [f"--port={port}", f"--address={settings.flower_host}"]
    if log_file:
        argv.append(f"--log_file_prefix={log_file}")
    if settings.tls_certfile:
        argv += [f"--certfile={settings.tls_certfile}", f"--keyfile={settings.tls_keyfile}"]
    options.tasks_columns = TASKS_COLUMNS
    command.apply_env_options()
    command.apply_options(PROG, argv)
    # Set, not parsed: a comma in the password would split it into two logins.
    options.basic_auth = [f"{settings.flower_user}:{settings.flower_password}"]
    command.extract_settings()
    command.setup_logging()
    loader = PipelineTemplates(flower_settings["template_path"])
    flower_app = Flower(
        capp=celery_app(), options=options, template_loader=loader, **flower_settings
    )
    flower_app.add_handlers(r".*", routes(options.url_prefix))
    prometheus.register()
    return flower_app


@contextmanager
def in_thread(settings: Settings, made: list[Any] | None = None) -> Iterator[str]:
    """Flower serving in a thread of this process, reading no broker events (its pages and
    metrics only), until the block ends; yields its URL (and appends the app to ``made``).
    For the benchmark and the tests that read the console without a cluster."""
    ready = threading.Event()
    loops: list[asyncio.AbstractEventLoop] = []

    def run() -> None:
        loop = asyncio.new_event_loop()
        asyncio.set_event_loop(loop)
        flower_app = build(settings)
        flower_app.start_http_server()
        loops.append(loop)
        if made is not None:
            made.append(flower_app)
        ready.set()
        loop.run_forever()
        flower_app.stop()
        loop.close()

    thread = threading.Thread(target=run, name="flower", daemon=True)
    thread.start()
    if not ready.wait(IN_THREAD_START_SECONDS):
        raise Refused(f"Flower did not start within {IN_THREAD_START_SECONDS} s")
    try:
        yield settings.flower_url
    finally:
        loops[0].call_soon_threadsafe(loops[0].stop)
        thread.join(IN_THREAD_START_SECONDS)


def serve(log_file: Path | None = None) -> None:
    """Run Flower until SIGTERM (``pipeline cluster stop``) or Ctrl-C."""
    from flower.command import sigterm_handler

    settings = get_settings()
    flower_app = build(settings, log_file)
    try:
        flower_app.start_http_server()
    except OSError as exc:
        raise Refused(f"Flower cannot listen on {settings.flower_url}: {exc}") from None
    atexit.register(flower_app.stop)
    signal.signal(signal.SIGTERM, sigterm_handler)
    log.info("Flower at %s (user %s)", settings.flower_url, settings.flower_user)
    with suppress(KeyboardInterrupt, SystemExit):  # SIGTERM exits through SystemExit
        flower_app.start()
