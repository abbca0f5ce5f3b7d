"""The workers' settings: the TOML table ``[workers]`` (env ``GATEWAY_WORKERS_*``).

Read by the gateway's one loader (``gateway.settings.Sources``), with the shared top-level
settings (Redis, MySQL, the API token, the log level) but none of the gateway's own: a bad
gateway value does not stop the workers, and a bad ``[workers]`` value stops only them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from gateway.settings import Need, Settings, Sources, load_settings

DEFAULT_QUEUES = (
    "messaging",
    "campaign-stats",
    "whatsapp-urgent",
    "whatsapp-high",
    "whatsapp-normal",
    "whatsapp-campaign",
)

# Env names besides GATEWAY_WORKERS_<NAME>.
ENV_NAMES: Mapping[str, tuple[str, ...]] = {"gateway_url": ("GATEWAY_URL",)}


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


def _check(w: WorkerSettings, need: Need) -> None:
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


def load_worker_settings(
    environ: Mapping[str, str] | None = None,
) -> tuple[Settings, WorkerSettings]:
    """The shared settings and ``[workers]``, checked; ``settings.sources`` names both."""
    sources = Sources(environ)
    settings = load_settings(shared_only=True, sources=sources)
    values = sources.resolve(WorkerSettings, "workers", aliases=ENV_NAMES, urls={"gateway_url"})
    workers = WorkerSettings(**values)
    _check(workers, sources.need)
    return replace(settings, sources=dict(sources.origin)), workers
