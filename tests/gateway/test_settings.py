"""The settings loader: precedence, Laravel names, and one clear line for a bad value."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.shared.laravel.dotenv import parse_dotenv
from gateway.shared.loader import describe, load_settings
from gateway.shared.settings import DatabaseSettings, Settings, SettingsError
from workers.settings import WorkerSettings, load_worker_settings

ROOT = Path(__file__).resolve().parents[2]


def write(path: Path, text: str) -> str:
    path.write_text(text)
    return str(path)


def test_defaults_without_any_file(tmp_path: Path) -> None:
    s = load_settings({"GATEWAY_CONFIG": write(tmp_path / "g.toml", "")})
    assert s == Settings()
    assert s.instances == tuple(f"http://localhost:{p}" for p in range(3001, 3005))
    # Unset, and check-config says what the backend is told: the listen address.
    assert s.sources.pop("public_url").startswith(
        "unset: the backend is told http://127.0.0.1:8080"
    )
    assert set(s.sources.values()) == {"default"}


def test_env_beats_dotenv_beats_toml(tmp_path: Path) -> None:
    toml = write(tmp_path / "g.toml", 'port = 9001\nhealth_interval = 7.5\nplacement = "shard"\n')
    dotenv = write(tmp_path / ".env", "GATEWAY_PORT=9002\nGATEWAY_HEALTH_INTERVAL=3\n")
    s = load_settings({"GATEWAY_CONFIG": toml, "LARAVEL_ENV_FILE": dotenv, "GATEWAY_PORT": "9003"})
    assert (s.port, s.health_interval, s.placement) == (9003, 3.0, "shard")
    assert s.sources["port"] == "env"
    assert s.sources["health_interval"] == f".env ({dotenv})"
    assert s.sources["placement"] == f"toml ({toml})"


def test_the_local_file_beats_the_tracked_one_and_the_environment_beats_both(
    tmp_path: Path,
) -> None:
    """The operator's settings live in gateway.local.toml next to the tracked file, which
    then holds defaults only, so an upgrade's ``git pull`` meets no edit of theirs."""
    tracked = write(
        tmp_path / "gateway.toml",
        "port = 8080\nhealth_fall = 2\nplacement = 'least_loaded'\n"
        "[workers]\nconcurrency = 10\ntries = 3\n",
    )
    local = write(
        tmp_path / "gateway.local.toml", "port = 9000\nhealth_fall = 3\n[workers]\ntries = 5\n"
    )
    s = load_settings({"GATEWAY_CONFIG": tracked, "GATEWAY_HEALTH_FALL": "4"})
    assert (s.port, s.health_fall, s.placement) == (9000, 4, "least_loaded")
    assert s.sources["port"] == f"toml ({local})"
    assert s.sources["health_fall"] == "env"
    assert s.sources["placement"] == f"toml ({tracked})"
    _, workers = load_worker_settings({"GATEWAY_CONFIG": tracked})
    assert (workers.concurrency, workers.tries) == (10, 5)  # a table merged key by key

    elsewhere = write(tmp_path / "etc.toml", "port = 9100\n")  # /etc/whatsapp-gateway/...
    named = {"GATEWAY_CONFIG": tracked, "GATEWAY_LOCAL_CONFIG": elsewhere}
    assert load_settings(named).port == 9100  # instead of the sibling, not on top of it
    assert load_settings(named).health_fall == 2

    write(tmp_path / "gateway.local.toml", "colour = 'blue'\n")
    with pytest.raises(SettingsError, match=re.escape(f"colour: unknown key in {local}")):
        load_settings({"GATEWAY_CONFIG": tracked})
    missing = {"GATEWAY_CONFIG": tracked, "GATEWAY_LOCAL_CONFIG": str(tmp_path / "none.toml")}
    with pytest.raises(SettingsError, match=r"GATEWAY_LOCAL_CONFIG: .* does not exist"):
        load_settings(missing)


def test_laravel_names_from_the_dotenv(tmp_path: Path) -> None:
    dotenv = write(
        tmp_path / ".env",
        """
APP_NAME="Blazz Chat"
WHATSAPP_INSTANCE_COUNT=2
WHATSAPP_INSTANCE_1=http://10.0.0.1:3001
WHATSAPP_INSTANCE_2=http://10.0.0.2:3001/
REDIS_HOST=redis.internal
REDIS_PASSWORD="p@ss word"
REDIS_PORT=6380
REDIS_DB=2
DB_CONNECTION=mysql
DB_HOST=db.internal
DB_DATABASE=blazz
DB_USERNAME=app
DB_PASSWORD='s3cret#x'
WHATSAPP_MAX_SESSIONS_PER_INSTANCE=250
LARAVEL_API_TOKEN=tok # the shared key
""",
    )
    s = load_settings(
        {"LARAVEL_ENV_FILE": dotenv, "GATEWAY_CONFIG": write(tmp_path / "g.toml", "")}
    )
    assert s.instances == ("http://10.0.0.1:3001", "http://10.0.0.2:3001")
    assert s.redis_url == "redis://:p%40ss%20word@redis.internal:6380/2"
    assert s.redis_prefix == "blazz_chat_database_"
    assert s.mysql_dsn == "mysql://app:s3cret%23x@db.internal:3306/blazz"
    assert s.max_sessions_per_instance == 250
    assert s.laravel_api_token == "tok"


def test_laravel_app_timezone_and_php_workers(tmp_path: Path) -> None:
    app = tmp_path / "app"
    (app / "bootstrap").mkdir(parents=True)
    dotenv = write(app / ".env", "APP_TIMEZONE=Asia/Jakarta\n")
    toml = write(tmp_path / "g.toml", "")
    _, w = load_worker_settings({"LARAVEL_ENV_FILE": dotenv, "GATEWAY_CONFIG": toml})
    assert w.laravel_app_path == ""  # a .env alone is not an app
    write(app / "bootstrap" / "app.php", "<?php\n")
    settings, w = load_worker_settings({"LARAVEL_ENV_FILE": dotenv, "GATEWAY_CONFIG": toml})
    assert (w.laravel_app_path, w.timezone, w.php_workers) == (str(app), "Asia/Jakarta", 2)
    assert "LARAVEL_ENV_FILE" in settings.sources["workers.laravel_app_path"]
    _, w = load_worker_settings(
        {
            "LARAVEL_ENV_FILE": dotenv,
            "GATEWAY_CONFIG": toml,
            "LARAVEL_APP_PATH": "/srv/app",
            "GATEWAY_WORKERS_PHP_WORKERS": "0",
        }
    )
    assert (w.laravel_app_path, w.php_workers) == ("/srv/app", 0)
    assert load_worker_settings({"GATEWAY_CONFIG": toml})[1].laravel_app_path == ""
    for env, name in (
        ({"APP_TIMEZONE": "Mars/Olympus"}, "workers.timezone"),
        ({"GATEWAY_WORKERS_PHP_WORKERS": "-1"}, "workers.php_workers"),
    ):
        with pytest.raises(SettingsError, match=name):
            load_worker_settings({"GATEWAY_CONFIG": toml, **env})


def test_whatsapp_instances_list_wins_over_the_count() -> None:
    s = load_settings(
        {
            "WHATSAPP_INSTANCES": "http://a:1, http://b:2",
            "WHATSAPP_INSTANCE_COUNT": "1",
            "WHATSAPP_INSTANCE_1": "http://c:3",
            "GATEWAY_CONFIG": str(ROOT / "config" / "gateway.toml"),
        }
    )
    assert s.instances == ("http://a:1", "http://b:2")


def test_the_shipped_toml_states_the_defaults() -> None:
    s = load_settings({"GATEWAY_CONFIG": str(ROOT / "config" / "gateway.toml")})
    defaults = Settings()
    for name in ("port", "instances", "placement", "health_interval", "max_body_bytes"):
        assert getattr(s, name) == getattr(defaults, name)
    assert s.database == DatabaseSettings()
    _, workers = load_worker_settings({"GATEWAY_CONFIG": str(ROOT / "config" / "gateway.toml")})
    assert workers.queues == WorkerSettings().queues


def test_the_database_table_and_columns_are_settings(tmp_path: Path) -> None:
    toml = write(tmp_path / "g.toml", '[database]\ntable = "accounts"\npool_size = 2\n')
    s = load_settings({"GATEWAY_CONFIG": toml, "GATEWAY_DATABASE_URL_COLUMN": "node_url"})
    assert (s.database.table, s.database.url_column, s.database.pool_size) == (
        "accounts",
        "node_url",
        2,
    )
    assert s.database.session_column == "session_id"  # the reference's names by default
    assert s.sources["database.table"] == f"toml ({toml})"
    assert s.sources["database.url_column"] == "env"
    # a bad [database] value is the gateway's: the workers still start
    _, workers = load_worker_settings({"GATEWAY_CONFIG": toml, "GATEWAY_DATABASE_TABLE": "a b"})
    assert workers.tries == WorkerSettings().tries


GATEWAY, WORKERS = load_settings, load_worker_settings


@pytest.mark.parametrize(
    ("load", "env", "toml", "words"),
    [
        (GATEWAY, {"GATEWAY_PORT": "70000"}, "", "port: 70000 is out of range"),
        (GATEWAY, {"GATEWAY_PORT": "eighty"}, "", "port: 'eighty' is not a valid int"),
        (GATEWAY, {"WHATSAPP_INSTANCES": "http://a:1,http://a:1"}, "", "is listed twice"),
        (GATEWAY, {"WHATSAPP_INSTANCES": "localhost:3001"}, "", "is not an http(s) URL"),
        (GATEWAY, {"WHATSAPP_INSTANCES": "http://u:pw@a:1"}, "", "'http://u:***@a:1' has cred"),
        (
            GATEWAY,
            {"WHATSAPP_INSTANCE_COUNT": "2", "WHATSAPP_INSTANCE_1": "http://a:1"},
            "",
            "WHATSAPP_INSTANCE_2: missing",
        ),
        (GATEWAY, {}, "colour = 'blue'\n", "colour: unknown key"),
        (WORKERS, {}, "[workers]\nspeed = 3\n", "workers.speed: unknown key"),
        (WORKERS, {"GATEWAY_WORKERS_CONCURRENCY": "0"}, "", "workers.concurrency: 0 must be"),
        (WORKERS, {}, "workers = 3\n", "workers: must be a table"),
        (GATEWAY, {}, "health_fall = 'two'\n", "health_fall: 'two' is not a valid int"),
        (GATEWAY, {}, "placement = 'random'\n", "placement: 'random' is not one of"),
        (GATEWAY, {"REDIS_URL": "http://x"}, "", "redis_url"),
        (WORKERS, {"REDIS_URL": "http://x"}, "", "redis_url"),  # shared: stops both
        (GATEWAY, {"GATEWAY_DATABASE_TABLE": "a`; DROP"}, "", "database.table: 'a`; DROP' is not"),
        (GATEWAY, {}, "[database]\nurl_column = ''\n", "database.url_column: '' is not a"),
        (GATEWAY, {}, "[database]\ncolour = 1\n", "database.colour: unknown key"),
        (GATEWAY, {}, "database = 3\n", "database: must be a table"),
        (GATEWAY, {"GATEWAY_DATABASE_POOL_SIZE": "0"}, "", "database.pool_size: 0 must be"),
        (GATEWAY, {}, "[database]\nquery_timeout = 0\n", "database.query_timeout: 0.0 must be"),
    ],
)
def test_a_bad_setting_is_named_with_its_value(
    tmp_path: Path, load: Callable[..., object], env: dict[str, str], toml: str, words: str
) -> None:
    with pytest.raises(SettingsError) as exc:
        load({**env, "GATEWAY_CONFIG": write(tmp_path / "g.toml", toml)})
    assert words in str(exc.value)
    assert "\n" not in str(exc.value)


def test_each_program_checks_only_its_own_sections(tmp_path: Path) -> None:
    bad_workers = {
        "GATEWAY_CONFIG": write(tmp_path / "w.toml", "[workers]\nspeed = 3\ntries = 0\n"),
        "GATEWAY_WORKERS_CONCURRENCY": "many",
    }
    assert load_settings(bad_workers).port == 8080  # the gateway starts
    bad_gateway = {
        "GATEWAY_CONFIG": write(tmp_path / "g.toml", "colour = 'blue'\nplacement = 'random'\n"),
        "GATEWAY_PORT": "eighty",
        "REDIS_PREFIX": "app_",
        "GATEWAY_WORKERS_TRIES": "5",
    }
    settings, workers = load_worker_settings(bad_gateway)  # the workers start
    assert (settings.redis_prefix, workers.tries) == ("app_", 5)
    assert settings.sources["redis_prefix"] == "env"
    assert settings.sources["workers.tries"] == "env"
    assert "port" not in settings.sources  # not read, so not shown as in force


def test_dotenv_parsing() -> None:
    assert parse_dotenv('# c\nexport AB=1\nB="two words"\nC=x # note\nD=\n') == {
        "AB": "1",
        "B": "two words",
        "C": "x",
        "D": "",
    }


def test_the_backends_env_is_read_as_laravel_reads_it(tmp_path: Path) -> None:
    """phpdotenv's rules (tests/laravel/test_dotenv.py compares them with PHP's own)."""
    dotenv = write(
        tmp_path / ".env",
        'APP_NAME=Blazz\nREDIS_PREFIX="${APP_NAME}_x_"\nLARAVEL_API_TOKEN="se\\"cret"\n'
        'PRIVATE_KEY="-----BEGIN-----\nGATEWAY_PORT=1\n-----END-----"\n'
        "HMAC_SECRET='${APP_NAME}'\nREDIS_HOST=${REDIS_HOST_FROM_ENV}\n",
    )
    env = {"LARAVEL_ENV_FILE": dotenv, "GATEWAY_CONFIG": write(tmp_path / "g.toml", "")}
    s = load_settings({**env, "REDIS_HOST_FROM_ENV": "redis.internal"})
    assert s.redis_prefix == "Blazz_x_"
    assert s.laravel_api_token == 'se"cret'
    assert s.port == 8080  # a multi-line value's inner line is no setting
    assert s.hmac_secret == "${APP_NAME}"  # single quotes: literal
    assert s.redis_url == "redis://redis.internal:6379/0"


def test_an_env_laravel_would_not_boot_with_is_refused(tmp_path: Path) -> None:
    dotenv = write(tmp_path / ".env", "APP_NAME=two words\n")
    with pytest.raises(SettingsError, match=r"LARAVEL_ENV_FILE: .*unexpected whitespace"):
        load_settings({"LARAVEL_ENV_FILE": dotenv, "GATEWAY_CONFIG": write(tmp_path / "g", "")})


def test_check_config_masks_secrets(tmp_path: Path) -> None:
    s = load_settings(
        {
            "GATEWAY_CONFIG": write(tmp_path / "g.toml", ""),
            "LARAVEL_API_TOKEN": "supersecret",
            "REDIS_URL": "redis://:hunter2@localhost:6379/0",
        }
    )
    rows = {name: (value, source) for name, value, source in describe(s)}
    assert rows["laravel_api_token"] == ("***", "env")
    assert rows["redis_url"] == ("redis://:***@localhost:6379/0", "env")
    assert "supersecret" not in str(rows) and "hunter2" not in str(rows)


def test_the_commands_print_one_line_on_a_bad_setting() -> None:
    env = {"PATH": "/usr/bin:/bin", "GATEWAY_PORT": "0"}
    bad = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "configuration error: port: 0 is out of range 1-65535 (from env)"
    ]
    good = subprocess.run(
        [sys.executable, "-m", "gateway", "check-config"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "LARAVEL_API_TOKEN": "zzz-secret"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert good.returncode == 0
    assert "laravel_api_token" in good.stdout and "zzz-secret" not in good.stdout
    assert "[env]" in good.stdout and "[toml (config/gateway.toml)]" in good.stdout


def run_module(module: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, "check-config"],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_a_bad_worker_setting_stops_only_the_workers() -> None:
    env = {"GATEWAY_WORKERS_CONCURRENCY": "0"}
    workers = run_module("workers", env)
    assert workers.returncode == 2
    assert workers.stderr.strip().splitlines() == [
        "workers: workers.concurrency: 0 must be at least 1 (from env)"
    ]
    gateway = run_module("gateway", env)
    assert gateway.returncode == 0, gateway.stderr
    # of [workers] the gateway reads only what its console shows
    shown = {line.split()[0] for line in gateway.stdout.splitlines() if line.startswith("workers.")}
    assert shown == {"workers.queues", "workers.laravel_connection"}


def test_a_bad_gateway_setting_stops_only_the_gateway() -> None:
    env = {"GATEWAY_PORT": "0", "GATEWAY_WORKERS_CONCURRENCY": "7"}
    assert run_module("gateway", env).returncode == 2
    workers = run_module("workers", env)
    assert workers.returncode == 0, workers.stderr
    rows = {line.split()[0]: line for line in workers.stdout.splitlines()}
    assert "7  [env]" in rows["workers.concurrency"]
    assert "redis_url" in rows and "port" not in rows


# The redis prefix lines of the two skeletons: Laravel <= 10 (and apps that kept it), 11+.
UNDERSCORE_LINE = (
    "'prefix' => env('REDIS_PREFIX', Str::slug(env('APP_NAME', 'laravel'), '_').'_database_'),"
)
DASH_LINE = (
    "'prefix' => env('REDIS_PREFIX', Str::slug((string) env('APP_NAME', 'laravel')).'-database-'),"
)


def laravel_app(tmp_path: Path, dotenv: str, database_php: str | None) -> dict[str, str]:
    """An app folder with its .env and, if given, config/database.php; the loader's env."""
    if database_php is not None:
        (tmp_path / "config").mkdir()
        write(
            tmp_path / "config" / "database.php",
            f"<?php\nreturn ['redis' => [\n{database_php}\n]];\n",
        )
    return {
        "LARAVEL_ENV_FILE": write(tmp_path / ".env", dotenv),
        "GATEWAY_CONFIG": write(tmp_path / "g.toml", ""),
    }


@pytest.mark.parametrize(
    ("line", "app_name", "prefix"),
    [
        (UNDERSCORE_LINE, "Acme.io", "acmeio_database_"),
        (DASH_LINE, "Acme.io", "acmeio-database-"),
        (UNDERSCORE_LINE, '"Café Ünion"', "cafe_union_database_"),
        (DASH_LINE, '"Café Ünion"', "cafe-union-database-"),
        (DASH_LINE, '"Joe\'s Pizza & Co"', "joes-pizza-co-database-"),
    ],
)
def test_the_prefix_is_laravels_by_the_apps_own_database_php(
    tmp_path: Path, line: str, app_name: str, prefix: str
) -> None:
    env = laravel_app(tmp_path, f"APP_NAME={app_name}\n", line)
    s = load_settings(env)
    assert s.redis_prefix == prefix
    php = tmp_path / "config" / "database.php"
    assert s.sources["redis_prefix_form"] == f"config/database.php ({php})"
    assert s.sources["redis_prefix"] == (
        f"APP_NAME from .env ({env['LARAVEL_ENV_FILE']}), config/database.php ({php})"
    )


def test_without_database_php_the_form_setting_says_which_line(tmp_path: Path) -> None:
    env = laravel_app(tmp_path, "APP_NAME=Acme.io\n", None)
    assert load_settings(env).redis_prefix == "acmeio_database_"  # the default form
    dash = load_settings({**env, "GATEWAY_REDIS_PREFIX_FORM": "-database-"})
    assert dash.redis_prefix == "acmeio-database-"
    assert dash.sources["redis_prefix"].endswith("form -database- from env")
    no_name = {"GATEWAY_CONFIG": env["GATEWAY_CONFIG"], "GATEWAY_REDIS_PREFIX_FORM": "-database-"}
    assert load_settings(no_name).redis_prefix == "laravel-database-"
    with pytest.raises(SettingsError) as exc:
        load_settings({**env, "GATEWAY_REDIS_PREFIX_FORM": "database"})
    assert str(exc.value).startswith("redis_prefix_form: 'database' is not one of")


def test_a_prefix_that_is_set_wins_over_app_name(tmp_path: Path) -> None:
    env = laravel_app(tmp_path, "APP_NAME=Acme\nREDIS_PREFIX=custom_\n", DASH_LINE)
    # as in Laravel: REDIS_PREFIX from the .env wins over an APP_NAME in the environment
    assert load_settings({**env, "APP_NAME": "Other"}).redis_prefix == "custom_"
    toml = write(tmp_path / "p.toml", 'redis_prefix = "toml_"\n')
    # the TOML file is below the environment and the .env, as for every setting
    with_name = {
        "LARAVEL_ENV_FILE": write(tmp_path / "b.env", "APP_NAME=A\n"),
        "GATEWAY_CONFIG": toml,
    }
    assert load_settings(with_name).redis_prefix == "a-database-"
    assert load_settings({"GATEWAY_CONFIG": toml}).redis_prefix == "toml_"


def test_database_php_is_read_as_php_not_as_text(tmp_path: Path) -> None:
    commented = f"// {DASH_LINE}\n/* {DASH_LINE} */\n{UNDERSCORE_LINE}"
    env = laravel_app(tmp_path, "APP_NAME=Acme\n", commented)
    assert load_settings(env).redis_prefix == "acme_database_"
    own_default = (
        "'prefix' => env(\"REDIS_PREFIX\", Str::slug(env(\"APP_NAME\", \"My App\"), '_') . '_q_'),"
    )
    (tmp_path / "config" / "database.php").write_text(f"<?php\n{own_default}\n")
    assert load_settings(
        {**env, "LARAVEL_ENV_FILE": write(tmp_path / "e.env", "")}
    ).redis_prefix == ("my_app_q_")
    (tmp_path / "config" / "database.php").write_text("<?php return ['redis' => []];\n")
    assert load_settings(env).redis_prefix == "acme_database_"  # no such line: the setting


def test_settings_bound_to_the_socket_say_so_and_a_reload_refuses_them() -> None:
    from gateway.lifecycle.reloadable import refusal

    assert set(Settings.restart_only()) == {
        "host",
        "port",
        "http_engine",
        "max_body_bytes",
        "webhook_path",
        "processes",
    }
    current = Settings()
    assert refusal(current, dataclasses.replace(current, read_timeout=5)) is None
    refused = refusal(current, dataclasses.replace(current, http_engine="aiohttp"))
    assert refused == "http_engine cannot change without a restart"
