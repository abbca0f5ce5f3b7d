"""Laravel's rule for its Redis prefix: the line of the app's ``config/database.php``
that makes it."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from gateway.shared.laravel.strings import slug


@dataclass(frozen=True)
class PrefixRule:
    """How a Laravel app derives its ``REDIS_PREFIX`` when none is set, as the ``redis``
    section of its ``config/database.php`` says:
    ``Str::slug(env('APP_NAME', default_app), separator) . suffix``."""

    separator: str
    suffix: str
    default_app: str = "laravel"

    def prefix(self, app_name: str | None) -> str:
        return (
            slug(self.default_app if app_name is None else app_name, self.separator) + self.suffix
        )


# The two skeleton lines in the wild: Laravel <= 10 (and apps that kept that line), and 11+.
PREFIX_FORMS: Mapping[str, PrefixRule] = {
    "_database_": PrefixRule("_", "_database_"),
    "-database-": PrefixRule("-", "-database-"),
}


# env('REDIS_PREFIX', Str::slug([(string)] env('APP_NAME'[, 'laravel'])[, 'sep']) . 'suffix')
_PREFIX_LINE = re.compile(
    r"""env\(\s*(['"])REDIS_PREFIX\1\s*,\s*Str::slug\(\s*(?:\(string\)\s*)?"""
    r"""env\(\s*(['"])APP_NAME\2\s*(?:,\s*(['"])(?P<app>.*?)\3\s*)?\)\s*"""
    r"""(?:,\s*(['"])(?P<sep>.*?)\5\s*)?\)\s*\.\s*(['"])(?P<suffix>.*?)\7"""
)


_PHP_COMMENTS = (re.compile(r"/\*.*?\*/", re.S), re.compile(r"^\s*(?://|#).*$", re.M))


def prefix_rule(database_php: str) -> PrefixRule | None:
    """The rule of a ``config/database.php``, or None when it has no such line."""
    for comment in _PHP_COMMENTS:
        database_php = comment.sub("", database_php)
    match = _PREFIX_LINE.search(database_php)
    if match is None:
        return None
    app = match["app"]
    # env('APP_NAME') without a default is null when unset, which slugs to ''.
    return PrefixRule(match["sep"] or "-", match["suffix"], "" if app is None else app)
