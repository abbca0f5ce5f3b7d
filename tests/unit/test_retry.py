"""Laravel's tries / timeout / backoff rules, as pure functions."""

from __future__ import annotations

import pytest

from workers.retry import (
    UNKNOWN_OUTCOME,
    Fail,
    Policy,
    Retry,
    after_error,
    backoff_for,
    exceeded,
    parse_backoff,
    timeout_for,
    tries_for,
)

POLICY = Policy(tries=3, timeout=300, backoff=(10, 60, 300))
NOW = 1_700_000_000.0


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        (5, (5.0,)),
        ("60,180,600", (60.0, 180.0, 600.0)),
        ([1, 2], (1.0, 2.0)),
        ("x,1", None),
        (True, None),
    ],
)
def test_parse_backoff(value: object, expected: tuple[float, ...] | None) -> None:
    assert parse_backoff(value) == expected


def test_backoff_uses_the_attempts_entry_and_repeats_the_last() -> None:
    assert [backoff_for({}, n, POLICY) for n in (1, 2, 3, 4, 9)] == [10, 60, 300, 300, 300]
    job = {"backoff": "1,2"}
    assert [backoff_for(job, n, POLICY) for n in (1, 2, 3)] == [1, 2, 2]
    assert backoff_for({"backoff": 7}, 2, POLICY) == 7


def test_the_jobs_own_tries_and_timeout_win() -> None:
    assert tries_for({}, POLICY) == 3
    assert tries_for({"maxTries": None}, POLICY) == 3
    assert tries_for({"maxTries": 5}, POLICY) == 5
    assert tries_for({"maxTries": 0}, POLICY) == 0
    assert timeout_for({}, POLICY) == 300
    assert timeout_for({"timeout": 2}, POLICY) == 2
    assert timeout_for({"timeout": None}, POLICY) == 300
    assert timeout_for({"timeout": 0}, POLICY) is None  # Laravel: $timeout = 0 is none


def test_after_error_retries_until_the_last_try() -> None:
    assert after_error({}, 1, POLICY, NOW, timed_out=False) == Retry(10)
    assert after_error({}, 2, POLICY, NOW, timed_out=True) == Retry(60)
    assert isinstance(after_error({}, 3, POLICY, NOW, timed_out=False), Fail)
    assert isinstance(after_error({"maxTries": 1}, 1, POLICY, NOW, timed_out=False), Fail)
    assert after_error({"maxTries": 0}, 50, POLICY, NOW, timed_out=False) == Retry(300)


def test_fail_on_timeout_and_retry_until() -> None:
    assert isinstance(after_error({"failOnTimeout": True}, 1, POLICY, NOW, timed_out=True), Fail)
    assert after_error({"failOnTimeout": True}, 1, POLICY, NOW, timed_out=False) == Retry(10)
    later = {"retryUntil": NOW + 60}
    assert after_error(later, 9, POLICY, NOW, timed_out=False) == Retry(300)
    assert isinstance(after_error({"retryUntil": NOW - 1}, 1, POLICY, NOW, timed_out=False), Fail)


def test_exceeded_before_running() -> None:
    assert not exceeded({}, 3, POLICY, NOW)
    assert exceeded({}, 4, POLICY, NOW)
    assert not exceeded({"maxTries": 0}, 99, POLICY, NOW)
    assert not exceeded({"retryUntil": NOW + 1}, 99, POLICY, NOW)
    assert exceeded({"retryUntil": NOW - 1}, 1, POLICY, NOW)


def test_an_unknown_outcome_fails_at_once_unless_the_job_or_queue_asks() -> None:
    unknown = Fail(UNKNOWN_OUTCOME)
    assert after_error({}, 1, POLICY, NOW, timed_out=False, unknown=True) == unknown
    assert after_error({"maxTries": 0}, 1, POLICY, NOW, timed_out=True, unknown=True) == unknown
    asks = {"retryUnknown": True}
    assert after_error(asks, 1, POLICY, NOW, timed_out=False, unknown=True) == Retry(10)
    assert after_error({"retryUnknown": "yes"}, 1, POLICY, NOW, timed_out=False, unknown=True) == (
        unknown
    )
    by_queue = after_error({}, 1, POLICY, NOW, timed_out=False, unknown=True, retry_unknown=True)
    assert by_queue == Retry(10)
    assert isinstance(after_error(asks, 3, POLICY, NOW, timed_out=False, unknown=True), Fail)


def test_the_wait_asked_for_replaces_the_backoff() -> None:
    assert after_error({}, 1, POLICY, NOW, timed_out=False, wait=2.5) == Retry(2.5)
    assert isinstance(after_error({}, 3, POLICY, NOW, timed_out=False, wait=2.5), Fail)
