"""Pure decisions, tested without I/O: routes, placement, balance."""

from __future__ import annotations

import pytest

from gateway.decisions.placement import (
    is_balanced,
    least_loaded,
    preferred_instance,
    shard,
    spread,
)
from gateway.decisions.route_table import Route, classify, valid_session_id

A, B, C = "http://a", "http://b", "http://c"


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/api/sessions", Route("/api/sessions")),
        ("/api/sessions/s1", Route("/api/sessions/{id}", "s1")),
        ("/api/sessions/s1/status", Route("/api/sessions/{id}/{action}", "s1", "status")),
        ("/api/sessions/s1/restore", Route("/api/sessions/{id}/{action}", "s1", "restore")),
        ("/api/messages/send-media", Route("/api/messages/{action}")),
        ("/api/messages/s1/validate", Route("/api/messages/{id}/{action}", "s1")),
        (
            "/api/internal/sessions/s1/last-activity",
            Route("/api/internal/sessions/{id}/last-activity", "s1"),
        ),
        ("/health", Route("/health")),
        ("/health/ready", Route("/health/{check}")),
        ("/", Route("/info")),
        ("/remoteauth/x/y", Route("/remoteauth/*")),
        ("/wp-admin/setup.php", Route("other")),
    ],
)
def test_classify(path: str, route: Route) -> None:
    assert classify(path) == route


def test_session_id_alphabet() -> None:
    assert valid_session_id("session_1732800000")
    assert valid_session_id("3f2c1e4a-9b7d-4c1e-8a2b-1c2d3e4f5a6b")
    assert valid_session_id("628123@c.us:1")
    assert not valid_session_id("")
    assert not valid_session_id("a" * 129)
    assert not valid_session_id("../etc")
    assert not valid_session_id("a b")


def test_least_loaded_picks_the_emptiest_first_on_a_tie() -> None:
    assert least_loaded([A, B, C], {A: 2, B: 1, C: 1}, 10) == B
    assert least_loaded([A, B, C], {}, 10) == A
    assert least_loaded([A, B], {A: 5, B: 5}, 5) is None
    assert least_loaded([A, B], {A: 5, B: 4}, 5) == B


def test_a_preferred_instance_wins_while_it_has_room() -> None:
    assert least_loaded([A, B, C], {A: 0, C: 9}, 10, preferred=C) == C
    assert least_loaded([A, B, C], {A: 0, C: 10}, 10, preferred=C) == A
    assert least_loaded([A, B], {}, 10, preferred=C) == A  # not eligible (down, draining)


def test_policies() -> None:
    urls = (A, B, C)
    assert preferred_instance("least_loaded", urls, 4, B) is None
    assert preferred_instance("workspace", urls, 4, B) == B
    assert preferred_instance("workspace", urls, 4, None) is None
    assert preferred_instance("shard", urls, 4, None) == B == shard(urls, 4)
    assert preferred_instance("shard", urls, None, None) is None


def test_balance_rule_of_the_seed() -> None:
    assert is_balanced([10, 10, 11, 10])
    assert not is_balanced([10, 10, 11, 9])  # exactly 20 %: not under it
    assert not is_balanced([10, 10, 10, 7])
    assert is_balanced([0, 0, 0, 0])


def test_the_spread_says_which_instance_is_off_the_mean_and_by_how_much() -> None:
    s = spread([12, 8, 10, 10])
    assert s.mean == 10 and s.spread == 0.4 and not s.balanced
    assert s.against_mean == (0.2, -0.2, 0.0, 0.0)
    assert spread([0, 0]).against_mean == (0.0, 0.0) and spread([0, 0]).balanced
    assert spread([]).spread == 0.0
