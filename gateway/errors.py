"""The gateway's own error answers: always JSON, never a traceback."""

from __future__ import annotations

from typing import Any

from aiohttp import web


def json_error(status: int, message: str, **detail: Any) -> web.Response:
    return web.json_response({"success": False, "error": message, **detail}, status=status)
