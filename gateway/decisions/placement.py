"""Where a new session goes: pure decisions, tested without I/O.

The same least-loaded rule runs inside Redis (``state.counts.PLACE``) so that concurrent
placements from several gateway processes see each other's reservations; this module is
the rule itself, used directly when Redis is away and to pick a policy's preferred
instance.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence


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


def is_balanced(counts: Sequence[int]) -> bool:
    """The seed's rule: ``(max - min) / mean < 20 %`` (an empty fleet is balanced)."""
    total = sum(counts)
    if not counts or total == 0:
        return True
    mean = total / len(counts)
    return (max(counts) - min(counts)) / mean < 0.2


def spread(counts: Sequence[int]) -> dict[str, float | list[float]]:
    """The rule's numbers: the mean, ``(max - min) / mean`` and each count's deviation from
    the mean (fractions: 0.2 is 20 %)."""
    mean = sum(counts) / len(counts) if counts else 0.0
    if not mean:
        return {"mean": 0.0, "spread": 0.0, "deviations": [0.0 for _ in counts]}
    return {
        "mean": round(mean, 2),
        "spread": round((max(counts) - min(counts)) / mean, 4),
        "deviations": [round((c - mean) / mean, 4) for c in counts],
    }
