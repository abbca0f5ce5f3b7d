"""Requests tallied and added in bulk (the default under ``--processes``) read exactly as
requests counted one by one."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.metrics import Metrics
from tests.conftest import eventually

REQUESTS = [
    ("/api/sessions/{id}/{action}", "GET", 200, "http://a", 0.0004),
    ("/api/sessions/{id}/{action}", "GET", 200, "http://a", 0.001),  # on a bucket's bound
    ("/api/sessions/{id}/{action}", "GET", 404, "http://b", 0.03),
    ("/api/messages/{action}", "POST", 200, "http://a", 0.7),
    ("/api/messages/{action}", "POST", 504, "http://a", 75.0),  # past the last bound
]


def samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in metrics.registry.collect()
        if family.name in ("gateway_requests", "gateway_request_duration_seconds")
        for s in family.samples
        if not s.name.endswith("_created")
    }


async def test_a_tally_adds_up_to_what_counting_each_request_gives() -> None:
    one_by_one = Metrics(CollectorRegistry(), batched=False)
    tallied = Metrics(CollectorRegistry(), batched=True)
    for _ in range(3):
        for request in REQUESTS:
            one_by_one.request_done(*request)
            tallied.request_done(*request)
    assert samples(tallied) == {}  # nothing written yet
    tallied.render()  # a scrape adds the tally first
    assert samples(tallied) == samples(one_by_one)
    assert (
        samples(tallied)[
            (
                "gateway_requests_total",
                (
                    ("instance", "http://a"),
                    ("method", "GET"),
                    ("route", "/api/sessions/{id}/{action}"),
                    ("status", "200"),
                ),
            )
        ]
        == 6
    )


async def test_a_tally_is_written_within_a_second_without_a_scrape() -> None:
    tallied = Metrics(CollectorRegistry(), batched=True)
    tallied.request_done(*REQUESTS[0])

    async def written() -> bool:
        return bool(samples(tallied))

    await eventually(written, timeout=3)
