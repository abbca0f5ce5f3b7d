"""One settings loader for the gateway and the workers.

Precedence, highest first: the process environment, the Laravel ``.env`` file named by
``LARAVEL_ENV_FILE``, the TOML file (``GATEWAY_CONFIG``, default ``config/gateway.toml``),
then the defaults below. Reading the backend's own ``.env`` means one source of truth for
instance URLs, Redis and MySQL. A bad value stops start-up with one line naming it.
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

DEFAULT_CONFIG = "config/gateway.toml"
DEFAULT_INSTANCES = tuple(f"http://localhost:{port}" for port in range(3001, 3005))
DEFAULT_QUEUES = (
    "messaging",
    "campaign-stats",
    "whatsapp-urgent",
    "whatsapp-high",
    "whatsapp-normal",
    "whatsapp-campaign",
)
PLACEMENTS = ("least_loaded", "workspace", "shard")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


class SettingsError(ValueError):
    """A setting that cannot be used; its message is the one line shown to the operator."""


@dataclass(frozen=True)
class WorkerSettings:
    """Settings of ``python -m workers`` (TOML table ``[workers]``, env ``GATEWAY_WORKERS_*``)."""

    queues: tuple[str, ...] = DEFAULT_QUEUES
    concurrency: int = 10
    tries: int = 3
    timeout: float = 300.0
    backoff: str = "10,60,300"
    retry_after: float = 0.0  # 0: timeout + 30 s
    grace: float = 0.0  # 0: the timeout
    metrics_port: int = 9101
    gateway_url: str = "http://127.0.0.1:8080"
    min_send_interval: Mapping[str, float] = field(default_factory=dict)
    handlers: Mapping[str, str] = field(default_factory=dict)
    retry_unknown_queues: tuple[str, ...] = ()


@dataclass(frozen=True)
class Settings:
    """Everything the gateway and the workers read, after precedence and validation."""

    host: str = "127.0.0.1"
    port: int = 8080
    instances: tuple[str, ...] = DEFAULT_INSTANCES
    placement: str = "least_loaded"
    max_sessions_per_instance: int = 500
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_prefix: str = "laravel_database_"
    redis_timeout: float = 0.5
    mysql_dsn: str = ""
    laravel_api_token: str = ""
    admin_token: str = ""
    connect_timeout: float = 2.0
    read_timeout: float = 60.0
    max_body_bytes: int = 50 * 1024 * 1024
    health_interval: float = 5.0
    health_timeout: float = 2.0
    health_fall: int = 2
    health_rise: int = 2
    reconcile_interval: float = 30.0
    log_level: str = "INFO"
    workers: WorkerSettings = field(default_factory=WorkerSettings)
    sources: Mapping[str, str] = field(default_factory=dict, compare=False, repr=False)

    @property
    def key_prefix(self) -> str:
        """Prefix of every Redis key the gateway owns."""
        return f"{self.redis_prefix}wa-gateway:"


SECRETS = frozenset({"laravel_api_token", "admin_token", "redis_url", "mysql_dsn"})

# Env names besides GATEWAY_<NAME>: the ones the issue and Laravel's .env use.
ENV_NAMES: Mapping[str, tuple[str, ...]] = {
    "max_sessions_per_instance": ("WHATSAPP_MAX_SESSIONS_PER_INSTANCE",),
    "laravel_api_token": ("LARAVEL_API_TOKEN",),
    "gateway_url": ("GATEWAY_URL",),
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


def _redis_prefix_from(env: Mapping[str, str]) -> str | None:
    """Laravel's default prefix is the slug of APP_NAME followed by ``_database_``."""
    if "REDIS_PREFIX" in env:
        return env["REDIS_PREFIX"]
    if env.get("APP_NAME"):
        return re.sub(r"[^a-z0-9]+", "_", env["APP_NAME"].lower()).strip("_") + "_database_"
    return None


COMPOSITES: Mapping[str, Callable[[Mapping[str, str]], str | None]] = {
    "instances": _instances_from,
    "redis_url": _redis_url_from,
    "mysql_dsn": _mysql_dsn_from,
    "redis_prefix": _redis_prefix_from,
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


def _validate(s: Settings) -> None:
    def need(ok: bool, name: str, value: Any, why: str) -> None:
        if not ok:
            source = next(
                (v for k, v in s.sources.items() if name == k or name.startswith(f"{k}.")),
                "default",
            )
            raise SettingsError(f"{name}: {value!r} {why} (from {source})")

    need(1 <= s.port <= 65535, "port", s.port, "is out of range 1-65535")
    need(bool(s.instances), "instances", s.instances, "names no instance")
    seen: set[str] = set()
    for url in s.instances:
        need(url not in seen, "instances", url, "is listed twice")
        seen.add(url)
    need(s.placement in PLACEMENTS, "placement", s.placement, f"is not one of {PLACEMENTS}")
    need(s.log_level in LOG_LEVELS, "log_level", s.log_level, f"is not one of {LOG_LEVELS}")
    need(
        urlsplit(s.redis_url).scheme in ("redis", "rediss", "unix"),
        "redis_url",
        _mask(s.redis_url),
        "is not a redis:// URL",
    )
    if s.mysql_dsn:
        need(
            urlsplit(s.mysql_dsn).scheme in ("mysql", "mariadb"),
            "mysql_dsn",
            _mask(s.mysql_dsn),
            "is not a mysql:// DSN",
        )
    for name in ("max_sessions_per_instance", "max_body_bytes", "health_fall", "health_rise"):
        need(getattr(s, name) >= 1, name, getattr(s, name), "must be at least 1")
    for name in (
        "redis_timeout",
        "connect_timeout",
        "read_timeout",
        "health_interval",
        "health_timeout",
        "reconcile_interval",
    ):
        need(getattr(s, name) > 0, name, getattr(s, name), "must be greater than 0")
    w = s.workers
    need(bool(w.queues), "workers.queues", w.queues, "names no queue")
    need(w.concurrency >= 1, "workers.concurrency", w.concurrency, "must be at least 1")
    need(w.tries >= 1, "workers.tries", w.tries, "must be at least 1")
    need(w.timeout > 0, "workers.timeout", w.timeout, "must be greater than 0")
    need(
        0 <= w.metrics_port <= 65535,
        "workers.metrics_port",
        w.metrics_port,
        "is out of range 0-65535",
    )
    need(
        all(p.strip().isdigit() for p in w.backoff.split(",")),
        "workers.backoff",
        w.backoff,
        "is not a comma-separated list of seconds",
    )
    for queue, interval in w.min_send_interval.items():
        need(
            isinstance(interval, int | float) and interval >= 0,
            f"workers.min_send_interval.{queue}",
            interval,
            "is not a number of seconds >= 0",
        )
    for name, target in w.handlers.items():
        need(
            isinstance(target, str) and ":" in target,
            f"workers.handlers.{name}",
            target,
            "is not 'package.module:function'",
        )


def _mask(value: str) -> str:
    """Hide the password of a URL, or the whole of a bare secret."""
    parts = urlsplit(value)
    if parts.scheme and parts.password:
        return value.replace(f":{parts.password}@", ":***@", 1)
    if parts.scheme:
        return value
    return "***" if value else ""


# --- the loader ---------------------------------------------------------------------------


def _env_names(table: str | None, name: str) -> tuple[str, ...]:
    own = f"GATEWAY_{table}_{name}" if table else f"GATEWAY_{name}"
    return (*ENV_NAMES.get(name, ()), own.upper())


def _from_layer(table: str | None, name: str, layer: Mapping[str, str]) -> str | None:
    for env_name in _env_names(table, name):
        if env_name in layer:
            return layer[env_name]
    composite = COMPOSITES.get(name) if table is None else None
    return composite(layer) if composite else None


def _load_toml(path: Path, required: bool) -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise SettingsError(f"GATEWAY_CONFIG: {str(path)!r} does not exist")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"GATEWAY_CONFIG: {str(path)!r} is not valid TOML ({exc})") from None


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read every setting from its highest-precedence source, check it, and return them."""
    environ = os.environ if environ is None else environ
    dotenv_path = environ.get("LARAVEL_ENV_FILE", "")
    dotenv: dict[str, str] = {}
    if dotenv_path:
        try:
            dotenv = parse_dotenv(Path(dotenv_path).read_text())
        except OSError as exc:
            raise SettingsError(f"LARAVEL_ENV_FILE: {dotenv_path!r} ({exc.strerror})") from None
    toml_path = Path(environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))
    toml = _load_toml(toml_path, required="GATEWAY_CONFIG" in environ)
    layers = (
        ("env", environ),
        (f".env ({dotenv_path})", dotenv),
    )
    sources: dict[str, str] = {}

    def resolve(cls: type, table: str | None, toml_table: Mapping[str, Any]) -> Any:
        known = {f.name for f in fields(cls)} - {"workers", "sources"}
        nested = {"workers"} if table is None else set()
        for key in toml_table:
            if key not in known and key not in nested:
                where = f"{table}.{key}" if table else key
                raise SettingsError(f"{where}: unknown key in {toml_path}")
        defaults = cls()
        values: dict[str, Any] = {}
        for name in sorted(known):
            label = f"{table}.{name}" if table else name
            default = getattr(defaults, name)
            raw: Any = None
            for source, layer in layers:
                raw = _from_layer(table, name, layer)
                if raw is not None:
                    sources[label] = source
                    break
            if raw is None and name in toml_table:
                raw, sources[label] = toml_table[name], f"toml ({toml_path})"
            if raw is None:
                sources[label] = "default"
                values[name] = default
                continue
            value = _coerce(label, default, raw)
            if name == "instances":
                value = tuple(_check_url(label, u) for u in value)
            elif name == "gateway_url":
                value = _check_url(label, value)
            values[name] = value
        return values

    workers_toml = toml.get("workers", {})
    if not isinstance(workers_toml, dict):
        raise SettingsError(f"workers: must be a table in {toml_path}")
    workers = WorkerSettings(**resolve(WorkerSettings, "workers", workers_toml))
    top = resolve(Settings, None, toml)
    settings = Settings(**top, workers=workers, sources=sources)
    _validate(settings)
    return settings


def describe(settings: Settings) -> list[tuple[str, str, str]]:
    """Rows of (setting, value, source) for ``check-config``, secrets masked."""
    rows = []
    for name, source in sorted(settings.sources.items()):
        table, _, attr = name.rpartition(".")
        value = getattr(settings.workers if table else settings, attr)
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
