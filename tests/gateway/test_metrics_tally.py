"""Requests tallied and added in bulk read exactly as requests counted one by one."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.registry import Collector

from gateway.metrics import LATENCY_BUCKETS, GatewayMetrics
from tests.harness import eventually

REQUESTS = [
    ("/api/sessions/{id}/{action}", "GET", 200, "http://a", 0.0004),
    ("/api/sessions/{id}/{action}", "GET", 200, "http://a", 0.001),  # on a bucket's bound
    ("/api/sessions/{id}/{action}", "GET", 404, "http://b", 0.03),
    ("/api/messages/{action}", "POST", 200, "http://a", 0.7),
    ("/api/messages/{action}", "POST", 504, "http://a", 75.0),  # past the last bound
]


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(collectors: Iterable[Collector]) -> Samples:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for collector in collectors
        for family in collector.collect()
        if family.name in ("gateway_requests", "gateway_request_duration_seconds")
        for s in family.samples
        if not s.name.endswith("_created")
    }


def written(metrics: GatewayMetrics) -> Samples:
    """What the collectors hold (read from them, not through the registry, which flushes)."""
    return samples([metrics.requests, metrics.latency])


def counted_one_by_one(rounds: int = 3) -> CollectorRegistry:
    """The same requests, each added to collectors of the same names as it comes."""
    registry = CollectorRegistry()
    requests = Counter(
        "gateway_requests", "", ["route", "method", "status", "upstream"], registry=registry
    )
    latency = Histogram(
        "gateway_request_duration_seconds",
        "",
        ["route", "method"],
        registry=registry,
        buckets=LATENCY_BUCKETS,
    )
    for _ in range(rounds):
        for route, method, status, upstream, seconds in REQUESTS:
            requests.labels(route, method, str(status), upstream).inc()
            latency.labels(route, method).observe(seconds)
    return registry


async def test_a_tally_adds_up_to_what_counting_each_request_gives() -> None:
    tallied = GatewayMetrics(CollectorRegistry())
    for _ in range(3):
        for request in REQUESTS:
            tallied.request_done(*request)
    assert written(tallied) == {}  # nothing written yet
    assert samples([tallied.registry]) == samples([counted_one_by_one()])  # a read adds it
    assert b"gateway_requests_total" in tallied.render()
    assert (
        written(tallied)[
            (
                "gateway_requests_total",
                (
                    ("method", "GET"),
                    ("route", "/api/sessions/{id}/{action}"),
                    ("status", "200"),
                    ("upstream", "http://a"),
                ),
            )
        ]
        == 6
    )


async def test_a_tally_is_written_within_a_second_without_a_scrape() -> None:
    tallied = GatewayMetrics(CollectorRegistry())
    tallied.request_done(*REQUESTS[0])

    async def in_the_collectors() -> bool:
        return bool(written(tallied))

    await eventually(in_the_collectors, timeout=3)


def test_without_an_event_loop_the_tally_is_read_in_full() -> None:
    tallied = GatewayMetrics(CollectorRegistry(auto_describe=True))  # describes its collectors
    for request in REQUESTS:
        tallied.request_done(*request)
    assert samples([tallied.registry]) == samples([counted_one_by_one(rounds=1)])


async def test_metrics_show_the_process_and_no_created_series(simulators, gateways, http):
    sims = await simulators(1)
    gw = await gateways([sims[0].url])
    async with http.get(f"{gw.url}/health") as r:
        assert r.status == 200
    async with http.get(f"{gw.url}/metrics") as r:
        text = await r.text()
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line[:1] != "#"}
    assert {"process_resident_memory_bytes", "process_open_fds"} <= names
    assert "gateway_requests_total" in names
    assert not [n for n in names if n.endswith("_created")]
