"""Prometheus metrics of one worker process (``--metrics-port``, 0 disables).

Labels are queue names and outcomes only: never a session id or a phone number.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
    start_http_server,
)

from gateway.shared.laravel.queues import Depth
from gateway.shared.outbox import Backlog

disable_created_metrics()  # no *_created series beside every counter: nothing reads them

OUTCOMES = ("done", "retried", "failed", "timed_out", "paced")
# From a busy backend's milliseconds to a day-long outage's retries.
LAG_BUCKETS = (0.01, 0.05, 0.25, 1, 5, 30, 60, 300, 900, 3600, 21600, 86400)


class WorkerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        # process_start_time_seconds and friends: restarts show as changes of the start time.
        ProcessCollector(registry=self.registry)
        self.jobs = Counter(
            "workers_jobs",
            "Job attempts by queue and outcome: done, retried, failed; timed_out counts"
            " attempts that hit their timeout (also counted as retried or failed); paced"
            " counts jobs put back to respect min_send_interval (not an attempt).",
            ["queue", "outcome"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "workers_job_duration_seconds",
            "Time a handler ran, by queue.",
            ["queue"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300),
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "workers_jobs_in_flight", "Jobs this process is running.", registry=self.registry
        )
        self.unsettled = Gauge(
            "workers_jobs_unsettled",
            "Finished jobs whose outcome waits in memory for Redis or MySQL to answer.",
            registry=self.registry,
        )
        self.unreplicated = Counter(
            "workers_outcomes_unreplicated",
            "Job outcomes Redis kept but fewer than redis_min_replicas replicas confirmed in"
            " time (WAIT); each is kept and written again until they do.",
            registry=self.registry,
        )
        self.waiting_for_database = Gauge(
            "workers_failed_jobs_waiting_for_database",
            "Failed jobs kept in Redis (queues:failed-pending, all processes) until MySQL"
            " answers and they are written to failed_jobs.",
            registry=self.registry,
        )
        self.depth = Gauge(
            "workers_queue_jobs",
            "Jobs in each queue by state: waiting, delayed, reserved (all processes).",
            ["queue", "state"],
            registry=self.registry,
        )
        self.oldest = Gauge(
            "workers_queue_oldest_waiting_seconds",
            "Age of the job at the head of the queue; 0 when empty, NaN when it has no push"
            " time (pushedAt or createdAt).",
            ["queue"],
            registry=self.registry,
        )

        self.webhooks = Counter(
            "workers_webhooks",
            "Webhook delivery attempts by outcome: delivered, retried, dead_lettered.",
            ["outcome"],
            registry=self.registry,
        )
        self.webhook_lag = Histogram(
            "workers_webhook_delivery_lag_seconds",
            "Time from the gateway receiving a webhook event to the backend's 2xx.",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.webhook_backlog = Gauge(
            "workers_webhook_backlog",
            "Webhook events waiting for delivery (all processes).",
            registry=self.registry,
        )
        self.webhook_sessions = Gauge(
            "workers_webhook_sessions_waiting",
            "Sessions (and the shared lane) with webhook events waiting.",
            registry=self.registry,
        )
        self.webhook_oldest = Gauge(
            "workers_webhook_oldest_waiting_seconds",
            "Age of the oldest webhook event waiting; 0 when none waits.",
            registry=self.registry,
        )
        self.webhook_dead = Gauge(
            "workers_webhook_dead_letters",
            "Dead-lettered webhook events kept for `python -m workers failed`.",
            registry=self.registry,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        if port:
            start_http_server(port, addr=host, registry=self.registry)

    def observe_webhooks(self, backlog: Backlog) -> None:
        self.webhook_backlog.set(backlog.waiting)
        self.webhook_sessions.set(backlog.lanes)
        self.webhook_oldest.set(backlog.oldest_age or 0.0)
        self.webhook_dead.set(backlog.dead)

    def observe_depths(self, depths: Iterable[Depth]) -> None:
        for d in depths:
            self.depth.labels(d.queue, "waiting").set(d.waiting)
            self.depth.labels(d.queue, "delayed").set(d.delayed)
            self.depth.labels(d.queue, "reserved").set(d.reserved)
            if d.waiting == 0:
                self.oldest.labels(d.queue).set(0)
            else:
                self.oldest.labels(d.queue).set(math.nan if d.oldest_age is None else d.oldest_age)
