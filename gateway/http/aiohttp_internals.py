"""Every use of aiohttp's private API, in one module.

The gateway serves through aiohttp's low-level ``Server`` but builds that server itself
(``EngineRunner``), makes its connections itself (``HandOverServer``: the fast entry point's
``Entry``, or aiohttp's own connection handler) and answers what aiohttp's parser refuses in
its own JSON (``GatewayConnection``). None of that is aiohttp's public API, so it lives here
alone, and pyproject.toml pins aiohttp to the releases it is tested with; an upgrade past
them is a change to this module and a run of ``make test`` (both ``http_engine`` values).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import http_exceptions, web
from aiohttp.web_protocol import RequestHandler

from gateway.http.errors import json_error

log = logging.getLogger("gateway.http")

# What aiohttp's parser refused, said without echoing the request (it may carry a secret).
_UNPARSED: tuple[tuple[type[Exception], str], ...] = (
    (http_exceptions.LineTooLong, "a request line or header is too long"),
    (http_exceptions.InvalidHeader, "a header is malformed"),
    (http_exceptions.BadHttpMethod, "the method is not valid"),
    (http_exceptions.BadStatusLine, "the request line is malformed"),
    (http_exceptions.InvalidURLError, "the request target is malformed"),
    (http_exceptions.PayloadEncodingError, "the body's framing is malformed"),
)
_MALFORMED = "the request is malformed"


class EngineRunner(web.AppRunner):
    """An ``AppRunner`` whose server is remade by :meth:`make_server` from aiohttp's own
    (same handler, same options), so the engine serving the connections is chosen here."""

    def make_server(self, made: web.Server, options: dict[str, Any]) -> web.Server:
        return made

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()
        return self.make_server(made, dict(made._kwargs))


class HandOverServer(web.Server):
    """aiohttp's ``Server`` whose connections are made by :meth:`connection`: here aiohttp's
    own connection handler (the ``aiohttp`` engine); the fast entry point overrides it and
    hands a connection over with :meth:`aiohttp_connection` when aiohttp must serve it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.options = kwargs  # keepalive_timeout, max_line_size, ... as aiohttp got them

    def __call__(self) -> asyncio.Protocol:  # type: ignore[override]
        return self.connection()

    def connection(self) -> asyncio.Protocol:
        return self.aiohttp_connection()

    def aiohttp_connection(self) -> GatewayConnection:
        return GatewayConnection(self, loop=self._loop, **self._kwargs)


class GatewayConnection(RequestHandler):
    """A connection that answers a request aiohttp's parser refused in the gateway's JSON.

    Such a request never reaches the gateway's code; aiohttp would answer it in plain text
    and log it at ERROR with a traceback, so a stream of garbage would flood the logs. Here
    it costs one DEBUG line naming the kind of fault, never the request's bytes. A 5xx (a
    handler's own failure) keeps aiohttp's answer and its traceback: that one is a bug.
    """

    _eof = False  # the caller sent its last byte
    _started = 0  # requests whose handling began
    _handling = False

    def eof_received(self) -> bool:
        """Half-closed: answer every request read whole, then close (aiohttp's own closes
        at once, so a request being acted on would lose its answer)."""
        self._eof = True
        queued = self._messages
        if queued and not queued[-1][1].is_eof():
            queued.pop()  # its body can never arrive whole: never started, never answered
        current = self._current_request
        if current is not None and not current.content.is_eof():
            self.force_close()  # the body being read can never arrive whole either
        elif not queued and not self._handling and self._started == self._request_count:
            self.force_close()  # every request answered (lingering on a body): close now
        return True  # keep the write side open for the answers

    async def _handle_request(self, *args: Any, **kwargs: Any) -> tuple[web.StreamResponse, bool]:
        self._started += 1
        self._handling = True
        try:
            answered = await super()._handle_request(*args, **kwargs)
        finally:
            self._handling = False
        if self._eof and not self._messages:
            self.close()  # that was the last request: close once it is out
        return answered

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = next((text for kind, text in _UNPARSED if isinstance(exc, kind)), _MALFORMED)
        fault = {"fault": type(exc).__name__}
        log.debug("refused an unparsable request: %s", reason, extra={"fields": fault})
        if request.writer.output_size > 0:  # an answer is on its way: the connection is spent
            raise ConnectionError("an answer was already sent")
        response = json_error(status, f"bad request: {reason}")
        response.force_close()
        return response
