"""A Laravel ``.env`` read exactly as Laravel reads it: vlucas/phpdotenv 5's rules.

The gateway reads the backend's own ``.env`` (``LARAVEL_ENV_FILE``), so any difference from
PHP's reading is a setting the two programs disagree on: a ``REDIS_PREFIX="${APP_NAME}_x"``
kept literally, a ``"se\\"cret"`` cut short, the inner lines of a multi-line value taken as
settings. This is phpdotenv's parser (``Dotenv\\Parser``: lines, multi-line values, lexer,
entry state machine) and loader (``${NAME}`` from the environment first, then earlier lines),
step for step; ``tests/laravel/test_dotenv.py`` compares it with PHP's own on many texts.

A file phpdotenv refuses (``A=two words``, an unclosed quote, a bad name) stops Laravel at
boot; here it raises :class:`DotenvError` with phpdotenv's message.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

_LINES = re.compile(r"\r\n|\n|\r")
# Dotenv\Parser\Lexer::PATTERNS. PCRE's \s (no /u) is ASCII: space, \t, \n, \v, \f, \r.
_TOKENS = re.compile(r"[\r\n]{1,1000}|[ \t\v\f]{1,1000}|\\|'|\"|#|\$|[^ \t\n\r\v\f\\'\"#$]{1,1000}")
_SPACE = frozenset(" \t\n\r\v\f")  # ctype_space
_TRIM = " \t\n\r\0\x0b"  # PHP's trim()
_NAME = re.compile(r"[a-zA-Z0-9_.]+")
_VARIABLE = re.compile(r"\$\{([a-zA-Z0-9_.]+)\}")
_ESCAPES = {"f": "\f", "n": "\n", "r": "\r", "t": "\t", "v": "\v"}

INITIAL, UNQUOTED, SINGLE, DOUBLE, ESCAPE, WHITESPACE, COMMENT = range(7)
_OPEN = (SINGLE, DOUBLE, ESCAPE)


class DotenvError(ValueError):
    """The file is one phpdotenv refuses; the message is its own."""


def _fail(cause: str, subject: str) -> DotenvError:
    first = next((part for part in subject.split("\n") if part), "")  # strtok($subject, "\n")
    return DotenvError(f"Failed to parse dotenv file. Encountered {cause} at [{first}].")


# --- Dotenv\Parser\Lines: which lines are entries -------------------------------------------


def _quotes(line: str) -> int:
    """How many ``"`` follow a character other than ``\\`` (``\\\\`` pairs dropped first)."""
    line = line.replace("\\\\", "")
    return sum(1 for i in range(1, len(line)) if line[i] == '"' and line[i - 1] != "\\")


def _stops(line: str, started: bool) -> bool:
    if line == '"':
        return True
    count = _quotes(line)
    return count > 1 if started else count >= 1


def _entries(lines: list[str]) -> Iterator[str]:
    """Lines that are entries, a multi-line quoted value joined into one (``Lines::process``).

    A value still open at the end of the file is dropped, as phpdotenv drops it.
    """
    multiline, buffer = False, []
    for line in lines:
        started = '="' in line and not _stops(line, True)
        if started:
            multiline = True
        if multiline:
            buffer.append(line)
            if _stops(line, started):
                multiline, line, buffer = False, "\n".join(buffer), []
        if not multiline and line.strip(_TRIM) and not line.strip(_TRIM).startswith("#"):
            yield line


# --- Dotenv\Parser\EntryParser: one entry ---------------------------------------------------


def _name(name: str) -> str:
    if len(name) > 8 and name[:6] == "export" and name[6] in _SPACE:
        name = name[6:].lstrip(_TRIM)
    if len(name) >= 3 and name[0] == name[-1] and name[0] in "\"'":
        name = name[1:-1]
    if not _NAME.fullmatch(name):
        raise _fail("an invalid name", name)
    return name


def _value(value: str) -> tuple[str, list[int]]:
    """The value's characters and where each ``$`` that may start a ``${NAME}`` stands."""
    if not value.strip(_TRIM):
        return "", []
    chars: list[str] = []
    size, variables, state = 0, [], INITIAL
    for token in _TOKENS.findall(value):
        text, variable = "", False
        space = all(c in _SPACE for c in token)
        if state in (INITIAL, UNQUOTED):
            if token == "'" and state == INITIAL:
                state = SINGLE
            elif token == '"' and state == INITIAL:
                state = DOUBLE
            elif token == "#":
                state = COMMENT
            elif space and state == UNQUOTED:
                state = WHITESPACE
            else:
                text, variable, state = token, token == "$", UNQUOTED
        elif state == SINGLE:
            if token == "'":
                state = WHITESPACE
            else:
                text = token
        elif state == DOUBLE:
            if token == '"':
                state = WHITESPACE
            elif token == "\\":
                state = ESCAPE
            else:
                text, variable = token, token == "$"
        elif state == ESCAPE:
            if token in ('"', "\\", "$"):
                text = token
            elif token[0] in _ESCAPES:
                text = _ESCAPES[token[0]] + token[1:]
            else:
                raise _fail("an unexpected escape sequence", value)
            state = DOUBLE
        elif state == WHITESPACE:
            if token == "#":
                state = COMMENT
            elif not space:
                raise _fail("unexpected whitespace", value)
        if variable:
            variables.append(size)
        chars.append(text)
        size += len(text)
    if state in _OPEN:
        raise _fail("a missing closing quote", value)
    return "".join(chars), variables


def _entry(raw: str) -> tuple[str, tuple[str, list[int]] | None]:
    """The name and value of one entry; a line without ``=`` has no value (it unsets)."""
    if "=" not in raw:
        return _name(raw), None
    name, value = (part.strip(_TRIM) for part in raw.split("=", 1))
    if not name:
        raise _fail("an unexpected equals", raw)
    return _name(name), _value(value)


# --- Dotenv\Loader: values in order, ${NAME} resolved ----------------------------------------


def parse_dotenv(text: str, environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The values a Laravel app takes from ``text``, as its immutable repository loads them.

    ``${NAME}`` (unquoted or in double quotes, not single) is the environment's ``NAME``,
    else the value an earlier line gave it, else left as written. A name the environment
    already has is not taken from the file (Laravel never overwrites it), so it is not in
    the result; a line with a name and no ``=`` unsets what earlier lines gave it.
    """
    environ = environ or {}
    values: dict[str, str] = {}
    for raw in _entries(_LINES.split(text.removeprefix("\ufeff"))):
        name, value = _entry(raw)
        if name in environ:
            continue
        if value is None:
            values.pop(name, None)
            continue
        chars, variables = value
        for at in sorted(variables, reverse=True):  # the last first, as Resolver::resolve
            found = _VARIABLE.match(chars, at)
            known = environ.get(found[1], values.get(found[1])) if found else None
            if found and known is not None:
                chars = chars[:at] + known + chars[found.end() :]
        values[name] = chars
    return values
