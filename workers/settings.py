"""The workers' settings: the TOML table ``[workers]`` (env ``GATEWAY_WORKERS_*``).

Read by the one loader (``gateway.shared.loader.Sources``), with the shared top-level
settings (Redis, MySQL, the API token, the log level) but none of the gateway's own: a bad
gateway value does not stop the workers, and a bad ``[workers]`` value stops only them.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from gateway.shared.loader import Sources, load_settings
from gateway.shared.settings import DEFAULT_QUEUES, Need, Settings

# Env names besides GATEWAY_WORKERS_<NAME>.
ENV_NAMES: Mapping[str, tuple[str, ...]] = {
    "gateway_url": ("GATEWAY_URL",),
    "laravel_url": ("LARAVEL_URL",),
    "timezone": ("APP_TIMEZONE",),
    "laravel_app_path": ("LARAVEL_APP_PATH",),
}


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
    metrics_host: str = "127.0.0.1"  # where /metrics listens; "0.0.0.0" for every interface
    gateway_url: str = "http://127.0.0.1:8080"
    # The campaign queue's sends of one number 3 s apart (as shipped in config/gateway.toml).
    min_send_interval: Mapping[str, float] = field(
        default_factory=lambda: {"messaging": 0.0, "whatsapp-campaign": 3.0}
    )
    handlers: Mapping[str, str] = field(default_factory=dict)
    retry_unknown_queues: tuple[str, ...] = ()
    laravel_url: str = ""  # where webhook events are delivered; empty: not delivered
    webhook_concurrency: int = 10
    webhook_timeout: float = 30.0
    webhook_max_age: float = 86400.0
    webhook_backoff_base: float = 1.0
    webhook_backoff_cap: float = 300.0
    laravel_connection: str = "redis"  # the app's name of this queue connection (failed_jobs)
    timezone: str = "UTC"  # the app's timezone, for failed_at
    php_workers: int = 2  # warm PHP processes for PHP job classes; 0: none
    php_binary: str = "php"
    laravel_app_path: str = ""  # default: the folder of LARAVEL_ENV_FILE if it holds the app


def _check(w: WorkerSettings, need: Need) -> None:
    need(bool(w.queues), "workers.queues", w.queues, "names no queue")
    need(w.concurrency >= 1, "workers.concurrency", w.concurrency, "must be at least 1")
    need(w.tries >= 0, "workers.tries", w.tries, "must be 0 (no limit) or more")
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
    if w.laravel_url:
        parts = urlsplit(w.laravel_url)
        need(
            parts.scheme in ("http", "https") and bool(parts.hostname),
            "workers.laravel_url",
            w.laravel_url,
            "is not an http(s) URL",
        )
    need(
        w.webhook_concurrency >= 1,
        "workers.webhook_concurrency",
        w.webhook_concurrency,
        "must be at least 1",
    )
    for name in ("webhook_timeout", "webhook_max_age", "webhook_backoff_base"):
        value = getattr(w, name)
        need(value > 0, f"workers.{name}", value, "must be greater than 0")
    need(
        w.webhook_backoff_cap >= w.webhook_backoff_base,
        "workers.webhook_backoff_cap",
        w.webhook_backoff_cap,
        "must be at least workers.webhook_backoff_base",
    )
    for queue, interval in w.min_send_interval.items():
        need(
            isinstance(interval, int | float) and interval >= 0,
            f"workers.min_send_interval.{queue}",
            interval,
            "is not a number of seconds >= 0",
        )
    try:
        ZoneInfo(w.timezone)
    except (ValueError, ZoneInfoNotFoundError):
        need(False, "workers.timezone", w.timezone, "is not a timezone name such as Asia/Jakarta")
    need(bool(w.laravel_connection), "workers.laravel_connection", "", "must not be empty")
    need(w.php_workers >= 0, "workers.php_workers", w.php_workers, "must be 0 (off) or more")
    for name, target in w.handlers.items():
        need(
            isinstance(target, str) and ":" in target,
            f"workers.handlers.{name}",
            target,
            "is not 'package.module:function'",
        )


def load_worker_settings(
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, WorkerSettings]:
    """The shared settings and ``[workers]``, checked; ``settings.sources`` names both."""
    sources = Sources(environ)
    settings = load_settings(shared_only=True, sources=sources)
    values = sources.resolve(WorkerSettings, "workers", aliases=ENV_NAMES, urls={"gateway_url"})
    env_file = (os.environ if environ is None else environ).get("LARAVEL_ENV_FILE", "")
    app = Path(env_file).parent
    if not values["laravel_app_path"] and env_file and (app / "bootstrap" / "app.php").is_file():
        values["laravel_app_path"] = str(app)
        sources.origin["workers.laravel_app_path"] = f"folder of LARAVEL_ENV_FILE ({env_file})"
    workers = WorkerSettings(**values)
    _check(workers, sources.need)
    return replace(settings, sources=dict(sources.origin)), workers
