"""SendHeartbeat served without the web framework's per-request machinery.

Heartbeats are most of a fleet's requests, and for such a small request the framework is most of
the cost: routing through every route, dependency solving, a JSON parse then a model validation,
exception middlewares, telemetry hooks. :class:`DeviceFastPath` sits in front of the application
on the device listener and serves exactly one case itself: ``POST /device/v1/SendHeartbeat`` from
a device certificate, with a JSON body that validates, that the group commit
(:mod:`edgefleet.server.heartbeats`) stores. It uses the same request model, conversion and
checks as the framework route (:func:`edgefleet.server.api.device_plane.send_heartbeat`) and
answers the same ``200 {}``.

Everything else — other paths, no or foreign certificates, bodies that do not validate, results,
identities the group commit does not vouch for, database errors — is handed to the application
unchanged (the body already read is replayed), so every error keeps its documented shape and
order. The route then skips the group commit (it was just tried) and stores the heartbeat in a
transaction of its own.
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
#: bodies larger than this go to the application (a daemon's heartbeat is a few KiB)
MAX_FAST_BODY = 256 * 1024
_OK_HEADERS = [(b"content-type", b"application/json"), (b"content-length", b"2")]


class DeviceFastPath:
    """ASGI middleware serving plain heartbeats directly (see the module doc)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != HEARTBEAT_PATH or scope["method"] != "POST":
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
        if not more and await self._serve(scope, b"".join(chunks)):
            await send({"type": "http.response.start", "status": 200, "headers": _OK_HEADERS})
            await send({"type": "http.response.body", "body": b"{}"})
            return
        scope[FAST_PATH_DECLINED] = True
        await self.app(scope, _replay(chunks, not more, None, receive), send)

    async def _serve(self, scope: Scope, body: bytes) -> bool:
        """Whether the heartbeat was stored here (False: the application must handle the request)."""
        if not _is_json(scope):
            return False
        try:
            identity = identity_from_scope(scope)
            request = s.HeartbeatRequest.model_validate_json(body)
        except (EdgefleetError, ValidationError):
            return False
        heartbeat = heartbeat_of(request)
        if not group_commit_eligible(request, identity, heartbeat):
            return False
        try:
            return await self.state.heartbeats.write(
                identity.name, identity.serial, request.DeviceFleetName, heartbeat
            )
        except Exception:  # the application path reports it (UNAVAILABLE, ...) in the documented shape
            log.debug("group commit failed; the request takes the ordinary path", exc_info=True)
            return False


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
