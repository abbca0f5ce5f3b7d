"""Prometheus collectors of one gateway process.

Each application gets its own registry so several gateways can live in one process (tests).
Labels are bounded by design: route templates, methods, statuses, instance URLs and fixed
kinds. Never a session id, phone number or key (an instance URL holds no credentials: the
settings refuse one that does). An instance URL is the label ``upstream``: ``instance`` is
Prometheus's own label for the scraped target, and ours would be stored as
``exported_instance``.

Under ``--processes N`` the parent points ``PROMETHEUS_MULTIPROC_DIR`` at a directory of its
own: every child writes its values there and ``/metrics`` on any child answers for all of
them (counters and histograms summed; the instance gauges as last set, by the child that
answers the scrape; ``gateway_redis_up`` and ``gateway_pin_mirror_up`` the lowest of the live
children).
"""

from __future__ import annotations

import asyncio
import math
import os
from bisect import bisect_left
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_DIR = "PROMETHEUS_MULTIPROC_DIR"
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# Seconds a tallied count may wait before it is in the collectors (see ``GatewayMetrics``).
FLUSH_EVERY = 1.0

__all__ = ["CONTENT_TYPE_LATEST", "DatabaseMetrics", "GatewayMetrics"]

# No ``*_created`` series beside every counter and histogram: one per labelled child doubles
# what Prometheus stores, and nothing here reads them.
disable_created_metrics()


@dataclass
class GatewayMetrics:
    """The gateway's collectors.

    Answered requests are tallied in plain dicts and added to the collectors in bulk, at
    most ``FLUSH_EVERY`` seconds later and before every scrape: an update of a collector
    takes a lock, and under ``--processes N`` it is a locked write to a shared file after a
    check of the process id (a system call), three per request.
    """

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _database: DatabaseMetrics | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        r = self.registry
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        # (route, method, status, upstream) -> [count, seconds, one count per bucket]
        self._tally: dict[tuple[str, str, int, str], list[float]] = {}
        self._counts: dict[Any, int] = {}  # a counter's child -> what is not added yet
        self._bounds = (*LATENCY_BUCKETS, math.inf)
        self._flush_at: asyncio.TimerHandle | None = None
        r.register(_FlushFirst(self))  # first, so whoever reads the registry reads it all
        # process_* (CPU, memory, open files, start time) of the process that answers.
        ProcessCollector(registry=r)
        self.requests = Counter(
            "gateway_requests",
            "Requests answered, by route template, method, status and instance.",
            ["route", "method", "status", "upstream"],
            registry=r,
        )
        self.latency = Histogram(
            "gateway_request_duration_seconds",
            "Time to answer a request, by route template.",
            ["route", "method"],
            registry=r,
            buckets=LATENCY_BUCKETS,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors",
            "Failed calls to an instance, by kind: not sent (refused, connect_timeout, dns, "
            "tls) or sent (timeout, reset, bad_response).",
            ["upstream", "kind"],
            registry=r,
        )
        self.pool_wait = Histogram(
            "gateway_upstream_pool_wait_seconds",
            "Time a call waited for a free connection to its instance "
            "(max_connections_per_instance reached).",
            ["upstream"],
            registry=r,
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5),
        )
        self.placements = Counter(
            "gateway_placements", "New sessions placed, by instance.", ["upstream"], registry=r
        )
        self.pin_cache = Counter(
            "gateway_pin_cache",
            "Pin look-ups answered from memory (hit) or Redis (miss).",
            ["result"],
            registry=r,
        )
        self.instance_up = Gauge(
            "gateway_instance_up",
            "1 when the instance passes its health checks.",
            ["upstream"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.instance_draining = Gauge(
            "gateway_instance_draining",
            "1 when the instance takes no new sessions.",
            ["upstream"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.active_sessions = Gauge(
            "gateway_instance_active_sessions",
            "Active sessions the gateway counts on the instance.",
            ["upstream"],
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.state_changes = Counter(
            "gateway_instance_state_changes",
            "Instance went up or down.",
            ["upstream", "state"],
            registry=r,
        )
        self.rediscoveries = Counter(
            "gateway_rediscoveries",
            "Searches for a session not where its pin said, by result.",
            ["result"],
            registry=r,
        )
        self.replays = Counter(
            "gateway_replays",
            "Requests sent again to the instance that really holds the session.",
            ["upstream"],
            registry=r,
        )
        self.reconcile_corrections = Counter(
            "gateway_reconcile_corrections",
            "Pins fixed by reconciliation, by kind (moved, added, removed).",
            ["kind"],
            registry=r,
        )
        self.webhooks_received = Counter(
            "gateway_webhooks_received",
            "Webhook events queued for the backend, by event name (unknown names: other).",
            ["event"],
            registry=r,
        )
        self.webhooks_rejected = Counter(
            "gateway_webhooks_rejected",
            "Webhook events refused, by reason (missing_headers, bad_timestamp,"
            " stale_timestamp, bad_signature, too_large, off, redis_down, not_replicated).",
            ["reason"],
            registry=r,
        )
        self.webhooks_duplicates = Counter(
            "gateway_webhooks_duplicates",
            "Webhook events not kept, by kind (replay: the same signature again; repeat: an"
            " instance's retry of its session's last event within the dedup window).",
            ["kind"],
            registry=r,
        )
        self.webhook_pins = Counter(
            "gateway_webhook_pins",
            "Sessions re-pinned from a webhook event, by instance.",
            ["upstream"],
            registry=r,
        )
        self.idempotency = Counter(
            "gateway_idempotency",
            "Requests with an Idempotency-Key, by result: forwarded (the first), replayed (a"
            " kept answer, no instance asked), in_flight and unknown (409), mismatch (422),"
            " unavailable (503: Redis could not hold the key).",
            ["result"],
            registry=r,
        )
        self.backend_calls = Counter(
            "gateway_backend_calls",
            "Instances' calls to the backend (other than events), by result: forwarded,"
            " refused (no proof of an instance), unreachable, timeout, failed.",
            ["result"],
            registry=r,
        )
        self.pin_events = Counter(
            "gateway_pin_events",
            "Pin changes published by other gateway processes, by result (applied, bad).",
            ["result"],
            registry=r,
        )
        self.pin_mirror_up = Gauge(
            "gateway_pin_mirror_up",
            "1 while this process's memory follows the other processes' pin changes; "
            "0 while it reads pins from Redis instead.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.redis_up = Gauge(
            "gateway_redis_up",
            "1 while Redis answers; 0 while the gateway runs from memory.",
            registry=r,
            multiprocess_mode="livemin",
        )

    def database(self) -> DatabaseMetrics:
        """The write-behind's collectors, registered on first use: a gateway without a
        database shows no ``gateway_db_up 0`` to alert on, and a reload reuses them."""
        if self._database is None:
            self._database = DatabaseMetrics(self.registry)
        return self._database

    def child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once per process: ``labels()`` costs
        microseconds, and the request path would pay it several times per request."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def request_done(
        self, route: str, method: str, status: int, instance: str, seconds: float
    ) -> None:
        """Count and time one answered request (tallied: see the class)."""
        key = (route, method, status, instance)
        row = self._tally.get(key)
        if row is None:
            row = self._tally[key] = [0, 0.0] + [0] * len(self._bounds)
            self._flush_soon()
        row[0] += 1
        row[1] += seconds
        row[2 + bisect_left(self._bounds, seconds)] += 1  # the first bucket it fits

    def count(self, metric: Counter, *labels: str) -> None:
        """``metric.labels(*labels).inc()``, tallied (see the class)."""
        child = self.child(metric, *labels)
        counts = self._counts
        if child in counts:
            counts[child] += 1
        else:
            counts[child] = 1
            self._flush_soon()

    def _flush_soon(self) -> None:
        if self._flush_at is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop (a tool, a test): added when the registry is read
            return
        self._flush_at = loop.call_later(FLUSH_EVERY, self.flush)

    def flush(self) -> None:
        """Add what was tallied to the collectors."""
        if self._flush_at is not None:
            self._flush_at.cancel()
            self._flush_at = None
        counts, self._counts = self._counts, {}
        for child, n in counts.items():
            child.inc(n)
        tally, self._tally = self._tally, {}
        for (route, method, status, instance), row in tally.items():
            self.child(self.requests, route, method, str(status), instance).inc(row[0])
            timed = self.child(self.latency, route, method)
            # Histogram.observe, for many observations at once.
            timed._sum.inc(row[1])
            for bucket, count in zip(timed._buckets, row[2:], strict=True):
                if count:
                    bucket.inc(count)

    def render(self) -> bytes:
        """This process's metrics, or every child's together under ``--processes N``."""
        path = os.environ.get(MULTIPROC_DIR)
        if not path:
            return generate_latest(self.registry)  # reading it adds the tallies first
        self.flush()  # into this process's file, read below with the others'
        everyone = CollectorRegistry()
        MultiProcessCollector(everyone, path)
        ProcessCollector(registry=everyone)  # the process answering this scrape
        return generate_latest(everyone)


class _FlushFirst(Collector):
    """Adds the tallies to the collectors whenever the registry is read."""

    def __init__(self, metrics: GatewayMetrics) -> None:
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return []  # names no metric of its own (and is not collected to find out)

    def collect(self) -> list[Metric]:
        self.metrics.flush()
        return []


@dataclass
class DatabaseMetrics:
    """The write-behind to the backend's table. The queue is shared: every process reports
    the same backlog, so several processes show the largest; ``up`` is the lowest."""

    registry: CollectorRegistry

    def __post_init__(self) -> None:
        r = self.registry
        self.up = Gauge(
            "gateway_db_up",
            "1 while the gateway can use the backend's table; 0 after a failure.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.pending = Gauge(
            "gateway_db_pending_updates",
            "Placements and moves waiting to be written to the backend's table (all processes).",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.oldest = Gauge(
            "gateway_db_oldest_pending_seconds",
            "Age of the oldest update not yet written; 0 when none waits.",
            registry=r,
            multiprocess_mode="livemax",
        )
        self.writes = Counter(
            "gateway_db_writes",
            "Updates handled by the writer, by result (written, unchanged, no_row, failed).",
            ["result"],
            registry=r,
        )
