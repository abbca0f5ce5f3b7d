"""Tries, timeout and backoff: pure decisions, so Laravel's rules are tested without I/O.

A job's own ``maxTries``, ``timeout``, ``backoff``, ``retryUntil`` and ``failOnTimeout`` win
over the pool's defaults, as in Laravel's worker. ``maxTries`` 0 means unlimited, and a job
with ``retryUntil`` is retried until that time whatever its attempts. An attempt whose
outcome is unknown (a message may have gone out) is not retried unless the job says
``"retryUnknown": true`` or its queue is listed in ``retry_unknown_queues``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNKNOWN_OUTCOME = "outcome unknown: not retried to avoid a duplicate message"


@dataclass(frozen=True, slots=True)
class Policy:
    """The pool's defaults (``--tries``, ``--timeout``, ``--backoff``)."""

    tries: int = 3
    timeout: float = 300.0
    backoff: tuple[float, ...] = (10.0, 60.0, 300.0)


@dataclass(frozen=True, slots=True)
class Retry:
    delay: float


@dataclass(frozen=True, slots=True)
class Fail:
    reason: str


def parse_backoff(value: Any) -> tuple[float, ...] | None:
    """``10``, ``"10,60,300"`` or ``[10, 60]`` as seconds; ``None`` when unset or unusable."""
    if value is None or isinstance(value, bool):
        return None
    items = value if isinstance(value, list) else str(value).split(",")
    try:
        delays = tuple(max(0.0, float(item)) for item in items)
    except (TypeError, ValueError):
        return None
    return delays or None


def tries_for(payload: dict[str, Any], policy: Policy) -> int:
    """Attempts allowed; 0 means no limit."""
    value = payload.get("maxTries")
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return policy.tries


def timeout_for(payload: dict[str, Any], policy: Policy) -> float | None:
    """Seconds an attempt may run; None for none: a job's ``timeout`` of 0, as Laravel's
    worker reads ``$timeout = 0`` (its alarm is never set)."""
    value = payload.get("timeout")
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return float(value) or None
    return policy.timeout


def backoff_for(payload: dict[str, Any], attempts: int, policy: Policy) -> float:
    """Delay before the next try: the attempts-th entry, the last one repeating."""
    delays = parse_backoff(payload.get("backoff")) or policy.backoff
    return delays[min(max(attempts, 1), len(delays)) - 1]


def _retry_until(payload: dict[str, Any]) -> float | None:
    value = payload.get("retryUntil")
    if isinstance(value, int | float) and not isinstance(value, bool) and value > 0:
        return float(value)
    return None


def exceeded(payload: dict[str, Any], attempts: int, policy: Policy, now: float) -> bool:
    """True when a job must fail before running: its attempts or its time are already spent.

    This catches jobs whose worker died on every try: each expired reservation ran them
    again with one more attempt, so they never reached the error path.
    """
    until = _retry_until(payload)
    if until is not None:
        return now > until
    tries = tries_for(payload, policy)
    return tries > 0 and attempts > tries


def after_error(
    payload: dict[str, Any],
    attempts: int,
    policy: Policy,
    now: float,
    *,
    timed_out: bool,
    unknown: bool = False,
    retry_unknown: bool = False,
    wait: float | None = None,
) -> Retry | Fail:
    """What happens to a job whose attempt raised or timed out.

    ``unknown``: the attempt may have acted; ``retry_unknown``: its queue retries those
    anyway; ``wait``: the delay the other side asked for (``Retry-After``), which replaces
    the backoff.
    """
    if unknown and not (retry_unknown or payload.get("retryUnknown") is True):
        return Fail(UNKNOWN_OUTCOME)
    if timed_out and payload.get("failOnTimeout") is True:
        return Fail("timed out and failOnTimeout is set")
    until = _retry_until(payload)
    if until is not None:
        if until <= now:
            return Fail("retryUntil has passed")
    else:
        tries = tries_for(payload, policy)
        if tries > 0 and attempts >= tries:
            return Fail(f"tried {attempts} times")
    return Retry(backoff_for(payload, attempts, policy) if wait is None else wait)
