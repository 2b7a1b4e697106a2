"""Settings: environment variables (``PIPELINE_*``) over the home's settings file over defaults.

Everything a local cluster owns lives under one directory, ``PIPELINE_HOME``; its
``settings.toml`` holds what ``pipeline cluster init`` chose (the private Redis port, say),
and any value there can be overridden by an environment variable of the same name in
upper case with the ``PIPELINE_`` prefix.
"""

from __future__ import annotations

import json
import ssl
import sys
from functools import cache
from pathlib import Path
from typing import Annotated
from urllib.parse import quote

from pydantic import Field, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from pipeline.home import SETTINGS_FILE, pipeline_home


def _packaged_definitions() -> Path:
    """The definitions shipped with the product (the sample pipeline): ``config/pipelines``
    of the checkout the package runs from (an editable install, ``make demo``), else the
    copy a wheel installs under ``share/celery-pipeline/pipelines`` of its prefix (the
    environment's, or the user's for ``pip install --user``)."""
    import site

    installed = Path("share") / "celery-pipeline" / "pipelines"
    candidates = [
        Path(__file__).resolve().parents[1] / "config" / "pipelines",
        Path(sys.prefix) / installed,
        Path(site.getuserbase()) / installed,
    ]
    return next((found for found in candidates if found.is_dir()), candidates[1])


PACKAGED_DEFINITIONS = _packaged_definitions()
#: Ports used when ``cluster init`` did not choose them (a home set up by hand, say).
DEFAULT_API_PORT = 8000
DEFAULT_FLOWER_PORT = 5555
#: Where the HTTP API's routes live on its server, and its one route open without a token.
API_PREFIX = "/api/v1"
HEALTHZ = "/healthz"
#: The Celery app of the workers (``celery -A``), and the modules holding their tasks:
#: imported by every worker, and by Flower so its API can run the operator's operations.
CELERY_APP = "workers.app"
TASK_MODULES = ("workers.chain", "workers.operations")
#: The services ``cluster start`` may run beside Redis, the workers and beat: the worker of
#: the operations run through Flower, the HTTP API, and Flower.
OPTIONAL_SERVICES = ("operations", "api", "flower")


class Settings(BaseSettings):
    """All settings of a cluster; unset paths and URLs derive from ``home``."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", extra="ignore")

    home: Path = Field(default_factory=pipeline_home)
    database_url: str | None = None
    # Connection pool of each process (a Celery pool process is one), on PostgreSQL. A worker
    # host opens at most concurrency x (pool size + overflow) connections: size the server's
    # max_connections for every host.
    database_pool_size: int = Field(default=5, ge=1, description="connections kept open, at most")
    database_max_overflow: int = Field(default=5, ge=0, description="extra ones under load")
    database_pool_timeout: float = Field(
        default=30.0, gt=0, description="seconds to wait for a free connection"
    )
    database_connect_timeout: float = Field(
        default=10.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="seconds a connection to a server database (PostgreSQL) may take before"
        " the database counts as unreachable",
    )
    database_pool_recycle: float = Field(
        default=1800.0, description="seconds before a connection is replaced (-1: never)"
    )
    database_retry_seconds: float = Field(
        default=30.0,
        ge=0,
        description="a transaction meeting a deadlock or lost connection"
        " is run again for this long",
    )
    broker_url: str | None = None
    broker_timeout: float = Field(
        default=5.0,
        gt=0,
        le=300,
        allow_inf_nan=False,
        description="seconds a broker connect, publish or ping may take before the broker"
        " counts as unreachable (keep it above 1 s: a worker waits up to 1 s on its queue)",
    )
    broker_ca_file: Path | None = Field(
        default=None,
        description="CA certificate that signed a rediss:// broker's certificate (verified,"
        " host name included); unset: the system's CAs",
    )
    database_ca_file: Path | None = Field(
        default=None,
        description="CA certificate of a PostgreSQL server: when set, connections use TLS"
        " with sslmode=verify-full",
    )
    redis_port: int | None = None
    redis_password: str | None = Field(
        default=None, description="of the private redis-server; generated at `cluster init`"
    )
    group: str | None = Field(
        default=None,
        description="a Unix group that shares the home (0750 / 0640); unset: the owner only",
    )
    allow_insecure_network: bool = Field(
        default=False,
        description="let `pipeline worker` use a broker or database on another host without a"
        " password (a private network only)",
    )
    datastore_root: Path | None = None
    task_root: Path | None = None
    definitions_dir: Path = PACKAGED_DEFINITIONS
    receipt_dir: Path | None = Field(
        default=None,
        description="where deliveries wait to be received (Ziggy's data receipt directory);"
        " unset: receipt/ under the home",
    )
    #: ``a:b`` in the environment (as Ziggy's ``ziggy.pipeline.binPath``), a list in
    #: settings.toml.
    bin_path: Annotated[list[Path] | None, NoDecode] = Field(
        default=None,
        description="directories searched, in order, for an executable a definition names"
        " without a path (Ziggy's binPath; PATH is searched after them); unset: bin/ under"
        " the home",
    )
    workers: int = Field(default=1, ge=1, description="worker processes `cluster start` runs")
    worker_concurrency: int = Field(default=2, ge=1, description="pool size of each worker")
    #: ``a,b`` in the environment (as ``--queues`` takes them), a list in settings.toml.
    worker_queues: Annotated[list[str], NoDecode] = Field(default_factory=list)
    cluster_services: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: list(OPTIONAL_SERVICES),
        description="which of operations, api, flower `cluster start` runs (all by default)",
    )
    supervise: bool = Field(
        default=True,
        description="`cluster start` runs a supervisor that starts a service that died again,"
        " with back-off, each restart an alert",
    )
    reconcile_interval: float = Field(
        default=10.0, gt=0, description="seconds between runs of beat's reconciler"
    )
    monitor_interval: float | None = Field(
        default=None,
        gt=0,
        description="the former name of reconcile_interval, read when that is not set",
    )
    stale_after: float = Field(default=30.0, gt=0)
    event_scan_interval: float = Field(
        default=5.0,
        gt=0,
        description="seconds between looks for ready files in the event handlers' directories",
    )
    disk_warning_free_percent: float = Field(
        default=10.0,
        ge=0,
        le=100,
        description="a warning alert when the home's, datastore's or task root's file system"
        " has less free",
    )
    disk_error_free_mb: float = Field(
        default=256.0,
        ge=0,
        description="an error alert below this many MiB free: writes are about to fail",
    )
    retention_keep_last: int = Field(
        default=3,
        ge=1,
        description="`datastore prune` keeps this many newest versions of every path",
    )
    retention_keep_days: float = Field(
        default=30.0,
        ge=0,
        description="`datastore prune` keeps versions stored in the last this many days, and"
        " what instances submitted since consumed",
    )
    lease_seconds: float = Field(
        default=30.0, gt=0, description="a running subtask whose worker is silent this long is lost"
    )
    lost_subtask_retries: int = Field(
        default=3, ge=0, description="times a lost subtask is dispatched again before it fails"
    )
    batch_job_name: str = Field(
        default="",
        description="the job name every batch job of this cluster has (what the monitor's one"
        " squeue asks for); unset: pipeline- and a digest of the home",
    )
    batch_costs: dict[str, float] = Field(
        default_factory=dict,
        description="cost per node-hour by partition ('' for the default partition), for the"
        " estimates before and the cost after",
    )
    batch_guess_seconds: float = Field(
        default=600.0,
        gt=0,
        description="a subtask's run time guessed for an estimate when no earlier run of its"
        " node was measured",
    )
    api_host: str = Field(default="127.0.0.1", description="address the HTTP API listens on")
    api_port: int | None = Field(default=None, description="chosen free at `cluster init`")
    api_token: str | None = Field(default=None, description="bearer token of the HTTP API")
    flower_host: str = Field(default="127.0.0.1", description="address Flower listens on")
    flower_port: int | None = Field(default=None, description="chosen free at `cluster init`")
    tls_certfile: Path | None = Field(
        default=None,
        description="certificate the HTTP API and Flower serve HTTPS with (with tls_keyfile);"
        " unset: plain HTTP",
    )
    tls_keyfile: Path | None = Field(default=None, description="the certificate's private key")
    tls_ca_file: Path | None = Field(
        default=None,
        description="CA the CLI and the Python client trust for the HTTP API's and Flower's"
        " certificate; unset: the system's CAs",
    )
    flower_user: str = "operator"
    flower_password: str | None = Field(default=None, description="generated at `cluster init`")

    @field_validator("worker_queues", "cluster_services", mode="before")
    @classmethod
    def _comma_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("bin_path", mode="before")
    @classmethod
    def _colon_separated(cls, value: object) -> object:
        if isinstance(value, str):
            return [entry for entry in value.split(":") if entry.strip()]
        return value

    @field_validator("cluster_services")
    @classmethod
    def _known_services(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(OPTIONAL_SERVICES))
        if unknown:
            raise ValueError(f"unknown service {unknown[0]!r} (of {', '.join(OPTIONAL_SERVICES)})")
        return value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        toml_file = pipeline_home() / SETTINGS_FILE
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls, toml_file))

    @property
    def settings_file(self) -> Path:
        return self.home / SETTINGS_FILE

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def log_dir(self) -> Path:
        return self.home / "logs"

    @property
    def db_url(self) -> str:
        return self.database_url or f"sqlite:///{self.home / 'pipeline.db'}"

    @property
    def broker(self) -> str:
        if self.broker_url:
            return self.broker_url
        password = f":{quote(self.redis_password, safe='')}@" if self.redis_password else ""
        return f"redis://{password}127.0.0.1:{self.redis_port or 6379}/0"

    @property
    def umask(self) -> int:
        """What the cluster's processes create is private to the owner, or to the group."""
        return 0o027 if self.group else 0o077

    @property
    def uses_private_redis(self) -> bool:
        """True when the cluster runs its own redis-server rather than an external broker."""
        return not self.broker_url

    @property
    def api_listen_port(self) -> int:
        """The port the HTTP API listens on: the chosen one, else the default."""
        return self.api_port or DEFAULT_API_PORT

    @model_validator(mode="after")
    def _former_names(self) -> Settings:
        """A home set up before a setting was renamed keeps its value under the old name."""
        if self.monitor_interval is not None and "reconcile_interval" not in self.model_fields_set:
            self.reconcile_interval = self.monitor_interval
        return self

    @model_validator(mode="after")
    def _certificate_with_key(self) -> Settings:
        if bool(self.tls_certfile) != bool(self.tls_keyfile):
            raise ValueError("tls_certfile and tls_keyfile are set together, or neither")
        return self

    @property
    def web_scheme(self) -> str:
        """How the HTTP API and Flower are served: https once they have a certificate."""
        return "https" if self.tls_certfile else "http"

    def web_tls(self) -> ssl.SSLContext:
        """What a client of the HTTP API or Flower trusts: ``tls_ca_file``, else the
        system's CAs (the certificate's host name checked either way)."""
        cafile = str(self.tls_ca_file) if self.tls_ca_file else None
        return ssl.create_default_context(cafile=cafile)

    @property
    def api_url(self) -> str:
        return f"{self.web_scheme}://{self.api_host}:{self.api_listen_port}"

    @property
    def flower_url(self) -> str:
        return f"{self.web_scheme}://{self.flower_host}:{self.flower_port or DEFAULT_FLOWER_PORT}"

    @property
    def datastore(self) -> Path:
        return (self.datastore_root or self.home / "datastore").expanduser().absolute()

    @property
    def receipt(self) -> Path:
        return (self.receipt_dir or self.home / "receipt").expanduser().absolute()

    @property
    def bin_dirs(self) -> list[Path]:
        """The bin path's directories, absolute (``bin_path``, else ``bin/`` under the home)."""
        given = self.bin_path if self.bin_path is not None else [self.home / "bin"]
        return [directory.expanduser().absolute() for directory in given]

    @property
    def tasks_dir(self) -> Path:
        return (self.task_root or self.home / "tasks").expanduser().absolute()


@cache
def get_settings() -> Settings:
    """The settings of this process, read once."""
    return Settings()


def reload_settings() -> Settings:
    get_settings.cache_clear()
    return get_settings()


def write_settings_file(path: Path, values: dict[str, object]) -> None:
    """Merge ``values`` into the TOML settings file at ``path`` (flat keys only)."""
    import tomllib

    current: dict[str, object] = {}
    if path.exists():
        current = tomllib.loads(path.read_text())
    current.update(values)
    lines = [f"{key} = {json.dumps(value)}" for key, value in sorted(current.items())]
    # The file holds the API token and the Flower password: readable by its owner only.
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text("\n".join(lines) + "\n")
