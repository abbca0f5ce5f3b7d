"""One settings loader for the gateway and the workers, and the gateway's own settings.

Precedence, highest first: the process environment, the Laravel ``.env`` file named by
``LARAVEL_ENV_FILE``, the operator's local TOML file (``GATEWAY_LOCAL_CONFIG``, default the
TOML file's sibling ``gateway.local.toml``, untracked, so ``git pull`` never meets an edit),
the tracked TOML file (``GATEWAY_CONFIG``, default ``config/gateway.toml``: defaults only),
then the defaults below. Reading the backend's own ``.env`` means one source of truth for
instance URLs, Redis and MySQL. A bad value stops start-up with one line naming it.

Each program reads and checks only its own sections: the gateway the top level of the TOML
file, the workers (``workers.settings``) the shared top-level settings and ``[workers]``. A
bad ``[workers]`` value stops only the workers, a bad gateway value only the gateway.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote, urlsplit

from gateway.shared.laravel.strings import slug
from gateway.shared.redis_url import RedisUrlError, sentinel_target

DEFAULT_CONFIG = "config/gateway.toml"
DEFAULT_INSTANCES = tuple(f"http://localhost:{port}" for port in range(3001, 3005))
PLACEMENTS = ("least_loaded", "workspace", "shard")
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

# Env names besides GATEWAY_<NAME>: the ones the issue and Laravel's .env use.
ENV_NAMES: Mapping[str, tuple[str, ...]] = {
    "max_sessions_per_instance": ("WHATSAPP_MAX_SESSIONS_PER_INSTANCE",),
    "laravel_api_token": ("LARAVEL_API_TOKEN",),
    "hmac_secret": ("HMAC_SECRET", "WHATSAPP_HMAC_SECRET"),
    "backend_url": ("LARAVEL_URL",),
}


# --- composite values read from several Laravel names -------------------------------------


def _instances_from(env: Mapping[str, str]) -> str | None:
    if env.get("WHATSAPP_INSTANCES"):
        return env["WHATSAPP_INSTANCES"]
    if "WHATSAPP_INSTANCE_COUNT" not in env:
        return None
    count = env["WHATSAPP_INSTANCE_COUNT"]
    if not count.isdigit() or int(count) < 1:
        raise SettingsError(f"WHATSAPP_INSTANCE_COUNT: {count!r} is not a positive whole number")
    urls = []
    for i in range(1, int(count) + 1):
        url = env.get(f"WHATSAPP_INSTANCE_{i}")
        if not url:
            raise SettingsError(f"WHATSAPP_INSTANCE_{i}: missing (WHATSAPP_INSTANCE_COUNT={count})")
        urls.append(url)
    return ",".join(urls)


def _redis_url_from(env: Mapping[str, str]) -> str | None:
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    if not any(env.get(k) for k in ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB")):
        return None
    password = env.get("REDIS_PASSWORD", "")
    if password.lower() == "null":
        password = ""
    auth = f":{quote(password, safe='')}@" if password else ""
    host = env.get("REDIS_HOST") or "127.0.0.1"
    port = env.get("REDIS_PORT") or "6379"
    return f"redis://{auth}{host}:{port}/{env.get('REDIS_DB') or '0'}"


def _mysql_dsn_from(env: Mapping[str, str]) -> str | None:
    if env.get("MYSQL_DSN"):
        return env["MYSQL_DSN"]
    if env.get("DB_CONNECTION", "mysql") not in ("mysql", "mariadb") or not env.get("DB_DATABASE"):
        return None
    user = quote(env.get("DB_USERNAME") or "root", safe="")
    password = env.get("DB_PASSWORD", "")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host = env.get("DB_HOST") or "127.0.0.1"
    return f"mysql://{auth}@{host}:{env.get('DB_PORT') or '3306'}/{env['DB_DATABASE']}"


@dataclass(frozen=True)
class PrefixRule:
    """How a Laravel app derives its ``REDIS_PREFIX`` when none is set, as the ``redis``
    section of its ``config/database.php`` says:
    ``Str::slug(env('APP_NAME', default_app), separator) . suffix``."""

    separator: str
    suffix: str
    default_app: str = "laravel"

    def prefix(self, app_name: str | None) -> str:
        return (
            slug(self.default_app if app_name is None else app_name, self.separator) + self.suffix
        )


# The two skeleton lines in the wild: Laravel <= 10 (and apps that kept that line), and 11+.
PREFIX_FORMS: Mapping[str, PrefixRule] = {
    "_database_": PrefixRule("_", "_database_"),
    "-database-": PrefixRule("-", "-database-"),
}

# env('REDIS_PREFIX', Str::slug([(string)] env('APP_NAME'[, 'laravel'])[, 'sep']) . 'suffix')
_PREFIX_LINE = re.compile(
    r"""env\(\s*(['"])REDIS_PREFIX\1\s*,\s*Str::slug\(\s*(?:\(string\)\s*)?"""
    r"""env\(\s*(['"])APP_NAME\2\s*(?:,\s*(['"])(?P<app>.*?)\3\s*)?\)\s*"""
    r"""(?:,\s*(['"])(?P<sep>.*?)\5\s*)?\)\s*\.\s*(['"])(?P<suffix>.*?)\7"""
)
_PHP_COMMENTS = (re.compile(r"/\*.*?\*/", re.S), re.compile(r"^\s*(?://|#).*$", re.M))


def prefix_rule(database_php: str) -> PrefixRule | None:
    """The rule of a ``config/database.php``, or None when it has no such line."""
    for comment in _PHP_COMMENTS:
        database_php = comment.sub("", database_php)
    match = _PREFIX_LINE.search(database_php)
    if match is None:
        return None
    app = match["app"]
    # env('APP_NAME') without a default is null when unset, which slugs to ''.
    return PrefixRule(match["sep"] or "-", match["suffix"], "" if app is None else app)


def _app_rule(environ: Mapping[str, str], dotenv_path: str) -> tuple[PrefixRule, str] | None:
    """The rule in the app's ``config/database.php`` (the app is ``LARAVEL_APP_PATH``, else
    the folder of ``LARAVEL_ENV_FILE``), with where it was read."""
    app = environ.get("LARAVEL_APP_PATH") or (str(Path(dotenv_path).parent) if dotenv_path else "")
    php = Path(app) / "config" / "database.php" if app else None
    try:
        rule = prefix_rule(php.read_text(errors="replace")) if php and php.is_file() else None
    except OSError:
        rule = None
    return None if rule is None or php is None else (rule, f"config/database.php ({php})")


COMPOSITES: Mapping[str, Callable[[Mapping[str, str]], str | None]] = {
    "instances": _instances_from,
    "redis_url": _redis_url_from,
    "mysql_dsn": _mysql_dsn_from,
}


# --- parsing and checks -------------------------------------------------------------------


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse a Laravel ``.env``: ``KEY=value``, optional quotes and ``export``, ``#`` comments."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in ("'", '"') and value.count(value[0]) >= 2:
            value = value[1 : value.index(value[0], 1)]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values


def parse_processes(value: Any) -> Any:
    """``auto`` is one gateway process per core; anything else is checked as a number."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return value


def _check_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: {url!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise SettingsError(f"{name}: {url!r} has a bad port") from None
    return url.rstrip("/")


def _coerce(name: str, target: Any, value: Any) -> Any:
    """Turn a raw value (string from env, or TOML value) into the type of its default."""
    try:
        if isinstance(target, bool):
            if isinstance(value, str):
                return value.strip().lower() in ("1", "true", "yes", "on")
            if not isinstance(value, bool):
                raise TypeError
            return value
        if isinstance(target, int):
            if isinstance(value, bool | float):
                raise TypeError
            return int(value)
        if isinstance(target, float):
            if isinstance(value, bool):
                raise TypeError
            return float(value)
        if isinstance(target, tuple):
            items = value.split(",") if isinstance(value, str) else value
            if not isinstance(items, list | tuple) or not all(isinstance(i, str) for i in items):
                raise TypeError
            return tuple(i.strip() for i in items if i.strip())
        if isinstance(target, Mapping):
            if not isinstance(value, Mapping):
                raise TypeError
            return dict(value)
        if not isinstance(value, str):
            raise TypeError
        return value
    except (TypeError, ValueError):
        kind = type(target).__name__
        raise SettingsError(f"{name}: {value!r} is not a valid {kind}") from None


def _check_shared(s: Settings, need: Need) -> None:
    need(s.log_level in LOG_LEVELS, "log_level", s.log_level, f"is not one of {LOG_LEVELS}")
    need(
        s.redis_prefix_form in PREFIX_FORMS
        or s.sources.get("redis_prefix_form", "").startswith("config/database.php"),
        "redis_prefix_form",
        s.redis_prefix_form,
        f"is not one of {tuple(PREFIX_FORMS)}",
    )
    need(s.log_format in LOG_FORMATS, "log_format", s.log_format, f"is not one of {LOG_FORMATS}")
    need(
        urlsplit(s.redis_url).scheme in ("redis", "rediss", "unix", "redis+sentinel"),
        "redis_url",
        _mask(s.redis_url),
        "is not a redis:// (or redis+sentinel://) URL",
    )
    try:
        sentinel_target(s.redis_url)
    except RedisUrlError as exc:
        need(False, "redis_url", _mask(s.redis_url), str(exc).removeprefix("redis_url: "))
    if s.mysql_dsn:
        need(
            urlsplit(s.mysql_dsn).scheme in ("mysql", "mariadb"),
            "mysql_dsn",
            _mask(s.mysql_dsn),
            "is not a mysql:// DSN",
        )


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::"})


def _is_self(url: str, host: str, port: int) -> bool:
    """Whether ``url`` is this gateway's own listening address (a loop)."""
    parts = urlsplit(url)
    target = (parts.hostname or "").lower()
    if (parts.port or (443 if parts.scheme == "https" else 80)) != port:
        return False
    if host in ("0.0.0.0", "::"):
        return target in LOOPBACK
    return target == host.lower() or (host in LOOPBACK and target in LOOPBACK)


def _check_gateway(s: Settings, need: Need) -> None:
    need(1 <= s.port <= 65535, "port", s.port, "is out of range 1-65535")
    need(bool(s.instances), "instances", s.instances, "names no instance")
    seen: set[str] = set()
    for url in s.instances:
        need(url not in seen, "instances", url, "is listed twice")
        # Never sent (the api_key is the instances' credential), and an instance URL is in
        # every answer's X-WhatsApp-Instance, the logs and the metrics' labels.
        need(
            "@" not in urlsplit(url).netloc,
            "instances",
            _mask(url),
            "has credentials in it: the gateway sends none to an instance, and shows its URL",
        )
        need(
            not _is_self(url, s.host, s.port),
            "instances",
            url,
            "is the gateway itself: list the instances' own URLs (WHATSAPP_INSTANCES, or"
            " GATEWAY_INSTANCES), and point only the backend's base URL at the gateway",
        )
        seen.add(url)
    need(s.placement in PLACEMENTS, "placement", s.placement, f"is not one of {PLACEMENTS}")
    engines = HTTP_ENGINES
    need(s.http_engine in engines, "http_engine", s.http_engine, f"is not one of {engines}")
    need(
        WEBHOOK_PATH.fullmatch(s.webhook_path) is not None,
        "webhook_path",
        s.webhook_path,
        "must be a path of one or more segments, starting and ending with /",
    )
    if s.backend_url:
        backend = urlsplit(s.backend_url)
        need(
            backend.scheme in ("http", "https") and bool(backend.hostname) and not backend.query,
            "backend_url",
            s.backend_url,
            "is not an http(s) base URL",
        )
    need(s.redis_min_replicas >= 0, "redis_min_replicas", s.redis_min_replicas, "is < 0")
    need(s.webhook_dedup_window >= 0, "webhook_dedup_window", s.webhook_dedup_window, "is < 0")
    need(s.processes >= 1, "processes", s.processes, "must be at least 1 (or auto)")
    for name in (
        "max_sessions_per_instance",
        "max_body_bytes",
        "health_fall",
        "health_rise",
        "webhook_max_body_bytes",
        "idempotency_max_body_bytes",
        "max_connections_per_instance",
        "rediscovery_concurrency",
    ):
        need(getattr(s, name) >= 1, name, getattr(s, name), "must be at least 1")
    for name in (
        "redis_timeout",
        "connect_timeout",
        "read_timeout",
        "upstream_keepalive",
        "health_interval",
        "health_down_interval",
        "health_timeout",
        "reconcile_interval",
        "idempotency_ttl",
    ):
        need(getattr(s, name) > 0, name, getattr(s, name), "must be greater than 0")
    need(
        s.rediscovery_negative_ttl >= 0,
        "rediscovery_negative_ttl",
        s.rediscovery_negative_ttl,
        "must be 0 (off) or more",
    )


# Query parameters that carry a secret in a DSN (``mysql://u@h/db?password=...``).
SECRET_PARAMS = re.compile(r"([?&](?:password|passwd|pass|pwd|secret|token)=)[^&#]*", re.I)


def _check_database(d: DatabaseSettings, need: Need) -> None:
    for name, value in d.identifiers.items():
        need(
            IDENTIFIER.fullmatch(value) is not None,
            f"database.{name}",
            value,
            "is not a table or column name (1-64 of A-Z a-z 0-9 _ $)",
        )
    need(d.pool_size >= 1, "database.pool_size", d.pool_size, "must be at least 1")
    need(d.batch_size >= 1, "database.batch_size", d.batch_size, "must be at least 1")
    for name in ("connect_timeout", "query_timeout"):
        value = getattr(d, name)
        need(value > 0, f"database.{name}", value, "must be greater than 0")


def _mask(value: str) -> str:
    """Hide the password of a URL (userinfo or query string), or the whole of a bare secret."""
    parts = urlsplit(value)
    if not parts.scheme:
        return "***" if value else ""
    if parts.password:
        value = value.replace(f":{parts.password}@", ":***@", 1)
    return SECRET_PARAMS.sub(r"\1***", value)


# --- the loader ---------------------------------------------------------------------------


def _env_names(
    table: str | None, name: str, aliases: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    own = f"GATEWAY_{table}_{name}" if table else f"GATEWAY_{name}"
    return (*aliases.get(name, ()), own.upper())


def _load_toml(path: Path, required: bool, setting: str = "GATEWAY_CONFIG") -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise SettingsError(f"{setting}: {str(path)!r} does not exist")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{setting}: {str(path)!r} is not valid TOML ({exc})") from None


def local_config(path: Path) -> Path:
    """``config/gateway.toml`` -> ``config/gateway.local.toml``, the operator's own file."""
    return path.with_name(f"{path.stem}.local{path.suffix}")


class Sources:
    """Every source of settings, read once; each program resolves its own sections from it.

    ``origin`` records, per setting resolved so far, where its value came from.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        dotenv_path = environ.get("LARAVEL_ENV_FILE", "")
        dotenv: dict[str, str] = {}
        if dotenv_path:
            try:
                dotenv = parse_dotenv(Path(dotenv_path).read_text())
            except OSError as exc:
                raise SettingsError(f"LARAVEL_ENV_FILE: {dotenv_path!r} ({exc.strerror})") from None
        self.toml_path = Path(environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))
        self.toml = _load_toml(self.toml_path, required="GATEWAY_CONFIG" in environ)
        named = environ.get("GATEWAY_LOCAL_CONFIG", "")
        self.local_path = Path(named) if named else local_config(self.toml_path)
        self.local = _load_toml(self.local_path, bool(named), "GATEWAY_LOCAL_CONFIG")
        for key, value in self.local.items():  # over the tracked file, table by table
            below = self.toml.get(key)
            both = isinstance(value, dict) and isinstance(below, dict)
            self.toml[key] = {**below, **value} if both else value
        self.layers = (("env", environ), (f".env ({dotenv_path})", dotenv))
        self.origin: dict[str, str] = {}
        self.app_rule = _app_rule({**dotenv, **environ}, dotenv_path)

    def _file(self, table: str | None, name: str) -> Path:
        """The TOML file a key's value comes from: the local one when it sets it."""
        local = self.local.get(table, {}) if table else self.local
        return self.local_path if isinstance(local, dict) and name in local else self.toml_path

    def _table(self, table: str | None) -> Mapping[str, Any]:
        if table is None:
            return self.toml
        values = self.toml.get(table, {})
        if not isinstance(values, dict):
            raise SettingsError(f"{table}: must be a table in {self._file(None, table)}")
        return values

    def _raw(self, table: str | None, name: str, aliases: Mapping[str, tuple[str, ...]]) -> Any:
        """The highest-precedence raw value of one setting, or None; records its origin."""
        label = f"{table}.{name}" if table else name
        if table is None and name == "redis_prefix_form" and self.app_rule is not None:
            rule, self.origin[label] = self.app_rule
            return rule.suffix
        if table is None and name == "redis_prefix":
            return self._redis_prefix(label)
        for source, layer in self.layers:
            raw = next((layer[n] for n in _env_names(table, name, aliases) if n in layer), None)
            composite = COMPOSITES.get(name) if table is None else None
            if raw is None and composite is not None:
                raw = composite(layer)
            if raw is not None:
                self.origin[label] = source
                return raw
        toml_table = self._table(table)
        if name in toml_table:
            self.origin[label] = f"toml ({self._file(table, name)})"
            return toml_table[name]
        self.origin[label] = "default"
        return None

    def _redis_prefix(self, label: str) -> Any:
        """As Laravel: ``REDIS_PREFIX`` when set, else derived from ``APP_NAME``; both from
        the environment, then the ``.env``. Then the TOML file, then Laravel's default."""
        for names in (("GATEWAY_REDIS_PREFIX", "REDIS_PREFIX"), ("APP_NAME",)):
            for source, layer in self.layers:
                name = next((n for n in names if n in layer), None)
                if name == "APP_NAME":
                    rule, how = self._prefix_rule()
                    self.origin[label] = f"APP_NAME from {source}, {how}"
                    return rule.prefix(layer[name])
                if name is not None:
                    self.origin[label] = source
                    return layer[name]
        if "redis_prefix" in self.toml:
            self.origin[label] = f"toml ({self._file(None, 'redis_prefix')})"
            return self.toml["redis_prefix"]
        rule, how = self._prefix_rule()
        plain = self.app_rule is None and self.origin["redis_prefix_form"] == "default"
        self.origin[label] = "default" if plain else f"no APP_NAME, {how}"
        return rule.prefix(None)

    def _prefix_rule(self) -> tuple[PrefixRule, str]:
        """The app's own line, else the ``redis_prefix_form`` setting; with where it is from."""
        if self.app_rule is not None:
            rule, how = self.app_rule
        else:
            form = str(self._raw(None, "redis_prefix_form", ENV_NAMES) or "_database_")
            how = f"form {form} from {self.origin['redis_prefix_form']}"
            self.need(
                form in PREFIX_FORMS,
                "redis_prefix_form",
                form,
                f"is not one of {tuple(PREFIX_FORMS)}",
            )
            rule = PREFIX_FORMS[form]
        return rule, how

    def resolve(
        self,
        cls: type,
        table: str | None = None,
        *,
        names: Collection[str] | None = None,
        aliases: Mapping[str, tuple[str, ...]] = ENV_NAMES,
        urls: Collection[str] = (),
    ) -> dict[str, Any]:
        """The values of one section (a dataclass of defaults), coerced to their types.

        ``names`` limits it to some fields (the others keep their defaults, unread and
        unchecked); only a whole section checks the TOML table for unknown keys.
        """
        known = {f.name for f in fields(cls)} - {"sources", *TABLES}
        if names is None:
            for key in self._table(table):
                if key not in known and not (table is None and key in TABLES):
                    where = f"{table}.{key}" if table else key
                    raise SettingsError(f"{where}: unknown key in {self._file(table, key)}")
        defaults = cls()
        values: dict[str, Any] = {}
        for name in sorted(known if names is None else known & set(names)):
            label = f"{table}.{name}" if table else name
            default = getattr(defaults, name)
            raw = self._raw(table, name, aliases)
            if raw is None:
                values[name] = default
                continue
            if name == "processes":
                raw = parse_processes(raw)
            value = _coerce(label, default, raw)
            if name in urls:
                value = (
                    tuple(_check_url(label, u) for u in value)
                    if isinstance(value, tuple)
                    else _check_url(label, value)
                )
            values[name] = value
        return values

    def need(self, ok: bool, name: str, value: Any, why: str) -> None:
        """Raise the one-line error for a value that fails a check, naming its source."""
        if not ok:
            source = next(
                (v for k, v in self.origin.items() if name == k or name.startswith(f"{k}.")),
                "default",
            )
            raise SettingsError(f"{name}: {value!r} {why} (from {source})")


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    shared_only: bool = False,
    sources: Sources | None = None,
) -> Settings:
    """The top-level settings, checked; ``shared_only`` (the workers): just ``SHARED``.

    With ``shared_only`` the gateway's own settings keep their defaults, so a bad one
    cannot stop the workers.
    """
    sources = sources or Sources(environ)
    names = SHARED if shared_only else None
    values = sources.resolve(Settings, names=names, urls={"instances"})
    if not shared_only:
        values["database"] = DatabaseSettings(**sources.resolve(DatabaseSettings, "database"))
        queues = sources.resolve(
            QueueSettings,
            "workers",
            names={f.name for f in fields(QueueSettings)},
        )
        values["workers"] = QueueSettings(**queues)
    settings = Settings(**values, sources=dict(sources.origin))
    _check_shared(settings, sources.need)
    if not shared_only:
        _check_gateway(settings, sources.need)
        _check_database(settings.database, sources.need)
    return settings


def describe(settings: Settings, **tables: object) -> list[tuple[str, str, str]]:
    """Rows of (setting, value, source) for ``check-config``, secrets masked.

    ``tables`` are the sections of other programs (e.g. ``workers=WorkerSettings``), whose
    sources ``settings.sources`` must hold; the gateway's own (``database``) are its fields.
    """
    rows = []
    for name, source in sorted(settings.sources.items()):
        table, _, attr = name.rpartition(".")
        section = (tables.get(table) or getattr(settings, table)) if table else settings
        value = getattr(section, attr)
        if isinstance(value, tuple):
            shown = ",".join(value)
        elif isinstance(value, Mapping):
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
        else:
            shown = str(value)
        if attr in SECRETS:
            shown = _mask(shown)
        rows.append((name, shown, source))
    return rows


def print_settings(rows: list[tuple[str, str, str]]) -> None:
    """Print ``describe``'s rows as aligned columns (``check-config``)."""
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value}  [{source}]")
