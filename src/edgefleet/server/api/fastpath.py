"""The device listener's entry for the routine calls, without the web framework's per-request machinery.

Heartbeats, polls, results and package downloads are nearly all of a fleet's requests, and for such
small requests the framework is most of the cost: routing through every route, dependency solving,
a JSON parse then a model validation, exception middlewares, telemetry hooks, a thread hop.
:class:`DeviceFastPath` sits in front of the application on the device listener and does only the
transport work for ``SendHeartbeat``, ``GetDeployments``, ``ReportDeploymentResult`` and
``GET /device/v1/packages/{id}``: it reads and parses the body, takes the device identity from the
client certificate, and calls what the routes of :mod:`edgefleet.server.api.device_plane` call (the
services of :mod:`edgefleet.server.deviceplane`), so the answers and errors are the same.

A body it cannot parse (too large to read here, not JSON, text no database can store, fields that do
not validate) or a package id that is not one is handed to the application with the body replayed,
which reports it in the documented shape; such a fallback is logged at WARNING. Other paths (and
``RenewCertificate``) always go to the application, except the web dashboard (``/ui``), which the
device listener does not serve (404).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from edgefleet.core.errors import Code, EdgefleetError
from edgefleet.server.api import device_plane, schemas
from edgefleet.server.api.asgi import ASGIApp, Receive, Scope, Send, content_length, header, replay
from edgefleet.server.api.auth import DeviceIdentity, identity_from_scope
from edgefleet.server.api.errors import error_response, exception_response
from edgefleet.server.api.guard import UI_PREFIX
from edgefleet.server.api.metrics import ROUTE_SCOPE_KEY
from edgefleet.server.api.state import AppState
from edgefleet.server.validation import MAX_ID, check_json_text

log = logging.getLogger(__name__)

PACKAGE_PREFIX = "/device/v1/packages/"
#: the download route's template (the application's route of the same path), for the metrics
PACKAGE_ROUTE = PACKAGE_PREFIX + "{package_id}"
#: bodies larger than this go to the application (a daemon's heartbeat is a few KiB)
MAX_FAST_BODY = 256 * 1024

Route = Callable[[Any, AppState, DeviceIdentity], Awaitable[BaseModel | dict[str, Any]]]
_ROUTES: dict[str, tuple[type[BaseModel], Route]] = {
    "/device/v1/SendHeartbeat": (schemas.HeartbeatRequest, device_plane.send_heartbeat),
    "/device/v1/GetDeployments": (schemas.DeviceRef, device_plane.get_deployments),
    "/device/v1/ReportDeploymentResult": (schemas.ResultRequest, device_plane.report_result),
}


class DeviceFastPath:
    """ASGI middleware serving the routine device calls directly (see the module doc)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["path"] == UI_PREFIX or scope["path"].startswith(UI_PREFIX + "/"):
            # the web dashboard is for operators: served on the operator listener only
            await error_response(
                Code.NOT_FOUND, "the web dashboard is served on the operator port, not the device port"
            )(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"].startswith(PACKAGE_PREFIX):
            await self._download(scope, receive, send)
            return
        route = _ROUTES.get(scope["path"])
        if route is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared is not None and declared > MAX_FAST_BODY:  # not read here: the app caps it
            _fall_back(scope, f"a body of {declared} bytes")
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and size <= MAX_FAST_BODY:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, replay(chunks, False, message, receive), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(message.get("more_body", False))
        body = _parse(scope, route[0], b"".join(chunks), more)
        if body is None:
            await self.app(scope, replay(chunks, not more, None, receive), send)
            return

        scope[ROUTE_SCOPE_KEY] = scope["path"]  # the fast path's routes have no parameters

        async def answer() -> Response:
            out = await route[1](body, self.state, identity_from_scope(scope))
            data = out.model_dump_json() if isinstance(out, BaseModel) else json.dumps(out)
            return Response(data, media_type="application/json")

        await _respond(scope, receive, send, answer)

    async def _download(self, scope: Scope, receive: Receive, send: Send) -> None:
        package = scope["path"][len(PACKAGE_PREFIX) :]
        # ids beyond the databases' 64-bit integers are refused by the app path (400)
        if not (package.isascii() and package.isdigit() and int(package) <= MAX_ID):
            _fall_back(scope, f"the package id {package[:40]!r}")
            await self.app(scope, receive, send)
            return

        scope[ROUTE_SCOPE_KEY] = PACKAGE_ROUTE

        async def answer() -> Response:
            identity = identity_from_scope(scope)
            request = Request(scope, receive)
            return await device_plane.download_package(int(package), request, self.state, identity)

        await _respond(scope, receive, send, answer)


def _parse(scope: Scope, model: type[BaseModel], body: bytes, more: bool) -> BaseModel | None:
    """The request model of ``body``; None (logged): the application must answer it."""
    if more:
        _fall_back(scope, f"a body larger than {MAX_FAST_BODY} bytes")
        return None
    value = header(scope, b"content-type")
    if value is None or value.split(b";", 1)[0].strip().lower() != b"application/json":
        _fall_back(scope, "a body not declared JSON")
        return None
    try:
        check_json_text(body)  # text a database cannot store: the app path says 400
        return model.model_validate_json(body)
    except (EdgefleetError, ValidationError) as exc:
        _fall_back(scope, f"a body that does not parse ({type(exc).__name__})")
        return None


def _fall_back(scope: Scope, what: str) -> None:
    log.warning(
        "device fast path: %s %s has %s; the application answers it", scope["method"], scope["path"], what
    )


async def _respond(
    scope: Scope, receive: Receive, send: Send, answer: Callable[[], Awaitable[Response]]
) -> None:
    """Send ``answer()``, or its error in the documented shape (as the application's handlers do)."""
    try:
        response = await answer()
    except EdgefleetError as exc:
        if exc.code is Code.INTERNAL:
            log.error("%s %s failed: %s", scope["method"], scope["path"], exc)
        response = exception_response(exc)
    except Exception as exc:
        log.exception("%s %s crashed", scope["method"], scope["path"])
        response = error_response(Code.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")
    await response(scope, receive, send)
