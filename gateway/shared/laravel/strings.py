"""Laravel's ``Str::slug`` and ``Str::ascii``, step for step, so a prefix Laravel derives
from ``APP_NAME`` is derived here the same way ("Acme.io" → ``acmeio``, "Café Ünion" →
``cafe-union``), not approximately."""

from __future__ import annotations

import re

from gateway.shared.laravel.ascii_table import ASCII

# What portable-ascii keeps: tab, LF, CR, \x10, \x13 and printable ASCII (its REGEX_ASCII).
_KEPT = re.compile(r"[\x09\x10\x13\x0a\x0d\x20-\x7e]")
_NOT_KEPT = re.compile(r"[^\x09\x10\x13\x0a\x0d\x20-\x7e]")
# PCRE's \s on what is left after ascii(): space, \t, \n, \v, \f, \r.
_SPACE = " \t\n\x0b\x0c\r"


def ascii_en(value: str) -> str:
    """``Str::ascii($value, 'en')``: portable-ascii's ``to_ascii`` for English."""
    if not value:
        return ""
    matches = [c for c in value if not _KEPT.fullmatch(c)]
    done: set[str] = set()
    for size in (3, 2, 1):
        for i in range(len(matches) - size + 1):
            key = "".join(matches[i : i + size])
            if key not in done and key in ASCII and key in value:
                done.add(key)
                value = value.replace(key, ASCII[key])
    for control in ("\n\r", "\n", "\r", "\t"):
        value = value.replace(control, " ")
    return _NOT_KEPT.sub("", value)


def slug(title: str, separator: str = "-") -> str:
    """``Str::slug($title, $separator)`` (language ``en``)."""
    title = ascii_en(title)
    flip = "_" if separator == "-" else "-"
    title = re.sub(f"[{re.escape(flip)}]+", separator, title)
    title = title.replace("@", f"{separator}at{separator}")
    sep = re.escape(separator)
    title = re.sub(f"[^{sep}a-z0-9{_SPACE}]+", "", title.lower())
    title = re.sub(f"[{sep}{_SPACE}]+", separator, title)
    return title.strip(separator)
