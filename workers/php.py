"""Warm PHP workers: PHP job classes run by long-lived processes of ``deploy/laravel/runner.php``.

Every job Laravel's ``dispatch()`` makes is ``Illuminate\\Queue\\CallQueuedHandler@call`` with a
serialized PHP object; only PHP can run it. A job the pool has no Python handler for whose name
is ``Class@method`` goes to one of ``php_workers`` runner processes. Each booted the Laravel app
once and runs one job at a time with Laravel's own ``Worker::process()``; it answers done,
released with a delay, or failed (its ``failed()`` hook already ran), and the pool settles the
job in Redis as it does for Python jobs. A runner past the job's timeout is killed and replaced;
one that dies mid-job is replaced and its job, whose outcome is unknown, stays reserved and runs
again when the reservation expires.

The wire (see runner.php): a JSON header line and the payload's bytes on the runner's stdin;
answers as JSON lines on a pipe of their own, so what a job prints cannot pass for an answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gateway.shared.laravel.jobs import Job
from workers.handlers import Handler, JobContext, PermanentError
from workers.retry import Policy

log = logging.getLogger("workers.php")

RUNNER = Path(__file__).resolve().parent.parent / "deploy" / "laravel" / "runner.php"

# Laravel's job name: a PHP class (namespaced) and a method, ``Class@method``, or a class
# alone (an old-style ``Queue::push('App\\Jobs\\Legacy', $data)``: Laravel calls its fire()).
PHP_JOB = re.compile(r"^\\?[A-Za-z_]\w*(\\[A-Za-z_]\w*)*(@[A-Za-z_]\w*)?$", re.ASCII)

PR_SET_PDEATHSIG = 1
START_TIMEOUT = 60.0  # seconds a runner may take to boot the app
RESTART_DELAYS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0)  # between failed starts


def is_php_job(name: str) -> bool:
    return PHP_JOB.fullmatch(name) is not None


class Released(Exception):
    """Laravel released the job (``$this->release()``, or an exception with tries left):
    back to ``:delayed`` for ``delay`` seconds."""

    def __init__(self, delay: float, exception: str | None) -> None:
        super().__init__(f"released for {delay:g} s")
        self.delay = delay
        # What an INFO log may say: the exception's class, never its message.
        self.summary = exception.split(":", 1)[0][:200] if exception else "released itself"


class RunnerFailed(PermanentError):
    """Laravel failed the job (its tries ran out, or it called ``fail()``); ``str()`` is
    PHP's exception text, which the failed store keeps as Laravel would."""


class RunnerLost(Exception):
    """The runner died mid-job: the outcome is unknown, so the job stays reserved."""


class RunnerUnavailable(Exception):
    """No runner could be started (bad app path, PHP error at boot...)."""


@dataclass(frozen=True, slots=True)
class PhpConfig:
    workers: int
    binary: str
    app_path: str
    connection: str

    def check(self) -> str | None:
        """Why the runners cannot start, in one line; None when they can."""
        if shutil.which(self.binary) is None:
            return (
                f"workers.php_binary: {self.binary!r} not found"
                " (install php-cli, or set workers.php_workers = 0)"
            )
        if not (Path(self.app_path) / "bootstrap" / "app.php").is_file():
            return (
                f"workers.laravel_app_path: {self.app_path!r} has no bootstrap/app.php"
                " (set LARAVEL_APP_PATH, or workers.php_workers = 0)"
            )
        return None


class Runner:
    """One runner process, one job at a time."""

    def __init__(self, config: PhpConfig) -> None:
        self.config = config
        self.proc: asyncio.subprocess.Process | None = None
        self.answers: asyncio.StreamReader | None = None
        self.transport: asyncio.ReadTransport | None = None
        self.done = False  # killed, dead, or said its last answer was its last

    @property
    def usable(self) -> bool:
        return self.proc is not None and self.proc.returncode is None and not self.done

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    async def start(self) -> None:
        """Spawn the runner and wait until it says the app booted."""
        read, write = os.pipe()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                self.config.binary,
                str(RUNNER),
                f"--answers={write}",
                f"--connection={self.config.connection}",
                stdin=asyncio.subprocess.PIPE,
                stdout=2,  # what jobs print goes to the pool's log, never to the answers
                pass_fds=(write,),
                env={**os.environ, "LARAVEL_APP_PATH": self.config.app_path},
                # Its own process group, so a signal for the pool (Ctrl-C, supervisor's TERM
                # to the group) does not cut its job short; the pool stops it. It is killed
                # as a group, with anything the job spawned, and dies with the pool.
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError:
            os.close(read)
            raise
        finally:
            os.close(write)
        self.answers = asyncio.StreamReader(limit=64 * 1024 * 1024)
        protocol = asyncio.StreamReaderProtocol(self.answers)
        self.transport, _ = await asyncio.get_running_loop().connect_read_pipe(
            lambda: protocol, os.fdopen(read, "rb", buffering=0)
        )
        try:
            async with asyncio.timeout(START_TIMEOUT):
                ready = await self._answer()
        except (TimeoutError, RunnerLost):
            await self.stop(0)
            raise RunnerUnavailable(self._note("could not start")) from None
        log.info("PHP runner %d ready (Laravel %s)", self.pid, ready.get("laravel", "?"))

    async def request(self, header: dict[str, Any], body: bytes) -> dict[str, Any]:
        """Send one request and wait for its answer; a cancellation (the job's timeout, or
        the end of the grace period) kills the runner, since it is still in the job."""
        assert self.proc is not None and self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps({**header, "length": len(body)}).encode() + b"\n")
            self.proc.stdin.write(body)
            await self.proc.stdin.drain()
            answer = await self._answer()
        except (BrokenPipeError, ConnectionResetError):
            self.done = True
            raise RunnerLost(self._note("died")) from None
        except asyncio.CancelledError:
            self.kill()
            raise
        self.done = answer.get("last") is True  # memory limit, or lost its database
        return answer

    async def _answer(self) -> dict[str, Any]:
        assert self.answers is not None
        line = await self.answers.readline()
        if not line.endswith(b"\n"):
            self.done = True
            raise RunnerLost(self._note("died"))
        try:
            answer = json.loads(line)
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            self.kill()
            raise RunnerLost(self._note("answered nonsense and was killed"))
        return answer

    def _note(self, what: str) -> str:
        code = self.proc.returncode if self.proc else None
        status = "" if code is None else f", exit status {code}"
        return f"PHP runner {self.pid} {what} (its output is in this log{status})"

    def kill(self) -> None:
        self.done = True
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)

    async def stop(self, timeout: float = 5.0) -> None:
        """End of input: the runner exits after its current job; killed if it does not."""
        if self.proc is not None:
            if self.proc.stdin is not None:
                self.proc.stdin.close()
            try:
                async with asyncio.timeout(timeout):
                    await self.proc.wait()
            except TimeoutError:
                self.kill()
                await self.proc.wait()
        if self.transport is not None:
            self.transport.close()


class PhpWorkers:
    """``php_workers`` runners: one is leased per job; dead and killed ones are replaced."""

    def __init__(self, config: PhpConfig, policy: Policy):
        self.config = config
        self.policy = policy
        self._idle: list[Runner] = []
        self._ready = asyncio.Condition()
        self._error: str | None = None  # why the last start failed, until one succeeds
        self._tasks: set[asyncio.Task[None]] = set()
        self._runners: set[Runner] = set()
        self._leased = 0  # runners held by jobs
        self.freed = asyncio.Event()  # a runner became idle: PHP jobs left waiting may start
        self._closing = False

    def runs(self, job: Job) -> bool:
        return is_php_job(job.name)

    def free(self, php_jobs: int) -> int:
        """How many more PHP jobs to take, the pool holding ``php_jobs`` already: one per idle
        runner not promised to one of them, so no job waits for a runner holding a pool
        slot. -1 (no limit) when none can start, so their jobs fail over with backoff."""
        if self._unavailable:
            return -1
        return max(0, len(self._idle) + self._leased - php_jobs)

    def start(self) -> None:
        for _ in range(self.config.workers):
            self._background(self._start_one())

    async def close(self) -> None:
        self._closing = True
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await asyncio.gather(*(r.stop() for r in self._runners), return_exceptions=True)

    @contextlib.asynccontextmanager
    async def lease(self, job: Job) -> AsyncIterator[Handler]:
        """A handler that runs the job on an idle runner. The job stays reserved while it
        waits for one; when none can start, the handler raises :class:`RunnerUnavailable`
        (an ordinary error: the job is retried with backoff)."""
        try:
            runner = await self._acquire(job)
        except RunnerUnavailable as exc:
            yield _raising(exc)
            return
        try:
            yield self._handler(runner)
        finally:
            await self._release(runner)

    async def fail(self, job: Job) -> str | None:
        """Fail the job in PHP as Laravel's worker does when the tries are spent or the job
        timed out: its ``failed()`` hook runs with a ``MaxAttemptsExceededException``.
        Returns PHP's exception text; None if no runner could do it."""
        name = (job.payload or {}).get("displayName") or job.name
        message = (
            f"{name} has been attempted too many times or run too long."
            " The job may have previously timed out."
        )
        request = {"op": "fail", "queue": job.queue, "message": message}
        try:
            runner = await self._acquire(job)
            try:
                async with asyncio.timeout(self.policy.timeout):
                    answer = await runner.request(request, job.body)
            finally:
                await self._release(runner)
        except (RunnerLost, RunnerUnavailable, TimeoutError, OSError) as exc:
            log.warning("the failed() hook of %s did not run: %s", job.name, exc)
            return None
        return str(answer.get("exception") or "") or None

    def _handler(self, runner: Runner) -> Handler:
        async def run_in_php(context: JobContext) -> None:
            job = context.job
            header = {
                "op": "fire",
                "queue": job.queue,
                "key": job.key,  # its HTTP requests' Idempotency-Key prefix (runner.php)
                "tries": self.policy.tries,
                "backoff": ",".join(f"{d:g}" for d in self.policy.backoff),
            }
            answer = await runner.request(header, job.body)
            status = answer.get("status")
            if status == "done":
                return
            if status == "released":
                delay = answer.get("delay")
                delay = float(delay) if isinstance(delay, int | float) else 0.0
                raise Released(max(0.0, delay), answer.get("exception"))
            if status == "failed":
                text = str(answer.get("exception") or "failed in PHP")
                raise RunnerFailed(text, summary=text.split(":", 1)[0][:200])
            runner.kill()
            raise RunnerLost(f"PHP runner {runner.pid} answered {status!r} and was killed")

        return run_in_php

    async def _acquire(self, job: Job) -> Runner:
        """An idle runner; waits while one is busy or starting, raises when none can start.
        The job's reservation is kept meanwhile by the pool's keeper."""
        async with self._ready:
            await self._ready.wait_for(lambda: self._idle or self._unavailable)
            if not self._idle:
                raise RunnerUnavailable(self._error)
            self._leased += 1
            return self._idle.pop()

    @property
    def _unavailable(self) -> bool:
        """The last start failed and no runner is up to be waited for."""
        return self._error is not None and not any(r.usable for r in self._runners)

    async def _release(self, runner: Runner) -> None:
        self._leased -= 1
        if runner.usable:
            await self._idle_again(runner)
        else:
            self._background(self._replace(runner))

    async def _idle_again(self, runner: Runner) -> None:
        async with self._ready:
            self._idle.append(runner)
            self._ready.notify()
        self.freed.set()

    async def _replace(self, runner: Runner) -> None:
        self._runners.discard(runner)
        await runner.stop()
        await self._start_one()

    async def _start_one(self) -> None:
        """Start a runner, trying again with growing pauses; a failed start wakes the waiters
        so their jobs are retried later instead of holding their slots."""
        attempt = 0
        while True:
            runner = Runner(self.config)
            self._runners.add(runner)
            try:
                await runner.start()
                break
            except (RunnerUnavailable, OSError) as exc:
                self._runners.discard(runner)
                log.error("%s", exc)
                async with self._ready:
                    self._error = str(exc)
                    self._ready.notify_all()
                self.freed.set()  # the jobs left waiting are taken, to fail over
            await asyncio.sleep(RESTART_DELAYS[min(attempt, len(RESTART_DELAYS) - 1)])
            attempt += 1
        self._error = None
        await self._idle_again(runner)
        self._background(self._watch(runner))

    async def _watch(self, runner: Runner) -> None:
        """A runner that exits while idle is replaced (one that exits mid-job is replaced by
        whoever leased it)."""
        assert runner.proc is not None
        await runner.proc.wait()
        async with self._ready:
            if runner not in self._idle:
                return
            self._idle.remove(runner)
        log.warning(
            "PHP runner %d exited while idle (status %s)", runner.pid, runner.proc.returncode
        )
        await self._replace(runner)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        if self._closing:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


def _raising(error: Exception) -> Handler:
    async def handler(context: JobContext) -> None:
        raise error

    return handler


def _die_with_parent() -> None:
    """In the child before exec (Linux): SIGKILL when the pool dies, as a job run by a killed
    ``queue:work`` dies with it, so no orphan finishes a job that will run again."""
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
