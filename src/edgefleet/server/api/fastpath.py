"""The device plane's two routine calls served without the web framework's per-request machinery.

Heartbeats and idle deployment polls are nearly all of a fleet's requests, and for such small
requests the framework is most of the cost: routing through every route, dependency solving, a
JSON parse then a model validation, exception middlewares, telemetry hooks. :class:`DeviceFastPath`
sits in front of the application on the device listener and serves exactly two cases itself, from
a device certificate with a JSON body that validates:

* ``POST /device/v1/SendHeartbeat`` that the group commit (:mod:`edgefleet.server.heartbeats`)
  stores: ``200 {}``, as :func:`edgefleet.server.api.device_plane.send_heartbeat` answers (same
  request model, conversion and checks);
* ``POST /device/v1/GetDeployments`` of a device with nothing outstanding
  (:mod:`edgefleet.server.polls`): ``200 {"Deployments":[]}``, as the route answers.

Everything else — other paths, no or foreign certificates, bodies that do not validate, results,
identities the fast path cannot vouch for, deployments to hand out, database errors — is passed to
the application unchanged (the body already read is replayed), so every error keeps its
documented shape and order. A heartbeat route called that way skips the group commit (it was just
tried) and stores the heartbeat in a transaction of its own.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from pydantic import ValidationError

from edgefleet.core.errors import EdgefleetError
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import identity_from_scope
from edgefleet.server.api.device_plane import FAST_PATH_DECLINED, group_commit_eligible, heartbeat_of
from edgefleet.server.api.state import AppState

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

HEARTBEAT_PATH = "/device/v1/SendHeartbeat"
POLL_PATH = "/device/v1/GetDeployments"
#: bodies larger than this go to the application (a daemon's heartbeat is a few KiB)
MAX_FAST_BODY = 256 * 1024
_EMPTY_DEPLOYMENTS = b'{"Deployments":[]}'


class DeviceFastPath:
    """ASGI middleware serving plain heartbeats and idle polls directly (see the module doc)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state
        self._handlers: dict[str, Callable[[Scope, bytes], Awaitable[bytes | None]]] = {
            HEARTBEAT_PATH: self._heartbeat,
            POLL_PATH: self._poll,
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = self._handlers.get(scope["path"]) if scope["type"] == "http" else None
        if handler is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        more = True
        while more and size <= MAX_FAST_BODY:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, _replay(chunks, False, message, receive), send)
                return
            chunk = message.get("body", b"")
            chunks.append(chunk)
            size += len(chunk)
            more = bool(message.get("more_body", False))
        answer = None
        if not more and _is_json(scope):
            try:
                answer = await handler(scope, b"".join(chunks))
            except Exception:  # the application path reports it (UNAVAILABLE, ...) in the documented shape
                log.debug("the fast path failed; the request takes the ordinary path", exc_info=True)
        if answer is not None:
            headers = [(b"content-type", b"application/json"), (b"content-length", str(len(answer)).encode())]
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": answer})
            return
        scope[FAST_PATH_DECLINED] = True
        await self.app(scope, _replay(chunks, not more, None, receive), send)

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
        idle = await self.state.polls.is_idle(identity.name, identity.serial, request.DeviceFleetName)
        return _EMPTY_DEPLOYMENTS if idle else None


def _is_json(scope: Scope) -> bool:
    for name, value in scope.get("headers", ()):
        if name == b"content-type":
            return bool(value.split(b";", 1)[0].strip().lower() == b"application/json")
    return False


def _replay(chunks: list[bytes], complete: bool, tail: Message | None, receive: Receive) -> Receive:
    """A ``receive`` that first hands back the body chunks already read, then ``tail`` (a message
    already received, e.g. a disconnect), then continues with ``receive``."""
    replayed: list[Message] = [{"type": "http.request", "body": c, "more_body": True} for c in chunks]
    if complete:
        if replayed:
            replayed[-1]["more_body"] = False
        else:
            replayed.append({"type": "http.request", "body": b"", "more_body": False})
    if tail is not None:
        replayed.append(tail)

    async def next_message() -> Message:
        if replayed:
            return replayed.pop(0)
        return await receive()

    return next_message
