"""Active and passive health checks, and the active counts they correct.

An instance goes down after ``health_fall`` failed checks in a row and up after
``health_rise`` good ones, so one slow answer does not move sessions around. An instance
that is down is checked every ``health_down_interval`` (HAProxy's ``downinter``), so one
that boots after the gateway is in service within about ``health_rise`` seconds. A refused
connection on a proxied request makes the instance suspect: it is checked again at once,
back to back, so a crashed instance stops getting traffic within a second.
"""

from __future__ import annotations

import asyncio
import logging
import time

from gateway.metrics import GatewayMetrics
from gateway.shared.tasks import cancel_and_wait
from gateway.state.instances import Fleet, Instance
from gateway.state.store import PinStore
from gateway.upstream.client import UpstreamError, Upstreams

log = logging.getLogger("gateway.health")

SUSPECT_PAUSE = 0.2  # between the back-to-back checks of a suspect instance


class HealthChecker:
    def __init__(
        self,
        fleet: Fleet,
        upstreams: Upstreams,
        pins: PinStore,
        metrics: GatewayMetrics,
        *,
        interval: float,
        down_interval: float,
        timeout: float,
        fall: int,
        rise: int,
    ) -> None:
        self.fleet, self.upstreams, self.pins, self.metrics = fleet, upstreams, pins, metrics
        self.interval, self.down_interval = interval, down_interval
        self.timeout, self.fall, self.rise = timeout, fall, rise
        self._suspects: dict[str, asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Check every instance once, taking the result as is, then keep checking each."""
        await self.check_all(initial=True)
        self._tasks = [asyncio.create_task(self._keep_checking(i)) for i in self.fleet.instances]

    async def close(self) -> None:
        await cancel_and_wait([*self._tasks, *self._suspects.values()])

    async def _keep_checking(self, instance: Instance) -> None:
        """Each instance on its own clock: one that does not answer delays no other."""
        while True:
            await asyncio.sleep(self.interval if instance.up else self.down_interval)
            await self.check(instance)

    async def check_all(self, initial: bool = False) -> None:
        await asyncio.gather(*(self.check(i, initial) for i in self.fleet.instances))

    def suspect(self, url: str) -> None:
        """A proxied request was refused: check the instance now rather than at the next tick."""
        instance = self.fleet.get(url)
        if instance is None or not instance.up or url in self._suspects:
            return
        task = asyncio.create_task(self._until_settled(instance))
        self._suspects[url] = task
        task.add_done_callback(lambda _: self._suspects.pop(url, None))

    async def _until_settled(self, instance: Instance) -> None:
        while not await self.check(instance) and instance.up:  # noqa: ASYNC110 - polls the instance
            await asyncio.sleep(SUSPECT_PAUSE)

    async def check(self, instance: Instance, initial: bool = False) -> bool:
        """One ``GET /health``; returns whether it passed."""
        error: str | None = None
        body: object = None
        try:
            status, body = await self.upstreams.get_json(
                instance.url, "/health", {}, self.timeout, check=True
            )
            if status != 200 or not isinstance(body, dict) or body.get("status") == "unhealthy":
                error = f"/health answered {status}"
        except UpstreamError as exc:
            error = exc.kind
        instance.last_check = time.time()
        instance.last_error = error
        if error is not None:
            instance.last_failure, instance.last_failure_at = error, instance.last_check
        if error is None:
            instance.fails, instance.rises = 0, instance.rises + 1
            assert isinstance(body, dict)
            await self._counts(instance, body)
            if not instance.up and (initial or instance.rises >= self.rise):
                self._set(instance, up=True)
        else:
            instance.rises, instance.fails = 0, instance.fails + 1
            if instance.up and (initial or instance.fails >= self.fall):
                self._set(instance, up=False)
        return error is None

    async def _counts(self, instance: Instance, body: dict[str, object]) -> None:
        sessions = body.get("sessions")
        if not isinstance(sessions, dict):
            return
        total = sessions.get("total")
        if isinstance(total, int) and not isinstance(total, bool):
            await self.pins.set_active(instance.url, total)

    def _set(self, instance: Instance, up: bool) -> None:
        instance.up = up
        state = "up" if up else "down"
        self.metrics.state_changes.labels(instance.url, state).inc()
        log.warning("instance %s is %s (%s)", instance.url, state, instance.last_error or "ok")
