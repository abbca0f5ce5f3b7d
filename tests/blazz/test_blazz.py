"""blazz's own code against the gateway, wired as the README says.

blazz's ``WhatsAppServiceClient`` (run by PHP, Debian's Laravel 8) talks to the gateway only:
``WHATSAPP_NODEJS_URL`` and its ``WHATSAPP_INSTANCE_1..4`` name it. Its webhook route
(``VerifyWhatsAppHmac``, ``WebhookController``, ``ProcessWhatsAppWebhookJob``) and its
restore route (``AccountController::getActiveAccounts``) serve from ``php -S``, and the gateway
reads the same ``.env``. Behind the gateway, two simulated instances report their events to
it, and the workers' relay delivers them to blazz. The session is created, asked for,
sent from and reconnected; then its instance dies and the other one restarts and restores it
from blazz's list; it keeps sending. No call of the client reaches an instance but through
the gateway, and blazz's row names the gateway throughout.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import os
import shutil
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import aiomysql
import pytest

from dev.ports import free_port
from gateway.app import GATEWAY, GatewayRunner, create_app
from gateway.shared.loader import load_settings
from gateway.shared.outbox import Outbox
from tests.accounts import DDL as ACCOUNTS_DDL
from tests.gateway.test_webhooks import FAST, settled
from tests.harness import API_KEY, REDIS_URL, Sim, eventually, serve
from tests.mysql import own_database
from workers.connections import redis_client
from workers.delivery import RelayConfig, WebhookRelay
from workers.metrics import WorkerMetrics

HERE = Path(__file__).resolve().parent
SECRET = "blazz-hmac-secret"
WORKSPACE = 1
SESSION, ACCOUNT, CONTACT = "blazz-session-1", "4f1c2d9e-0000-4000-8000-000000000001", "c-1"
LOST_ACCOUNT = "4f1c2d9e-0000-4000-8000-000000000002"  # its session is on no instance
# The client's own User-Agent, and Guzzle's (its rediscovery sets none).
CLIENT_AGENTS = ("Laravel-WhatsApp-Service/", "GuzzleHttp/")

# blazz's columns beyond the reference's, its contacts, and a log of every status a row took.
BLAZZ_DDL = (
    *ACCOUNTS_DDL,
    """
    ALTER TABLE whatsapp_accounts
      MODIFY status ENUM('qr_scanning', 'authenticated', 'connected', 'disconnected',
        'failed', 'error') NOT NULL DEFAULT 'qr_scanning',
      ADD qr_code TEXT NULL,
      ADD is_primary TINYINT(1) NOT NULL DEFAULT 0,
      ADD is_active TINYINT(1) NOT NULL DEFAULT 1,
      ADD metadata JSON NULL,
      ADD last_connected_at TIMESTAMP NULL,
      ADD last_activity_at TIMESTAMP NULL
    """,
    """
    CREATE TABLE contacts (
      id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
      uuid CHAR(36) NOT NULL UNIQUE,
      workspace_id BIGINT UNSIGNED NOT NULL,
      phone VARCHAR(50) NOT NULL,
      created_at TIMESTAMP NULL,
      updated_at TIMESTAMP NULL,
      deleted_at TIMESTAMP NULL
    )
    """,
    "CREATE TABLE status_log (n INT AUTO_INCREMENT PRIMARY KEY, status VARCHAR(20) NOT NULL)",
    """
    CREATE TRIGGER log_status AFTER UPDATE ON whatsapp_accounts FOR EACH ROW
      INSERT INTO status_log (status) SELECT NEW.status FROM DUAL WHERE NEW.status <> OLD.status
    """,
)


@dataclass
class Blazz:
    """blazz's code in a Laravel app of its own: a web server, and its client run by PHP."""

    php: str
    root: Path
    url: str
    db: aiomysql.Connection

    async def call(self, method: str, *args: Any) -> Any:
        """``WhatsAppServiceClient::METHOD(...args)``, as blazz's services call it."""
        proc = await asyncio.create_subprocess_exec(
            self.php,
            str(self.root / "client.php"),
            method,
            json.dumps(args),
            env={"PATH": os.environ["PATH"]},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, err.decode()
        return json.loads(out)

    async def query(self, sql: str) -> list[tuple[Any, ...]]:
        async with self.db.cursor() as cur:
            await cur.execute(sql)
            return list(await cur.fetchall())

    async def row(self) -> tuple[Any, ...]:
        [row] = await self.query(
            "SELECT status, phone_number, assigned_instance_url, assigned_instance_index"
            f" FROM whatsapp_accounts WHERE uuid = '{ACCOUNT}'"
        )
        return row

    async def statuses(self) -> list[str]:
        return [s for (s,) in await self.query("SELECT status FROM status_log ORDER BY n")]


def blazz_env(database: str, gateway: str, php_url: str) -> str:
    """blazz's ``.env`` as the README has it: its base URL and its one instance the gateway."""
    key = base64.b64encode(os.urandom(32)).decode()
    return f"""APP_NAME=Blazz
APP_ENV=testing
APP_KEY=base64:{key}
APP_URL={php_url}
DB_CONNECTION=mysql
DB_HOST=127.0.0.1
DB_PORT=3306
DB_DATABASE={database}
DB_USERNAME=root
DB_PASSWORD=
CACHE_DRIVER=file
QUEUE_CONNECTION=sync
LARAVEL_API_TOKEN={API_KEY}
WHATSAPP_HMAC_SECRET="{SECRET}"

# WhatsApp: every call to the gateway, which knows the instances
WHATSAPP_NODEJS_URL={gateway}
WHATSAPP_INSTANCE_COUNT=1
WHATSAPP_INSTANCE_1="${{WHATSAPP_NODEJS_URL}}"
WHATSAPP_INSTANCE_2="${{WHATSAPP_NODEJS_URL}}"
WHATSAPP_INSTANCE_3="${{WHATSAPP_NODEJS_URL}}"
WHATSAPP_INSTANCE_4="${{WHATSAPP_NODEJS_URL}}"
"""


@contextlib.asynccontextmanager
async def php_server(php: str, root: Path, port: int) -> AsyncIterator[str]:
    """``php -S`` serving the app, a few workers (the PHP built-in server's own)."""
    proc = await asyncio.create_subprocess_exec(
        php,
        "-S",
        f"127.0.0.1:{port}",
        "-t",
        str(root / "public"),
        str(root / "public" / "index.php"),
        env={"PATH": os.environ["PATH"], "PHP_CLI_SERVER_WORKERS": "4"},
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        start_new_session=True,  # its workers in its own group, stopped with it
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:

            async def answers() -> bool:
                headers = {"X-API-Key": API_KEY}
                try:
                    async with http.get(
                        f"{url}/api/whatsapp/accounts/active", headers=headers
                    ) as r:
                        return r.status == 200
                except aiohttp.ClientError:
                    return False

            await eventually(answers, timeout=20)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        await proc.wait()


@contextlib.asynccontextmanager
async def relay_to(url: str, key_prefix: str) -> AsyncIterator[Outbox]:
    """The workers' webhook relay, delivering the gateway's events to ``url``."""
    client = redis_client(REDIS_URL)
    relay = WebhookRelay(RelayConfig(url, SECRET, key_prefix, **FAST), client, WorkerMetrics())
    task = asyncio.create_task(relay.run())
    try:
        yield Outbox(client, key_prefix)
    finally:
        relay.stop()
        await asyncio.wait_for(task, 10)
        await client.aclose()


def direct(sims: list[Sim]) -> list[str]:
    """Requests of blazz's client that reached an instance without the gateway."""
    return [
        f"{s.method} {s.path_qs}"
        for sim in sims
        for s in sim.seen
        if (h := {k.lower(): v for k, v in s.headers.items()})
        .get("user-agent", "")
        .startswith(CLIENT_AGENTS)
        and "x-forwarded-for" not in h
    ]


def relayed(sims: list[Sim]) -> list[str]:
    """Requests of blazz's client that reached an instance through the gateway."""
    return [
        s.path_qs.partition("?")[0]
        for sim in sims
        for s in sim.seen
        if s.headers.get("User-Agent", "").startswith(CLIENT_AGENTS[0])
        and "X-Forwarded-For" in s.headers
    ]


@pytest.mark.timeout(180)
async def test_blazz_client_and_webhooks_stay_on_the_gateway_through_a_restart_and_a_move(
    php: str, simulators, redis_prefix: str, tmp_path: Path, teardown
):
    a_port, b_port, gw_port, php_port = free_port(), free_port(), free_port(), free_port()
    gateway = f"http://127.0.0.1:{gw_port}"
    root = tmp_path / "blazz"
    shutil.copytree(HERE / "laravel", root)
    for folder in (
        "bootstrap/cache",
        "storage/framework/cache/data",
        "storage/framework/views",
        "storage/logs",
    ):
        (root / folder).mkdir(parents=True)
    (root / "resources" / "views").mkdir(parents=True)
    database, db = await teardown.enter_async_context(own_database(*BLAZZ_DDL))
    php_url = f"http://127.0.0.1:{php_port}"
    (root / ".env").write_text(blazz_env(database, gateway, php_url))
    # The backend made the account row (no instance yet) and knows the contact.
    async with db.cursor() as cur:
        await cur.execute(
            "INSERT INTO whatsapp_accounts (uuid, workspace_id, session_id, provider_type, status,"
            " created_at, updated_at) VALUES (%s, %s, %s, 'webjs', 'qr_scanning', NOW(), NOW())",
            (ACCOUNT, WORKSPACE, SESSION),
        )
        await cur.execute(
            "INSERT INTO whatsapp_accounts (uuid, workspace_id, session_id, provider_type, status,"
            " is_active, created_at, updated_at)"
            " VALUES (%s, %s, 'blazz-lost', 'webjs', 'disconnected', 0, NOW(), NOW())",
            (LOST_ACCOUNT, WORKSPACE),
        )
        await cur.execute(
            "INSERT INTO contacts (uuid, workspace_id, phone) VALUES (%s, %s, '+6281234567890')",
            (CONTACT, WORKSPACE),
        )
    blazz = Blazz(
        php, root, await teardown.enter_async_context(php_server(php, root, php_port)), db
    )

    # A pairing takes a second, as a QR scan takes seconds: the two session_ready events of
    # create and reconnect (the same bytes) are then signed in different seconds, so the
    # gateway can tell the second from a replay of the first.
    instance = {"laravel_url": gateway, "hmac_secret": SECRET, "connect_delay": 1.0}
    a, b = await simulators(ports=[a_port, b_port], **instance)
    # The gateway reads blazz's .env (its key, secret, database and its own URL); its
    # instances and the backend's URL are its own.
    empty = tmp_path / "gateway.toml"
    empty.write_text("")
    settings = load_settings(
        {
            "GATEWAY_CONFIG": str(empty),
            "LARAVEL_ENV_FILE": str(root / ".env"),
            "WHATSAPP_INSTANCES": f"{a.url},{b.url}",
            "GATEWAY_PORT": str(gw_port),
            "LARAVEL_URL": blazz.url,
            "REDIS_URL": REDIS_URL,
            "REDIS_PREFIX": redis_prefix,
            "GATEWAY_HEALTH_INTERVAL": "60",
            "GATEWAY_RECONCILE_INTERVAL": "60",
        }
    )
    assert (settings.public_url, settings.laravel_api_token) == (gateway, API_KEY)
    assert settings.mysql_dsn.endswith(f"/{database}") and settings.hmac_secret == SECRET
    app = create_app(settings)
    runner, _ = await serve(app, gw_port, GatewayRunner)
    teardown.push_async_callback(runner.cleanup)
    outbox = await teardown.enter_async_context(relay_to(blazz.url, settings.key_prefix))

    async def row_is(status: str, index: int) -> bool:
        row = await blazz.row()
        return (row[0], row[3]) == (status, index)

    # Create, status, send, reconnect: blazz's client, its row following every status.
    created = await blazz.call("createSession", WORKSPACE, SESSION)
    assert created["success"] and created["data"]["status"] == "qr_scanning", created
    await eventually(lambda: row_is("connected", 0))
    status = await blazz.call("getSessionStatus", WORKSPACE, SESSION)
    assert status["data"]["status"] == "connected", status
    sent = await blazz.call("sendMessage", WORKSPACE, ACCOUNT, CONTACT, "Hello from blazz")
    assert sent["success"] and sent["data"]["message_id"].startswith("sim_"), sent
    assert a.sessions[SESSION].messages_sent == 1
    # A send for a session no instance holds: the instance's 404, through the gateway, fails
    # it as blazz's client fails it (its failover does not take its own exception for an
    # instance away, so it searches nowhere; were it to, its four instances are the gateway).
    lost = await blazz.call("sendMessage", WORKSPACE, LOST_ACCOUNT, CONTACT, "Anyone?")
    assert lost == {"exception": "Exception: Instance unavailable: 404"}, lost
    reconnected = await blazz.call("reconnectSession", WORKSPACE, SESSION)
    assert reconnected["success"], reconnected

    async def statuses_are(*expected: str) -> bool:
        return tuple(await blazz.statuses()) == expected

    await eventually(lambda: statuses_are("connected", "qr_scanning", "connected"))

    # Instance a dies; b restarts and restores what blazz lists as active, through the gateway.
    await a.runner.cleanup()
    await b.runner.cleanup()
    [b2] = await simulators(ports=[b_port], **instance, restore_on_start=True)
    before = ("connected", "qr_scanning", "connected")
    await eventually(lambda: statuses_are(*before, "authenticated", "connected"))
    assert SESSION in b2.sessions
    await eventually(lambda: row_is("connected", 1))  # the gateway's write-back: b's index
    forwarded = app[GATEWAY].metrics.registry.get_sample_value(
        "gateway_backend_calls_total", {"result": "forwarded"}
    )
    assert forwarded and forwarded >= 1  # b's GET /api/whatsapp/accounts/active

    # The moved session keeps sending: blazz's cached URL is the gateway, which knows where.
    sent = await blazz.call("sendMessage", WORKSPACE, ACCOUNT, CONTACT, "Still here")
    assert sent["success"], sent
    assert b2.sessions[SESSION].messages_sent == 1

    sims = [a, b, b2]
    assert direct(sims) == []
    assert relayed(sims).count("/api/messages/send") == 3  # two sent, one to no session
    assert {"/api/sessions", f"/api/sessions/{SESSION}/reconnect"} <= set(relayed(sims))
    state, phone, url, index = await blazz.row()
    assert (state, url, index) == ("connected", gateway, 1) and phone
    backlog = await settled(outbox)
    assert backlog.dead == 0  # every event taken by blazz: its HMAC check passed them all
