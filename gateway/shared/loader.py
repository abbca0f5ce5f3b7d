"""One settings loader for the gateway and the workers, and the gateway's own settings.

Precedence, highest first: the process environment, the Laravel ``.env`` file named by
``LARAVEL_ENV_FILE``, the operator's local TOML file (``GATEWAY_LOCAL_CONFIG``, default the
TOML file's sibling ``gateway.local.toml``, untracked, so ``git pull`` never meets an edit),
the tracked TOML file (``GATEWAY_CONFIG``, default ``config/gateway.toml``: defaults only),
then the defaults below. Reading the backend's own ``.env`` means one source of truth for
instance URLs, Redis and MySQL. A bad value stops start-up with one line naming it.

Each program reads and checks only its own sections: the gateway the top level of the TOML
file, the workers (``workers.settings``) the shared top-level settings and ``[workers]``. A
bad ``[workers]`` value stops only the workers, a bad gateway value only the gateway.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Callable, Collection, Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import quote

from gateway.shared.checks import (
    check_database,
    check_gateway,
    check_shared,
    check_url,
    coerce,
    mask,
    parse_processes,
)
from gateway.shared.laravel.dotenv import DotenvError, parse_dotenv
from gateway.shared.laravel.prefix_rule import PREFIX_FORMS, PrefixRule, prefix_rule
from gateway.shared.settings import (
    DEFAULT_CONFIG,
    DERIVED,
    SECRETS,
    SHARED,
    TABLES,
    DatabaseSettings,
    QueueSettings,
    Settings,
    SettingsError,
    listen_url,
)

# Env names besides GATEWAY_<NAME>: the ones the issue and Laravel's .env use.
ENV_NAMES: Mapping[str, tuple[str, ...]] = {
    "max_sessions_per_instance": ("WHATSAPP_MAX_SESSIONS_PER_INSTANCE",),
    "laravel_api_token": ("LARAVEL_API_TOKEN",),
    "hmac_secret": ("HMAC_SECRET", "WHATSAPP_HMAC_SECRET"),
    "backend_url": ("LARAVEL_URL",),
    # The backend's own base URL for its WhatsApp client: the gateway, once pointed at it.
    "public_url": ("GATEWAY_PUBLIC_URL", "WHATSAPP_NODEJS_URL"),
}


def _instances_from(env: Mapping[str, str]) -> str | None:
    if env.get("WHATSAPP_INSTANCES"):
        return env["WHATSAPP_INSTANCES"]
    if "WHATSAPP_INSTANCE_COUNT" not in env:
        return None
    count = env["WHATSAPP_INSTANCE_COUNT"]
    if not count.isdigit() or int(count) < 1:
        raise SettingsError(f"WHATSAPP_INSTANCE_COUNT: {count!r} is not a positive whole number")
    urls = []
    for i in range(1, int(count) + 1):
        url = env.get(f"WHATSAPP_INSTANCE_{i}")
        if not url:
            raise SettingsError(f"WHATSAPP_INSTANCE_{i}: missing (WHATSAPP_INSTANCE_COUNT={count})")
        urls.append(url)
    return ",".join(urls)


def _redis_url_from(env: Mapping[str, str]) -> str | None:
    if env.get("REDIS_URL"):
        return env["REDIS_URL"]
    if not any(env.get(k) for k in ("REDIS_HOST", "REDIS_PORT", "REDIS_PASSWORD", "REDIS_DB")):
        return None
    password = env.get("REDIS_PASSWORD", "")
    if password.lower() == "null":
        password = ""
    auth = f":{quote(password, safe='')}@" if password else ""
    host = env.get("REDIS_HOST") or "127.0.0.1"
    port = env.get("REDIS_PORT") or "6379"
    return f"redis://{auth}{host}:{port}/{env.get('REDIS_DB') or '0'}"


def _mysql_dsn_from(env: Mapping[str, str]) -> str | None:
    if env.get("MYSQL_DSN"):
        return env["MYSQL_DSN"]
    if env.get("DB_CONNECTION", "mysql") not in ("mysql", "mariadb") or not env.get("DB_DATABASE"):
        return None
    user = quote(env.get("DB_USERNAME") or "root", safe="")
    password = env.get("DB_PASSWORD", "")
    auth = f"{user}:{quote(password, safe='')}" if password else user
    host = env.get("DB_HOST") or "127.0.0.1"
    return f"mysql://{auth}@{host}:{env.get('DB_PORT') or '3306'}/{env['DB_DATABASE']}"


def _app_rule(environ: Mapping[str, str], dotenv_path: str) -> tuple[PrefixRule, str] | None:
    """The rule in the app's ``config/database.php`` (the app is ``LARAVEL_APP_PATH``, else
    the folder of ``LARAVEL_ENV_FILE``), with where it was read."""
    app = environ.get("LARAVEL_APP_PATH") or (str(Path(dotenv_path).parent) if dotenv_path else "")
    php = Path(app) / "config" / "database.php" if app else None
    try:
        rule = prefix_rule(php.read_text(errors="replace")) if php and php.is_file() else None
    except OSError:
        rule = None
    return None if rule is None or php is None else (rule, f"config/database.php ({php})")


COMPOSITES: Mapping[str, Callable[[Mapping[str, str]], str | None]] = {
    "instances": _instances_from,
    "redis_url": _redis_url_from,
    "mysql_dsn": _mysql_dsn_from,
}


def _env_names(
    table: str | None, name: str, aliases: Mapping[str, tuple[str, ...]]
) -> tuple[str, ...]:
    own = f"GATEWAY_{table}_{name}" if table else f"GATEWAY_{name}"
    return (*aliases.get(name, ()), own.upper())


def _load_toml(path: Path, required: bool, setting: str = "GATEWAY_CONFIG") -> dict[str, Any]:
    if not path.is_file():
        if required:
            raise SettingsError(f"{setting}: {str(path)!r} does not exist")
        return {}
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{setting}: {str(path)!r} is not valid TOML ({exc})") from None


def local_config(path: Path) -> Path:
    """``config/gateway.toml`` -> ``config/gateway.local.toml``, the operator's own file."""
    return path.with_name(f"{path.stem}.local{path.suffix}")


class Sources:
    """Every source of settings, read once; each program resolves its own sections from it.

    ``origin`` records, per setting resolved so far, where its value came from.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        dotenv_path = environ.get("LARAVEL_ENV_FILE", "")
        dotenv: dict[str, str] = {}
        if dotenv_path:
            try:
                text = Path(dotenv_path).read_bytes().decode("utf-8", "replace")
                dotenv = parse_dotenv(text, environ)
            except OSError as exc:
                raise SettingsError(f"LARAVEL_ENV_FILE: {dotenv_path!r} ({exc.strerror})") from None
            except DotenvError as exc:
                raise SettingsError(f"LARAVEL_ENV_FILE: {dotenv_path!r}: {exc}") from None
        self.toml_path = Path(environ.get("GATEWAY_CONFIG", DEFAULT_CONFIG))
        self.toml = _load_toml(self.toml_path, required="GATEWAY_CONFIG" in environ)
        named = environ.get("GATEWAY_LOCAL_CONFIG", "")
        self.local_path = Path(named) if named else local_config(self.toml_path)
        self.local = _load_toml(self.local_path, bool(named), "GATEWAY_LOCAL_CONFIG")
        for key, value in self.local.items():  # over the tracked file, table by table
            below = self.toml.get(key)
            both = isinstance(value, dict) and isinstance(below, dict)
            self.toml[key] = {**below, **value} if both else value
        self.layers = (("env", environ), (f".env ({dotenv_path})", dotenv))
        self.origin: dict[str, str] = {}
        self.app_rule = _app_rule({**dotenv, **environ}, dotenv_path)

    def _file(self, table: str | None, name: str) -> Path:
        """The TOML file a key's value comes from: the local one when it sets it."""
        local = self.local.get(table, {}) if table else self.local
        return self.local_path if isinstance(local, dict) and name in local else self.toml_path

    def _table(self, table: str | None) -> Mapping[str, Any]:
        if table is None:
            return self.toml
        values = self.toml.get(table, {})
        if not isinstance(values, dict):
            raise SettingsError(f"{table}: must be a table in {self._file(None, table)}")
        return values

    def _raw(self, table: str | None, name: str, aliases: Mapping[str, tuple[str, ...]]) -> Any:
        """The highest-precedence raw value of one setting, or None; records its origin."""
        label = f"{table}.{name}" if table else name
        if table is None and name == "redis_prefix_form" and self.app_rule is not None:
            rule, self.origin[label] = self.app_rule
            return rule.suffix
        if table is None and name == "redis_prefix":
            return self._redis_prefix(label)
        for source, layer in self.layers:
            raw = next((layer[n] for n in _env_names(table, name, aliases) if n in layer), None)
            composite = COMPOSITES.get(name) if table is None else None
            if raw is None and composite is not None:
                raw = composite(layer)
            if raw is not None:
                self.origin[label] = source
                return raw
        toml_table = self._table(table)
        if name in toml_table:
            self.origin[label] = f"toml ({self._file(table, name)})"
            return toml_table[name]
        self.origin[label] = "default"
        return None

    def _redis_prefix(self, label: str) -> Any:
        """As Laravel: ``REDIS_PREFIX`` when set, else derived from ``APP_NAME``; both from
        the environment, then the ``.env``. Then the TOML file, then Laravel's default."""
        for names in (("GATEWAY_REDIS_PREFIX", "REDIS_PREFIX"), ("APP_NAME",)):
            for source, layer in self.layers:
                name = next((n for n in names if n in layer), None)
                if name == "APP_NAME":
                    rule, how = self._prefix_rule()
                    self.origin[label] = f"APP_NAME from {source}, {how}"
                    return rule.prefix(layer[name])
                if name is not None:
                    self.origin[label] = source
                    return layer[name]
        if "redis_prefix" in self.toml:
            self.origin[label] = f"toml ({self._file(None, 'redis_prefix')})"
            return self.toml["redis_prefix"]
        rule, how = self._prefix_rule()
        plain = self.app_rule is None and self.origin["redis_prefix_form"] == "default"
        self.origin[label] = "default" if plain else f"no APP_NAME, {how}"
        return rule.prefix(None)

    def _prefix_rule(self) -> tuple[PrefixRule, str]:
        """The app's own line, else the ``redis_prefix_form`` setting; with where it is from."""
        if self.app_rule is not None:
            rule, how = self.app_rule
        else:
            form = str(self._raw(None, "redis_prefix_form", ENV_NAMES) or "_database_")
            how = f"form {form} from {self.origin['redis_prefix_form']}"
            self.need(
                form in PREFIX_FORMS,
                "redis_prefix_form",
                form,
                f"is not one of {tuple(PREFIX_FORMS)}",
            )
            rule = PREFIX_FORMS[form]
        return rule, how

    def resolve(
        self,
        cls: type,
        table: str | None = None,
        *,
        names: Collection[str] | None = None,
        aliases: Mapping[str, tuple[str, ...]] = ENV_NAMES,
        urls: Collection[str] = (),
    ) -> dict[str, Any]:
        """The values of one section (a dataclass of defaults), coerced to their types.

        ``names`` limits it to some fields (the others keep their defaults, unread and
        unchecked); only a whole section checks the TOML table for unknown keys.
        """
        known = {f.name for f in fields(cls)} - {"sources", *TABLES}
        if names is None:
            for key in self._table(table):
                if key not in known and not (table is None and key in TABLES):
                    where = f"{table}.{key}" if table else key
                    raise SettingsError(f"{where}: unknown key in {self._file(table, key)}")
        defaults = cls()
        values: dict[str, Any] = {}
        for name in sorted(known if names is None else known & set(names)):
            label = f"{table}.{name}" if table else name
            default = getattr(defaults, name)
            raw = self._raw(table, name, aliases)
            if raw is None:
                values[name] = default
                continue
            if name == "processes":
                raw = parse_processes(raw)
            value = coerce(label, default, raw)
            if name in urls:
                value = (
                    tuple(check_url(label, u) for u in value)
                    if isinstance(value, tuple)
                    else check_url(label, value)
                )
            values[name] = value
        return values

    def need(self, ok: bool, name: str, value: Any, why: str) -> None:
        """Raise the one-line error for a value that fails a check, naming its source."""
        if not ok:
            source = next(
                (v for k, v in self.origin.items() if name == k or name.startswith(f"{k}.")),
                "default",
            )
            raise SettingsError(f"{name}: {value!r} {why} (from {source})")


def load_settings(
    environ: Mapping[str, str] | None = None,
    *,
    shared_only: bool = False,
    sources: Sources | None = None,
) -> Settings:
    """The top-level settings, checked; ``shared_only`` (the workers): just ``SHARED``.

    With ``shared_only`` the gateway's own settings keep their defaults, so a bad one
    cannot stop the workers.
    """
    sources = sources or Sources(environ)
    names = SHARED if shared_only else None
    values = sources.resolve(Settings, names=names, urls={"instances", "public_url"})
    if not shared_only:
        values["database"] = DatabaseSettings(**sources.resolve(DatabaseSettings, "database"))
        queues = sources.resolve(
            QueueSettings,
            "workers",
            names={f.name for f in fields(QueueSettings)},
        )
        values["workers"] = QueueSettings(**queues)
        if not values["public_url"] and values["backend_sees"] == "gateway":
            url = listen_url(values["host"], values["port"])
            sources.origin["public_url"] = DERIVED.format(url=url)
    settings = Settings(**values, sources=dict(sources.origin))
    check_shared(settings, sources.need)
    if not shared_only:
        check_gateway(settings, sources.need)
        check_database(settings.database, sources.need)
    return settings


def describe(settings: Settings, **tables: object) -> list[tuple[str, str, str]]:
    """Rows of (setting, value, source) for ``check-config``, secrets masked.

    ``tables`` are the sections of other programs (e.g. ``workers=WorkerSettings``), whose
    sources ``settings.sources`` must hold; the gateway's own (``database``) are its fields.
    """
    rows = []
    for name, source in sorted(settings.sources.items()):
        table, _, attr = name.rpartition(".")
        section = (tables.get(table) or getattr(settings, table)) if table else settings
        value = getattr(section, attr)
        if isinstance(value, tuple):
            shown = ",".join(value)
        elif isinstance(value, Mapping):
            shown = ", ".join(f"{k}={v}" for k, v in value.items()) or "(none)"
        else:
            shown = str(value)
        if attr in SECRETS:
            shown = mask(shown)
        rows.append((name, shown, source))
    return rows


def print_settings(rows: list[tuple[str, str, str]]) -> None:
    """Print ``describe``'s rows as aligned columns (``check-config``)."""
    width = max(len(name) for name, _, _ in rows)
    for name, value, source in rows:
        print(f"{name:<{width}}  {value}  [{source}]")
