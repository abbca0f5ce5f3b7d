"""What can be set: the gateway's settings, the tables of them, and the names both programs share.

Read by :mod:`gateway.shared.loader`, checked by :mod:`gateway.shared.checks`; a field marked
``RESTART`` cannot change on a reload.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from typing import Any
from urllib.parse import unquote, urlsplit

DEFAULT_CONFIG = "config/gateway.toml"


DEFAULT_INSTANCES = tuple(f"http://localhost:{port}" for port in range(3001, 3005))


PLACEMENTS = ("least_loaded", "workspace", "shard")
BACKEND_SEES = ("gateway", "instance")
# The origin check-config shows for a public_url left unset: what the backend is told then.
DERIVED = (
    "unset: the backend is told {url} (host and port); set GATEWAY_PUBLIC_URL to what it calls"
)
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


WEBHOOK_PATH = re.compile(r"/(?:[A-Za-z0-9_~-][A-Za-z0-9._~-]*/)+")


LOG_FORMATS = ("text", "json")


# Table and column names go into SQL as quoted identifiers, so they are held to this.
IDENTIFIER = re.compile(r"[A-Za-z0-9_$]{1,64}")


class SettingsError(ValueError):
    """A setting that cannot be used; its message is the one line shown to the operator."""


@dataclass(frozen=True, slots=True)
class MySQLParams:
    """The connection parameters of ``mysql_dsn``."""

    host: str
    port: int
    user: str
    password: str
    db: str

    @classmethod
    def from_dsn(cls, dsn: str) -> MySQLParams:
        """``mysql://user:pass@host:port/db`` (percent-encoded user and password)."""
        parts = urlsplit(dsn)
        db = parts.path.lstrip("/")
        if parts.scheme not in ("mysql", "mariadb") or not parts.hostname or not db:
            raise ValueError("mysql_dsn must look like mysql://user:pass@host:port/database")
        return cls(
            host=parts.hostname,
            port=parts.port or 3306,
            user=unquote(parts.username or "root"),
            password=unquote(parts.password or ""),
            db=unquote(db),
        )


# need(ok, name, value, why): raise the one-line error when a check fails.
Need = Callable[[bool, str, Any, str], None]


@dataclass(frozen=True)
class DatabaseSettings:
    """The backend's accounts table, written when ``mysql_dsn`` is set (TOML ``[database]``,
    env ``GATEWAY_DATABASE_*``). Names default to Laravel's ``whatsapp_accounts``."""

    table: str = "whatsapp_accounts"
    session_column: str = "session_id"
    url_column: str = "assigned_instance_url"
    index_column: str = "assigned_instance_index"
    provider_column: str = "provider_type"
    status_column: str = "status"
    deleted_column: str = "deleted_at"
    updated_column: str = "updated_at"
    pool_size: int = 4
    connect_timeout: float = 5.0
    query_timeout: float = 10.0
    batch_size: int = 200

    @property
    def identifiers(self) -> dict[str, str]:
        """The table and column settings, by name."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {name: value for name, value in values.items() if isinstance(value, str)}


# The queues a pool drains by default, in the priority order Laravel's worker reads them.
DEFAULT_QUEUES = (
    "messaging",
    "campaign-stats",
    "whatsapp-urgent",
    "whatsapp-high",
    "whatsapp-normal",
    "whatsapp-campaign",
)


@dataclass(frozen=True)
class QueueSettings:
    """What the gateway reads of ``[workers]`` for its console: the queues it shows, and the
    failed store's connection name (the workers' own settings of those names). The rest of
    ``[workers]`` is the workers' alone: a bad value there never stops the gateway."""

    queues: tuple[str, ...] = DEFAULT_QUEUES
    laravel_connection: str = "redis"


# A field's metadata: a reload (SIGHUP) cannot change it, as it is bound to the listening
# socket, the routes or the process itself; a new value waits for a restart.
RESTART = {"reload": False}


HTTP_ENGINES = ("fast", "aiohttp")


@dataclass(frozen=True)
class Settings:
    """The top-level settings: the gateway's, and those the workers share (``SHARED``).

    Every setting a reload may change, except those marked ``RESTART``."""

    host: str = field(default="127.0.0.1", metadata=RESTART)
    port: int = field(default=8080, metadata=RESTART)
    # "fast": the entry point reads the instance API's plain requests itself (llhttp) and
    # hands the rest to aiohttp; "aiohttp": aiohttp's own server reads every request.
    http_engine: str = field(default="fast", metadata=RESTART)
    instances: tuple[str, ...] = DEFAULT_INSTANCES
    placement: str = "least_loaded"
    max_sessions_per_instance: int = 500
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "laravel_database_"
    redis_prefix_form: str = "_database_"  # Laravel's default prefix: slug(APP_NAME) + this
    redis_timeout: float = 0.5
    # Replicas that must confirm an event (webhooks) or an idempotency key before it counts
    # as kept; 0: the primary's word is enough (a failover can lose its last writes).
    redis_min_replicas: int = 0
    mysql_dsn: str = ""
    laravel_api_token: str = ""
    admin_token: str = ""
    connect_timeout: float = 2.0
    read_timeout: float = 60.0  # the whole of one proxied call, connect to last byte
    upstream_keepalive: float = 4.0  # below Node's default keepAliveTimeout of 5 s
    max_connections_per_instance: int = 256
    max_body_bytes: int = field(default=50 * 1024 * 1024, metadata=RESTART)
    health_interval: float = 5.0
    health_down_interval: float = 1.0  # how often an instance that is down is checked
    health_timeout: float = 2.0
    health_fall: int = 2
    health_rise: int = 2
    reconcile_interval: float = 30.0
    rediscovery_negative_ttl: float = 5.0
    rediscovery_concurrency: int = 16
    log_level: str = "INFO"
    hmac_secret: str = ""  # the instances' webhook secret; empty: the webhook route is off
    webhook_path: str = field(default="/api/whatsapp/webhooks/", metadata=RESTART)
    webhook_dedup_window: float = 60.0  # an instance's retry of its session's last event
    webhook_max_body_bytes: int = 8 * 1024 * 1024
    backend_url: str = ""  # the backend the instances' own calls go on to; empty: refused
    # What the backend records as a session's instance: "gateway" (public_url, so its client
    # keeps calling the gateway) or "instance" (the instance's own URL, called directly).
    backend_sees: str = "gateway"
    public_url: str = ""  # the gateway as the backend calls it; empty: from host and port
    idempotency_ttl: float = 86400.0  # how long a request's Idempotency-Key and answer are kept
    idempotency_max_body_bytes: int = 65536  # a kept answer's body, at most
    log_format: str = "text"
    access_log: bool = True
    processes: int = field(default=1, metadata=RESTART)  # "auto" in the config: one per core
    database: DatabaseSettings = field(default_factory=DatabaseSettings)
    workers: QueueSettings = field(default_factory=QueueSettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def restart_only(cls) -> tuple[str, ...]:
        """The settings a reload cannot change (``RESTART``)."""
        return tuple(f.name for f in fields(cls) if f.metadata.get("reload") is False)

    @property
    def key_prefix(self) -> str:
        """Prefix of every Redis key the gateway owns."""
        return f"{self.redis_prefix}wa-gateway:"

    @property
    def shown_url(self) -> str:
        """The URL the backend is given as a session's instance: the gateway's (``public_url``,
        else from the listen address), or ``""`` when it is to see the instances' own."""
        if self.backend_sees != "gateway":
            return ""
        return self.public_url or listen_url(self.host, self.port)


# The top-level settings the workers read too; a bad one stops both programs.
SHARED = frozenset(
    {
        "redis_url",
        "redis_prefix",
        "redis_prefix_form",
        "redis_min_replicas",
        "mysql_dsn",
        "laravel_api_token",
        "log_level",
        "log_format",
        "hmac_secret",
    }
)


# TOML tables, each a section of its own: ``[database]`` the gateway's, ``[workers]`` read
# and checked by the workers' loader.
TABLES = frozenset({"workers", "database"})


SECRETS = frozenset({"laravel_api_token", "admin_token", "redis_url", "mysql_dsn", "hmac_secret"})


def listen_url(host: str, port: int) -> str:
    """The gateway's URL from its listen address; a wildcard address is reached on loopback."""
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"
