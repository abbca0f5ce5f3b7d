"""Laravel's own code against the pool: Debian's php-laravel-framework, booted two ways.

``laravel.php`` (with ``boot.php``) is Laravel without an application: the queue capsule pushes
and the failed-job provider and ``queue:*`` commands read and change ``failed_jobs``. ``app/`` is
a template of the smallest Laravel application; each test that needs one (the PHP runner,
``artisan queue:work``) gets its own copy with a ``.env`` naming its Redis prefix and database.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomysql
import pytest

from tests.support import unavailable
from tests.workers.conftest import Harness, harness, mysql_harness, redis

__all__ = ["harness", "laravel", "mysql_harness", "php", "redis"]

HERE = Path(__file__).resolve().parent
PHP_CHECK = (
    'require "Illuminate/autoload.php";'
    ' exit(class_exists("Redis") && extension_loaded("pdo_mysql") ? 0 : 1);'
)
JOB_RUNS_DDL = """
CREATE TABLE job_runs (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  event VARCHAR(20) NOT NULL,
  note TEXT NOT NULL,
  attempt INT NOT NULL,
  pid INT NOT NULL
)
"""


@pytest.fixture(scope="session")
def php() -> str:
    """The php binary, with Debian's Laravel, phpredis and pdo_mysql (.ci/run installs them)."""
    binary = shutil.which("php")
    if binary is None:
        unavailable("php is not installed (apt-get install php-cli php-laravel-framework ...)")
    check = subprocess.run([binary, "-r", PHP_CHECK], capture_output=True, timeout=30)
    if check.returncode != 0:
        unavailable("php lacks php-laravel-framework, php-redis or php-mysql")
    return binary


def php_json(php: str, script: str, payload: Any, timeout: float = 120) -> Any:
    """Run ``HERE/script`` with ``payload`` as JSON on stdin; its JSON answer on stdout."""
    answer = subprocess.run(
        [php, str(HERE / script)],
        input=json.dumps(payload),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=True,
    )
    return json.loads(answer.stdout)


@dataclass
class Laravel:
    """Laravel pointed at one test's Redis prefix and database."""

    php: str
    harness: Harness
    database: str
    connection: str = "redis"
    timezone: str = "UTC"

    def env(self) -> dict[str, str]:
        return {
            "PATH": self.harness.environ()["PATH"],
            "REDIS_HOST": "127.0.0.1",
            "REDIS_PORT": "6379",
            "REDIS_PREFIX": self.harness.prefix,
            "DB_DATABASE": self.database,
            "LARAVEL_CONNECTION": self.connection,
            "QUEUE_CONNECTION": self.connection,
            "APP_TIMEZONE": self.timezone,
        }

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [self.php, str(HERE / "laravel.php"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check:
            assert result.returncode == 0, result.stdout + result.stderr
        return result

    def push(self, job: str, data: dict[str, Any], queue: str) -> str:
        """``Queue::push('job', $data, $queue)``; returns the job's id."""
        return self.run("push", job, json.dumps(data), queue).stdout.strip()

    def later(self, delay: int, job: str, data: dict[str, Any], queue: str) -> str:
        return self.run("later", str(delay), job, json.dumps(data), queue).stdout.strip()

    def push_raw(self, payload: str, queue: str) -> str:
        return self.run("pushRaw", payload, queue).stdout.strip()

    def dispatch(self, job_class: str, queue: str, *args: Any) -> str:
        """``Queue::push(new App\\Jobs\\CLASS(...args), '', $queue)``: a PHP job class."""
        return self.run("dispatch", f"App\\Jobs\\{job_class}", json.dumps(args), queue).stdout

    def failed_all(self) -> list[dict[str, Any]]:
        """The failed-job provider's ``all()``."""
        return json.loads(self.run("failed", "all").stdout)

    def failed_find(self, job_id: str) -> dict[str, Any] | None:
        return json.loads(self.run("failed", "find", job_id).stdout)

    def artisan(self, *args: str) -> subprocess.CompletedProcess[str]:
        """``php artisan queue:failed | queue:retry | queue:forget | queue:flush``."""
        return self.run("artisan", *args, check=False)

    def app(self) -> Path:
        """A copy of the app template, with a .env for this test; returns its folder."""
        root = self.harness.tmp / "laravel-app"
        if not root.exists():
            shutil.copytree(HERE / "app", root)
            for folder in ("bootstrap/cache", "storage/framework/cache", "storage/logs"):
                (root / folder).mkdir(parents=True, exist_ok=True)
            env = {**self.env(), "APP_NAME": "Test", "APP_ENV": "testing"}
            env.pop("PATH")
            (root / ".env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        return root

    def queue_work(self, queue: str) -> subprocess.CompletedProcess[str]:
        """``php artisan queue:work --once``: PHP's own worker takes one job."""
        return subprocess.run(
            [self.php, str(self.app() / "artisan"), "queue:work", "--once", f"--queue={queue}"],
            env={"PATH": self.env()["PATH"]},
            capture_output=True,
            text=True,
            timeout=60,
        )

    async def runs(self) -> list[dict[str, Any]]:
        """Rows the test jobs wrote (``job_runs``), oldest first."""
        async with (
            await self.harness.mysql_conn() as conn,
            conn.cursor(aiomysql.DictCursor) as cur,
        ):
            await cur.execute("SELECT event, note, attempt, pid FROM job_runs ORDER BY id")
            return list(await cur.fetchall())


@pytest.fixture
async def laravel(php: str, mysql_harness: Harness) -> AsyncIterator[Laravel]:
    async with await mysql_harness.mysql_conn() as conn, conn.cursor() as cur:
        await cur.execute(JOB_RUNS_DDL)
    database = mysql_harness.mysql_dsn.rsplit("/", 1)[1]
    yield Laravel(php, mysql_harness, database)
