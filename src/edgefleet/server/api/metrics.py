"""The one place requests are counted, and ``GET /metrics`` (docs/metrics.md).

:class:`HTTPMetrics` is the outermost ASGI middleware of each listener: on the device listener in
front of the device fast path, on the operator listener in front of the application, so every
request is counted once whoever answers it. The ``route`` label is the route's template
(``/api/v1/fleets/{fleet_name}``), never the raw path, so the number of series stays bounded: the
application's router leaves the matched route in the scope, the fast path names its routes under
:data:`ROUTE_SCOPE_KEY`, and a request neither matched (a 404, a refusal before routing) is matched
against the application's routes here or counted as ``unmatched``.

On the operator listener it also answers ``GET /metrics``: with a valid operator API token, or to
anyone when the server runs with ``--metrics-public`` (for a Prometheus that cannot send a bearer
token; the series name fleets and models, so the default is to ask for the token).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import anyio.to_thread
from starlette.responses import Response
from starlette.routing import BaseRoute, Match

from edgefleet.core.errors import EdgefleetError
from edgefleet.server.api.asgi import ASGIApp, Message, Receive, Scope, Send, header
from edgefleet.server.api.auth import authenticate_operator
from edgefleet.server.api.errors import exception_response
from edgefleet.server.api.state import AppState
from edgefleet.server.metrics import CONTENT_TYPE, UNMATCHED_ROUTE

#: ASGI scope key under which a route served outside the application names its template
ROUTE_SCOPE_KEY = "edgefleet.route"
METRICS_PATH = "/metrics"
OPERATOR_LISTENER = "operator"
DEVICE_LISTENER = "device"


class HTTPMetrics:
    """ASGI middleware: counts every request of a listener; serves ``/metrics`` where ``serve``."""

    def __init__(
        self,
        app: ASGIApp,
        state: AppState,
        *,
        listener: str,
        routes: Sequence[BaseRoute] = (),
        serve: bool = False,
    ) -> None:
        self.app = app
        self.state = state
        self.listener = listener
        self.routes = routes
        self.serve = serve

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # a crash before an answer counts as the 500 the server sends

        async def counted_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            if self.serve and scope["path"] == METRICS_PATH:
                scope[ROUTE_SCOPE_KEY] = METRICS_PATH
                await self._metrics(scope, receive, counted_send)
            else:
                await self.app(scope, receive, counted_send)
        finally:
            self.state.metrics.observe(
                self.listener, scope["method"], self._route(scope), status, time.perf_counter() - started
            )

    def _route(self, scope: Scope) -> str:
        named: str | None = scope.get(ROUTE_SCOPE_KEY)
        if named is not None:
            return named
        route: Any = scope.get("route")
        path = getattr(route, "path", None)
        if isinstance(path, str):
            return path
        for candidate in self.routes:  # refused before routing (401, 413): which route it was for
            match, _ = candidate.matches(scope)
            if match is not Match.NONE:
                found = getattr(candidate, "path", None)
                if isinstance(found, str):
                    return found
        return UNMATCHED_ROUTE

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            if scope["method"] not in ("GET", "HEAD"):
                response = Response(status_code=405, headers={"Allow": "GET, HEAD"})
            else:
                if not self.state.config.metrics_public:
                    authorization = (header(scope, b"authorization") or b"").decode("latin-1")
                    await anyio.to_thread.run_sync(authenticate_operator, self.state, authorization)
                body = await anyio.to_thread.run_sync(self.state.metrics.render)
                response = Response(body, media_type=CONTENT_TYPE)
        except EdgefleetError as exc:
            response = exception_response(exc)
        await response(scope, receive, send)
