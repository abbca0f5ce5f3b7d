"""How the development servers (simulator, stand-in backend) run in the foreground."""

from __future__ import annotations

import os

import uvloop
from aiohttp import web


def serve(app: web.Application, host: str, port: int) -> None:
    """Serve ``app`` until SIGINT or SIGTERM, quietly (each server logs what matters)."""
    web.run_app(
        app,
        host=host,
        port=port,
        print=None,
        access_log=None,
        shutdown_timeout=2.0,
        loop=uvloop.new_event_loop(),
    )


def hmac_secret() -> str:
    """The webhook secret from the environment, under either of Laravel's names."""
    return os.environ.get("HMAC_SECRET") or os.environ.get("WHATSAPP_HMAC_SECRET", "")
