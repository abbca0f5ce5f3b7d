"""Every admin call, registered in one place, before the admin API's catch-all."""

from __future__ import annotations

from aiohttp import web

from gateway.admin.api import add_admin_routes
from gateway.admin.fleet import sessions
from gateway.admin.jobs import add_job_routes


def add_admin(app: web.Application) -> None:
    """The admin API; call before the instance API's catch-all, which would take its paths."""
    app.router.add_get("/gateway/sessions", sessions)
    add_job_routes(app)
    add_admin_routes(app)
