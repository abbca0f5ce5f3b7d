"""The gateway's own error answers: always JSON, never a traceback."""

from __future__ import annotations

from typing import Any, Literal

from aiohttp import web

# On every 502/503/504 of the gateway's own: whether an instance may have acted on the call.
# "not-sent": nothing reached an instance, the call may be sent again as it is.
# "unknown": it reached one that gave no answer; it may have acted (a message may be out).
OUTCOME_HEADER = "X-Gateway-Outcome"
Outcome = Literal["not-sent", "unknown"]


def json_error(status: int, message: str, **detail: Any) -> web.Response:
    return web.json_response({"success": False, "error": message, **detail}, status=status)


def unanswered(status: int, message: str, outcome: Outcome, **detail: Any) -> web.Response:
    """A 502/503/504 of the gateway's own, saying whether the call may have been acted on."""
    response = json_error(status, message, outcome=outcome, **detail)
    response.headers[OUTCOME_HEADER] = outcome
    return response
