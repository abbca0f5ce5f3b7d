"""A Laravel ``.env`` read as Laravel reads it."""

from __future__ import annotations


def parse_dotenv(text: str) -> dict[str, str]:
    """Parse a Laravel ``.env``: ``KEY=value``, optional quotes and ``export``, ``#`` comments."""
    values: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        value = value.strip()
        if value[:1] in ("'", '"') and value.count(value[0]) >= 2:
            value = value[1 : value.index(value[0], 1)]
        else:
            value = value.split(" #", 1)[0].strip()
        values[key.strip()] = value
    return values
