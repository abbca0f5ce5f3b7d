"""The settings' checks: one line naming a bad value, its secret parts masked."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from gateway.shared.laravel.prefix_rule import PREFIX_FORMS
from gateway.shared.redis_url import RedisUrlError, sentinel_target
from gateway.shared.settings import (
    BACKEND_SEES,
    HTTP_ENGINES,
    IDENTIFIER,
    LOG_FORMATS,
    LOG_LEVELS,
    PLACEMENTS,
    WEBHOOK_PATH,
    DatabaseSettings,
    Need,
    Settings,
    SettingsError,
)


def parse_processes(value: Any) -> Any:
    """``auto`` is one gateway process per core; anything else is checked as a number."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return os.cpu_count() or 1
    return value


def check_url(name: str, url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise SettingsError(f"{name}: {url!r} is not an http(s) URL")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise SettingsError(f"{name}: {url!r} has a bad port") from None
    return url.rstrip("/")


def coerce(name: str, target: Any, value: Any) -> Any:
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


def check_shared(s: Settings, need: Need) -> None:
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
        mask(s.redis_url),
        "is not a redis:// (or redis+sentinel://) URL",
    )
    try:
        sentinel_target(s.redis_url)
    except RedisUrlError as exc:
        need(False, "redis_url", mask(s.redis_url), str(exc).removeprefix("redis_url: "))
    if s.mysql_dsn:
        need(
            urlsplit(s.mysql_dsn).scheme in ("mysql", "mariadb"),
            "mysql_dsn",
            mask(s.mysql_dsn),
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


def check_gateway(s: Settings, need: Need) -> None:
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
            mask(url),
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
    _check_view(s, need)
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
def _place(url: str) -> tuple[str, int | None]:
    """Host and port, ``localhost`` as ``127.0.0.1``: two URLs of one server compare equal."""
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    return ("127.0.0.1" if host == "localhost" else host), parts.port


def _check_view(s: Settings, need: Need) -> None:
    need(
        s.backend_sees in BACKEND_SEES,
        "backend_sees",
        s.backend_sees,
        f"is not one of {BACKEND_SEES}",
    )
    if s.backend_sees != "gateway" or not s.public_url:
        return
    need(
        _place(s.public_url) not in {_place(url) for url in s.instances},
        "public_url",
        s.public_url,
        "is an instance, not the gateway: point the backend's WHATSAPP_NODEJS_URL at the"
        " gateway (or set GATEWAY_PUBLIC_URL), or set backend_sees = instance",
    )


SECRET_PARAMS = re.compile(r"([?&](?:password|passwd|pass|pwd|secret|token)=)[^&#]*", re.I)


def check_database(d: DatabaseSettings, need: Need) -> None:
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


def mask(value: str) -> str:
    """Hide the password of a URL (userinfo or query string), or the whole of a bare secret."""
    parts = urlsplit(value)
    if not parts.scheme:
        return "***" if value else ""
    if parts.password:
        value = value.replace(f":{parts.password}@", ":***@", 1)
    return SECRET_PARAMS.sub(r"\1***", value)
