"""The routing and placement decisions alone, from 1,000 to 1,000,000 sessions and 4 to 64
instances: what each costs per call, without I/O, so growth shows where it is.

- *route*: which template a path is (``decisions.routes.classify``), per request.
- *pin look-up*: the instance of a known session and whether it is up (the pin table, UUID
  ids, and ``Fleet.get``), per request; what the request path does for every session call.
- *placement*: the least-loaded eligible instance (``decisions.placement.least_loaded``),
  per new session; the same rule runs in Redis as Lua over the same number of instances.
- *reconciliation*: the corrections for a whole fleet's session lists
  (``decisions.corrections.corrections``), once per ``reconcile_interval``, with 1 % of the
  sessions moved.
"""

from __future__ import annotations

import argparse
import timeit
import uuid
from collections.abc import Callable
from pathlib import Path

from dev.bench.harness import write
from gateway.decisions.corrections import corrections
from gateway.decisions.placement import least_loaded
from gateway.decisions.route_table import classify
from gateway.state.instances import Fleet
from gateway.state.pin_table import PinTable

SESSIONS = (1_000, 10_000, 100_000, 1_000_000)
INSTANCES = (4, 16, 64)
SECTION = "decisions"


def per_call(work: Callable[[], object]) -> float:
    """Seconds per call: the best of three runs of at least 0.2 s each."""
    timer = timeit.Timer(work)
    number, _ = timer.autorange()
    return min(timer.repeat(repeat=3, number=number)) / number


def fleet_of(size: int) -> Fleet:
    return Fleet.from_urls(tuple(f"http://10.0.0.{i}:3000" for i in range(size)))


def pins_of(sessions: int, fleet: Fleet) -> PinTable:
    """The gateway's own pin table, with UUID session ids (the backend's usual kind)."""
    urls = fleet.urls
    return PinTable((str(uuid.UUID(int=n)), urls[n % len(urls)]) for n in range(sessions))


def lookup(pins: PinTable, fleet: Fleet) -> Callable[[], object]:
    ids = list(pins)[:: max(1, len(pins) // 997)]
    position = 0

    def one() -> object:
        nonlocal position
        position = (position + 1) % len(ids)
        url = pins.get(ids[position])
        instance = fleet.get(url) if url is not None else None
        return instance is not None and instance.up

    return one


def placement(fleet: Fleet) -> Callable[[], object]:
    eligible = list(fleet.urls)
    loads = {url: 100 + n % 7 for n, url in enumerate(eligible)}
    return lambda: least_loaded(eligible, loads, 500)


def reconciliation(pins: PinTable, fleet: Fleet) -> Callable[[], object]:
    urls = fleet.urls
    listings: dict[str, list[str]] = {url: [] for url in urls}
    for n, session_id in enumerate(pins):
        moved = n % 100 == 0
        listings[urls[(n + moved) % len(urls)]].append(session_id)
    return lambda: corrections(pins, listings, complete=True)


def table(sessions: tuple[int, ...], instances: tuple[int, ...]) -> str:
    route = per_call(lambda: classify(f"/api/sessions/{uuid.UUID(int=1)}/status"))
    lines = [
        f"Route template of a path: {route * 1e6:.2f} µs per request, whatever the size.",
        "",
        "| sessions | instances | pin look-up | placement | reconciliation (all pins) |",
        "|---:|---:|---:|---:|---:|",
    ]
    for count in sessions:
        for size in instances:
            fleet = fleet_of(size)
            pins = pins_of(count, fleet)
            found = per_call(lookup(pins, fleet))
            placed = per_call(placement(fleet))
            whole = per_call(reconciliation(pins, fleet))
            lines.append(
                f"| {count:,} | {size} | {found * 1e6:.2f} µs | {placed * 1e6:.2f} µs "
                f"| {whole * 1e3:,.1f} ms |"
            )
            print(lines[-1], flush=True)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m dev.bench.decisions", description=__doc__)
    parser.add_argument("--max-sessions", type=int, default=SESSIONS[-1])
    parser.add_argument("--write", type=Path, help="put the table in this Markdown file")
    args = parser.parse_args()
    text = table(tuple(n for n in SESSIONS if n <= args.max_sessions), INSTANCES)
    print(text)
    if args.write:
        write(args.write, text, SECTION)
        print(f"written to {args.write}")


if __name__ == "__main__":
    main()
