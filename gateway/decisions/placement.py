"""Where a new session goes: pure decisions, tested without I/O.

The same least-loaded rule runs inside Redis (``state.counts.PLACE``) so that concurrent
placements from several gateway processes see each other's reservations; this module is
the rule itself, used directly when Redis is away and to pick a policy's preferred
instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


def least_loaded(
    eligible: Sequence[str], loads: Mapping[str, int], limit: int, preferred: str | None = None
) -> str | None:
    """The preferred instance if it has room, else the one with the fewest sessions.

    Ties go to the first in ``eligible`` (configured order). ``None`` when all are full.
    """
    best: str | None = None
    for url in eligible:
        load = loads.get(url, 0)
        if load >= limit:
            continue
        if url == preferred:
            return url
        if best is None or load < loads.get(best, 0):
            best = url
    return best


def shard(instances: Sequence[str], workspace_id: int) -> str:
    """The seed's InstanceRouter: ``instances[workspace_id % N]``."""
    return instances[workspace_id % len(instances)]


def preferred_instance(
    policy: str,
    instances: Sequence[str],
    workspace_id: int | None,
    workspace_pin: str | None,
) -> str | None:
    """The instance a placement policy asks for before falling back to least-loaded."""
    if workspace_id is None or policy == "least_loaded":
        return None
    if policy == "workspace":
        return workspace_pin
    return shard(instances, workspace_id)


BALANCE_LIMIT = 0.2  # the seed's rule: balanced while (max - min) / mean is under 20 %


@dataclass(frozen=True, slots=True)
class Spread:
    """How far apart the instances' session counts are, as the ±20 % rule measures it."""

    mean: float
    spread: float  # (max - min) / mean; 0 for an empty fleet or one with no session
    against_mean: tuple[float, ...]  # each count's (count - mean) / mean, in the same order

    @property
    def balanced(self) -> bool:
        return self.spread < BALANCE_LIMIT


def spread(counts: Sequence[int]) -> Spread:
    """The spread of ``counts`` against their mean, so an operator sees which instance is
    over or under and by how much, not only whether the rule holds."""
    total = sum(counts)
    if not counts or total == 0:
        return Spread(0.0, 0.0, tuple(0.0 for _ in counts))
    mean = total / len(counts)
    return Spread(
        mean, (max(counts) - min(counts)) / mean, tuple((c - mean) / mean for c in counts)
    )


def is_balanced(counts: Sequence[int]) -> bool:
    """The seed's rule: ``(max - min) / mean < 20 %`` (an empty fleet is balanced)."""
    return spread(counts).balanced
