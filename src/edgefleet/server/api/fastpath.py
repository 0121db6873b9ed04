"""The device plane's routine calls served without the web framework's per-request machinery.

Heartbeats, polls, results and package downloads are nearly all of a fleet's requests, and for such
small requests the framework is most of the cost: routing through every route, dependency solving,
a JSON parse then a model validation, exception middlewares, telemetry hooks, a thread hop for
blocking handlers. :class:`DeviceFastPath` sits in front of the application on the device listener
and serves these cases itself, from a device certificate, with the same request models and the
same answers as the routes in :mod:`edgefleet.server.api.device_plane`:

* ``POST /device/v1/SendHeartbeat`` that the group commit (:mod:`edgefleet.server.heartbeats`)
  stores: ``200 {}``;
* ``POST /device/v1/GetDeployments`` of a device with nothing outstanding, or only plain
  deployments to hand out (:mod:`edgefleet.server.polls`);
* ``POST /device/v1/ReportDeploymentResult`` of a plain success (:mod:`edgefleet.server.results`);
* ``GET /device/v1/packages/{id}`` of a whole, small archive the device may download
  (:mod:`edgefleet.server.downloads`).

Everything else — other paths, no or foreign certificates, bodies that do not validate, ranges,
identities or states the batched paths cannot vouch for, database errors — is passed to the
application unchanged (the body already read is replayed), so every error keeps its documented
shape and order. A heartbeat route called that way skips the group commit (it was just tried) and
stores the heartbeat in a transaction of its own. ``RenewCertificate`` always goes to the
application, and so does the first call made with a renewed certificate (its serial is not yet the
device's current one): the route's authentication makes it current
(:func:`edgefleet.server.devices.authenticate_device`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from pydantic import ValidationError

from edgefleet.core.errors import EdgefleetError
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.asgi import ASGIApp, Receive, Scope, Send, content_length, header, replay
from edgefleet.server.api.auth import identity_from_scope
from edgefleet.server.api.device_plane import FAST_PATH_DECLINED, group_commit_eligible, heartbeat_of
from edgefleet.server.api.state import AppState
from edgefleet.server.results import Report
from edgefleet.server.validation import MAX_ID, check_json_text

log = logging.getLogger(__name__)

HEARTBEAT_PATH = "/device/v1/SendHeartbeat"
POLL_PATH = "/device/v1/GetDeployments"
RESULT_PATH = "/device/v1/ReportDeploymentResult"
PACKAGE_PREFIX = "/device/v1/packages/"
#: bodies larger than this go to the application (a daemon's heartbeat is a few KiB)
MAX_FAST_BODY = 256 * 1024
_EMPTY_DEPLOYMENTS = b'{"Deployments":[]}'

Answer = tuple[bytes, list[tuple[bytes, bytes]]]  # body and extra headers of a 200


class DeviceFastPath:
    """ASGI middleware serving the routine device calls directly (see the module doc)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self._handlers: dict[str, Callable[[Scope, bytes], Awaitable[bytes | None]]] = {
            HEARTBEAT_PATH: self._heartbeat,
            POLL_PATH: self._poll,
            RESULT_PATH: self._result,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"].startswith(PACKAGE_PREFIX):
            await self._download(scope, receive, send)
            return
        handler = self._handlers.get(scope["path"])
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        declared = content_length(scope)
        if declared is not None and declared > MAX_FAST_BODY:  # not read here: the app caps it
            scope[FAST_PATH_DECLINED] = True
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
        answer = None
        if not more and _is_json(scope):
            try:
                body = b"".join(chunks)
                check_json_text(body)  # text a database cannot store: the app path says 400
                answer = await handler(scope, body)
            except Exception:  # the application path reports it (UNAVAILABLE, ...) in the documented shape
                log.debug("the fast path failed; the request takes the ordinary path", exc_info=True)
        if answer is not None:
            await _send_ok(send, answer, [(b"content-type", b"application/json")])
            return
        scope[FAST_PATH_DECLINED] = True
        await self.app(scope, replay(chunks, not more, None, receive), send)

    async def _download(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A whole, small archive of one of the device's deployments (ranges go to the application)."""
        answer = None
        package = scope["path"][len(PACKAGE_PREFIX) :]
        ranged = any(name in (b"range", b"if-range") for name, _ in scope.get("headers", ()))
        # ids beyond the databases' 64-bit integers are refused by the app path (400)
        if package.isascii() and package.isdigit() and int(package) <= MAX_ID and not ranged:
            try:
                answer = await self._archive(scope, int(package))
            except Exception:  # the application path reports it in the documented shape
                log.debug("the fast path failed; the download takes the ordinary path", exc_info=True)
        if answer is None:
            await self.app(scope, receive, send)
            return
        await _send_ok(send, *answer)

    async def _archive(self, scope: Scope, package_id: int) -> Answer | None:
        try:
            identity = identity_from_scope(scope)
        except EdgefleetError:
            return None
        grant = await self.state.downloads.grant(identity.name, identity.serial, package_id)
        data = None if grant is None else await self.state.downloads.content(grant)
        if grant is None or data is None:
            return None
        filename = grant.artifact_key.rsplit("/", 1)[-1]
        headers = [
            (b"accept-ranges", b"bytes"),
            (b"etag", f'"{grant.sha256}"'.encode()),
            (b"content-disposition", f'attachment; filename="{filename}"'.encode()),
            (b"content-type", b"application/gzip"),
        ]
        return data, headers

    async def _heartbeat(self, scope: Scope, body: bytes) -> bytes | None:
        try:
            identity = identity_from_scope(scope)
            request = s.HeartbeatRequest.model_validate_json(body)
        except (EdgefleetError, ValidationError):
            return None
        heartbeat = heartbeat_of(request)
        if not group_commit_eligible(request, identity, heartbeat):
            return None
        stored = await self.state.heartbeats.write(
            identity.name, identity.serial, request.DeviceFleetName, heartbeat
        )
        return b"{}" if stored else None

    async def _poll(self, scope: Scope, body: bytes) -> bytes | None:
        try:
            identity = identity_from_scope(scope)
            request = s.DeviceRef.model_validate_json(body)
        except (EdgefleetError, ValidationError):
            return None
        if request.DeviceName != identity.name:
            return None
        found = await self.state.polls.poll(identity.name, identity.serial, request.DeviceFleetName)
        if found is None:
            return None
        if not found:
            return _EMPTY_DEPLOYMENTS
        answer = s.DeploymentsOut(Deployments=[render.deployment(d, self.state.artifacts) for d in found])
        return answer.model_dump_json().encode()

    async def _result(self, scope: Scope, body: bytes) -> bytes | None:
        try:
            identity = identity_from_scope(scope)
            request = s.ResultRequest.model_validate_json(body)
        except (EdgefleetError, ValidationError):
            return None
        result = request.DeploymentResult
        if request.DeviceName != identity.name or not self.state.results.plain(result.DeploymentStatus):
            return None
        status = await self.state.results.record(
            Report(
                identity.name,
                identity.serial,
                request.DeviceFleetName,
                result.DeploymentName,
                result.DeploymentStatus,
                result.DeploymentStatusMessage,
            )
        )
        if status is None:
            return None
        return (
            s.ResultOut(DeploymentName=result.DeploymentName, DeviceDeploymentStatus=status)
            .model_dump_json()
            .encode()
        )


async def _send_ok(send: Send, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _is_json(scope: Scope) -> bool:
    value = header(scope, b"content-type")
    return value is not None and value.split(b";", 1)[0].strip().lower() == b"application/json"
