"""PHP job classes dispatched by Laravel, run by the pool's warm PHP runners."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from gateway.shared.laravel.queues import Queues
from tests.laravel.conftest import Laravel
from tests.workers.conftest import HANDLERS, Harness, eventually
from workers.php import is_php_job
from workers.retry import Policy
from workers.worker import Pool


@pytest.fixture
def php_harness(laravel: Laravel) -> Harness:
    """The harness with PHP runners on the test's Laravel app (one runner: pids are known)."""
    h = laravel.harness
    h.env["LARAVEL_APP_PATH"] = str(laravel.app())
    h.workers.update(php_workers=1, backoff="0")
    return h


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped is not)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def outcome(pool: Pool, queue: str, name: str) -> float:
    return (
        pool.metrics.registry.get_sample_value(
            "workers_jobs_total", {"queue": queue, "outcome": name}
        )
        or 0.0
    )


async def test_a_dispatched_job_class_runs_in_a_warm_runner_and_writes_its_row(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    h.env.pop("LARAVEL_APP_PATH")  # the app is found from the .env the settings read
    h.env["LARAVEL_ENV_FILE"] = str(laravel.app() / ".env")
    worker = h.spawn("--queue", "q", "--metrics-port", "0")
    laravel.dispatch("WriteRow", "q", "first")
    laravel.dispatch("WriteRow", "q", "second")

    rows = await eventually(laravel.runs, lambda r: len(r) == 2, timeout=30, what="two rows")
    assert [(r["event"], r["note"], r["attempt"]) for r in rows] == [
        ("ran", "first", 1),
        ("ran", "second", 1),
    ]
    assert rows[0]["pid"] == rows[1]["pid"] != worker.pid  # one warm PHP process, not one each
    await eventually(lambda: h.redis.zcard(h.keys("q").reserved), lambda n: n == 0)
    assert laravel.failed_all() == []
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(15) == 0, h.output(worker)
    assert not alive(rows[0]["pid"])  # the runner stops with the pool


async def test_a_killed_pool_takes_its_runners_and_their_jobs_with_it(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    h.workers.update(timeout=1, retry_after=2)
    worker = h.spawn("--queue", "q", "--metrics-port", "0")
    laravel.dispatch("Pauses", "q", "p")  # hangs on attempt 1
    [first] = await eventually(laravel.runs, timeout=30, what="first attempt")
    worker.send_signal(signal.SIGKILL)
    await eventually(lambda: not alive(first["pid"]), what="the runner died with the pool")
    assert await h.redis.zcard(h.keys("q").reserved) == 1  # runs again, once, later


async def test_a_throwing_job_is_retried_then_failed_with_its_failed_hook(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    laravel.dispatch("Throws", "q", "x")  # $tries = 2, $backoff = 0
    async with h.pool(h.config(queues=("q",))) as pool:
        [entry] = await eventually(h.failed, timeout=30, what="failed after two tries")
        await eventually(lambda: outcome(pool, "q", "failed") == 1, what="failure counted")
        assert outcome(pool, "q", "retried") == 1

    rows = await laravel.runs()
    assert [(r["event"], r["attempt"]) for r in rows] == [("ran", 1), ("ran", 2), ("failed", 1)]
    assert rows[2]["note"] == "RuntimeException: boom: x"  # the exception PHP threw
    assert entry["exception"].startswith("RuntimeException: boom: x in ")
    assert json.loads(entry["payload"])["attempts"] == 1  # as the last attempt popped it
    [listed] = h.run_cli("failed", "list").stdout.splitlines()
    assert "App\\Jobs\\Throws" in listed and "RuntimeException: boom: x" in listed
    assert [e["id"] for e in laravel.failed_all()] == [entry["uuid"]]


async def test_a_job_that_releases_itself_waits_its_delay_in_delayed(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    keys = h.keys("q")
    laravel.dispatch("ReleasesItself", "q", "r")  # $this->release(30) on its first attempt
    async with h.pool(h.config(queues=("q",))) as pool:
        [(member, due)] = await eventually(
            lambda: h.redis.zrange(keys.delayed, 0, -1, withscores=True), timeout=30
        )
        assert 25 < due - time.time() <= 30
        assert json.loads(member)["attempts"] == 1
        await h.redis.zadd(keys.delayed, {member: 0})  # due now
        rows = await eventually(laravel.runs, lambda r: len(r) == 2, what="second attempt")
        assert outcome(pool, "q", "retried") == 1
    assert [(r["event"], r["attempt"]) for r in rows] == [("ran", 1), ("ran", 2)]
    assert await h.failed() == []
    assert await h.redis.zcard(keys.reserved) == 0


async def test_a_job_past_its_timeout_is_killed_with_its_runner_and_fails(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    laravel.dispatch("Sleeps", "q", "s")  # $timeout = 1, $tries = 1: sleeps 60 s
    async with h.pool(h.config(queues=("q",))) as pool:
        [entry] = await eventually(h.failed, timeout=30, what="failed on its timeout")
        [ran, failed] = await laravel.runs()
        assert not alive(ran["pid"])  # killed, not left sleeping
        assert outcome(pool, "q", "timed_out") == 1
        laravel.dispatch("WriteRow", "q", "after")
        rows = await eventually(laravel.runs, lambda r: len(r) == 3, what="a fresh runner")
    assert rows[2]["pid"] not in (ran["pid"], os.getpid())
    # as Laravel's worker fails a job that timed out: failed() with MaxAttemptsExceeded
    assert failed["event"] == "failed"
    assert failed["note"].startswith("Illuminate\\Queue\\MaxAttemptsExceededException: ")
    assert entry["exception"].startswith(
        "Illuminate\\Queue\\MaxAttemptsExceededException: App\\Jobs\\Sleeps has been attempted"
    )


async def test_a_runner_that_dies_mid_job_is_replaced_and_the_job_runs_again(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    h.workers.update(timeout=1, retry_after=2)  # the job's own $timeout is 30
    laravel.dispatch("Pauses", "q", "p")  # hangs on attempt 1
    async with h.pool(h.config(queues=("q",))):
        [first] = await eventually(laravel.runs, timeout=30, what="first attempt")
        os.kill(first["pid"], signal.SIGKILL)
        rows = await eventually(laravel.runs, lambda r: len(r) == 2, what="run again")
        await eventually(lambda: h.redis.zcard(h.keys("q").reserved), lambda n: n == 0)
    assert rows[1]["attempt"] == 2 and rows[1]["pid"] != first["pid"]
    assert await h.failed() == []


async def test_python_handlers_win_over_php_for_the_same_name(php_harness: Harness) -> None:
    h = php_harness
    name = "App\\Jobs\\NoSuchClass@handle"  # PHP would fail it: the class does not exist
    h.workers["handlers"] = {**HANDLERS, name: HANDLERS["record"]}
    await h.push("q", name, {"log": h.key("log")})
    async with h.pool(h.config(queues=("q",))) as pool:
        assert pool.php is not None and is_php_job(name)
        await eventually(h.log, what="the Python handler ran")
    assert await h.failed() == []


async def test_without_php_workers_php_jobs_fail_as_unknown(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    h.workers["php_workers"] = 0
    laravel.dispatch("WriteRow", "q", "never")
    async with h.pool(h.config(queues=("q",))) as pool:
        [entry] = await eventually(h.failed, what="failed as unknown")
        assert pool.php is None
    assert "UnknownJob" in entry["exception"]
    assert await laravel.runs() == []


async def test_an_app_that_cannot_boot_gets_its_jobs_retried_then_failed(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    broken = h.tmp / "broken"
    (broken / "bootstrap").mkdir(parents=True)
    (broken / "bootstrap" / "app.php").write_text("<?php throw new RuntimeException('no boot');")
    h.env["LARAVEL_APP_PATH"] = str(broken)
    laravel.dispatch("WriteRow", "q", "never")  # tries: the pool's 3, backoff 0
    async with h.pool(h.config(queues=("q",))) as pool:
        [entry] = await eventually(h.failed, timeout=30, what="failed: no runner")
        assert outcome(pool, "q", "retried") == 2
    assert "RunnerUnavailable" in entry["exception"] and "could not start" in entry["exception"]


def test_run_refuses_to_start_without_php_or_the_app(php_harness: Harness) -> None:
    h = php_harness
    h.env["LARAVEL_APP_PATH"] = str(h.tmp / "nowhere")
    no_app = h.run_cli("run")
    assert no_app.returncode == 2 and "workers.laravel_app_path" in no_app.stderr
    h.env.pop("LARAVEL_APP_PATH")
    h.env["GATEWAY_WORKERS_PHP_BINARY"] = "no-such-php"
    h.env["LARAVEL_APP_PATH"] = str(h.tmp)
    no_php = h.run_cli("run")
    assert no_php.returncode == 2 and "workers.php_binary" in no_php.stderr
    assert len(no_php.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("name", "php"),
    [
        ("Illuminate\\Queue\\CallQueuedHandler@call", True),
        ("\\App\\Jobs\\Legacy@fire", True),
        ("SendEmail@handle", True),
        ("whatsapp.send_message", False),
        ("http.post", False),
        ("App\\Jobs\\Legacy", True),  # an old-style string job: Laravel calls fire()
        ("App\\Jobs\\Legacy@", False),
        ("App\\Jobs\\X@handle; rm -rf /", False),
        ("", False),
    ],
)
def test_which_job_names_are_php_classes(name: str, php: bool) -> None:
    assert is_php_job(name) is php


async def test_php_jobs_waiting_for_a_process_hold_no_slot_and_start_in_priority_order(
    laravel: Laravel, php_harness: Harness
) -> None:
    """One PHP process, held by a job: three PHP jobs on ``low``, then one on ``high`` and a
    Python job on ``high`` arrive. The Python job runs at once (3 of 4 slots are free), the
    waiting PHP jobs stay in their queues, unreserved, and ``high``'s PHP job goes first."""
    h = php_harness
    log = h.key("log")
    config = h.config(queues=("high", "low"), concurrency=4)
    async with h.pool(config):
        laravel.dispatch("Holds", "low", "hold")
        await eventually(laravel.runs, timeout=30, what="the runner held")
        for n in range(3):
            laravel.dispatch("WriteRow", "low", f"low {n}")
        laravel.dispatch("WriteRow", "high", "high")
        await h.push("high", "record", {"log": log})
        await eventually(h.log, what="the Python job, with the PHP process still held")
        assert [r["note"] for r in await laravel.runs()] == ["hold"]
        reserved = [await h.redis.zcard(h.keys(q).reserved) for q in ("high", "low")]
        waiting = [await h.redis.llen(h.keys(q).list) for q in ("high", "low")]
        assert (reserved, waiting) == ([0, 1], [1, 3])  # only the held job is reserved
        await h.redis.rpush(h.key("gate"), 1)
        rows = await eventually(laravel.runs, lambda r: len(r) == 5, timeout=30, what="all")
    assert [r["note"] for r in rows] == ["hold", "high", "low 0", "low 1", "low 2"]


async def test_a_php_job_with_timeout_0_runs_past_the_pools_timeout(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    laravel.dispatch("NoTimeout", "q", "long")  # 1.5 s, past --timeout 0.5 and retry_after 0.8
    config = h.config(queues=("q",), policy=Policy(tries=1, timeout=0.5), retry_after=0.8)
    async with h.pool(config):
        rows = await eventually(laravel.runs, timeout=30, what="the job's row")
        await eventually(lambda: h.redis.zcard(h.keys("q").reserved), lambda n: n == 0)
    assert [(r["note"], r["attempt"]) for r in rows] == [("long", 1)]
    assert await h.failed() == []


async def test_an_old_style_string_job_runs_its_fire_method_as_queue_work_does(
    laravel: Laravel, php_harness: Harness
) -> None:
    h = php_harness
    laravel.push("App\\Jobs\\Legacy", {"note": "old style"}, "q")  # no @method
    async with h.pool(h.config(queues=("q",))):
        rows = await eventually(laravel.runs, timeout=30, what="fire() ran")
        await eventually(lambda: h.redis.zcard(h.keys("q").reserved), lambda n: n == 0)
    assert [(r["event"], r["note"], r["attempt"]) for r in rows] == [("fired", "old style", 1)]
    assert await h.failed() == []


async def test_a_dispatched_send_is_paced_by_its_public_session_id(laravel: Laravel) -> None:
    """The pacer reads ``public string $sessionId`` from the PHP-serialized command: S1's
    second send waits for its slot, S2's goes at once."""
    h = laravel.harness
    for note, session in (("first", "S1"), ("second", "S1"), ("other", "S2")):
        laravel.dispatch("SendsMessage", "camp", note, session)
    queues = Queues(h.redis, h.prefix, ["camp"], key_prefix=h.prefix, intervals={"camp": 30})

    take = await queues.reserve(10, retry_after=90)

    assert 's:9:"sessionId";s:2:"S1";' in take.jobs[0].data["command"]
    assert [j.data["command"].count('"S2"') for j in take.jobs] == [0, 1]
    assert take.paced == ["camp"]
    [waiting] = await h.redis.zrange(h.keys("camp").delayed, 0, -1)
    assert 's:6:"second"' in json.loads(waiting)["data"]["command"]
    for session in ("S1", "S2"):
        assert await h.redis.hexists(queues.pacing[0], session)


async def test_a_php_jobs_sends_carry_the_same_idempotency_keys_on_every_attempt(
    laravel: Laravel, php_harness: Harness, teardown
) -> None:
    from aiohttp import web

    from tests.harness import serve

    seen: list[tuple[str, str | None, object]] = []

    async def record(request: web.Request) -> web.Response:
        body = await request.json() if request.method == "POST" else None
        seen.append((request.method, request.headers.get("Idempotency-Key"), body))
        return web.json_response({"success": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", record)
    runner, url = await serve(app)
    teardown.push_async_callback(runner.cleanup)
    h = php_harness
    laravel.dispatch("PostsTwice", "q", url)
    async with h.pool(h.config(queues=("q",))):
        [entry] = await eventually(h.failed, timeout=30, what="failed after two tries")
    key = entry["uuid"]
    one_attempt = [
        ("GET", None, None),  # a read is not keyed, and does not count
        ("POST", f"{key}:1", {"n": 1}),
        ("POST", "own-key", {"n": 2}),  # the job's own key is kept (it still counts)
        ("POST", f"{key}:3", {"n": 3}),
    ]
    assert seen == one_attempt * 2  # the second attempt sends the very same keys
