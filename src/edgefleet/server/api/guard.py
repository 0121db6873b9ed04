"""What every request must pass before a route reads its body: who is calling, how large it is, clean text.

The web framework reads and parses a JSON body before it runs a route's dependencies, so a request
with no token would have its whole body read (however large) only to be told 401. The
:class:`RequestGuard` middleware decides first, from the request line and headers alone:

1. the caller: operator routes (``/api/v1/``) need a valid API token, device routes (``/device/v1/``)
   a client certificate (revocation is still checked by the route);
2. the URL: no NUL in the path or a query parameter (:func:`~edgefleet.server.validation.check_url`);
3. the size: a declared ``Content-Length`` above the route's cap is refused (413) unread. Package
   uploads stream up to ``Limits.max_package_bytes`` and relayed capture objects (``PUT
   /device/v1/capture/objects/...``, not JSON) up to ``Limits.max_capture_object_bytes``; enrolment (authenticated by the token inside
   its body) gets ``max_enrol_body_bytes``, the web dashboard's forms (``/ui``, authenticated by its
   session cookie in :mod:`edgefleet.server.ui`) ``max_form_body_bytes``; every other body
   ``max_json_body_bytes``.

Then JSON bodies are read up to their cap (a chunked body that goes past it is refused as soon as it
does) and checked for text no database can store
(:func:`~edgefleet.server.validation.check_json_text`), and the route gets the body replayed.
A refusal whose body was not read closes the connection, so the rest of the body is not read either.
"""

from __future__ import annotations

import anyio.to_thread

from edgefleet.core.deviceplane import CAPTURE_OBJECTS_PATH
from edgefleet.core.errors import EdgefleetError
from edgefleet.server.api.asgi import (
    ASGIApp,
    Message,
    Receive,
    Scope,
    Send,
    content_length,
    has_body,
    header,
    replay,
)
from edgefleet.server.api.auth import OPERATOR_SCOPE_KEY, authenticate_operator, identity_from_scope
from edgefleet.server.api.errors import BodyTooLarge, exception_response
from edgefleet.server.api.state import AppState
from edgefleet.server.validation import check_json_text, check_url

OPERATOR_PREFIX = "/api/v1/"
DEVICE_PREFIX = "/device/v1/"
UPLOAD_PATH = "/api/v1/packages"
#: the web dashboard (server/ui): authenticated by its own session cookie, bodies are small forms
UI_PREFIX = "/ui"
ENROL_PATH = "/enrol/v1/enrol"


class RequestGuard:
    """ASGI middleware: authentication, URL and body-size checks before the body is read (module doc)."""

    def __init__(self, app: ASGIApp, state: AppState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        upload = path == UPLOAD_PATH and scope["method"] == "POST"
        capture = path.startswith(CAPTURE_OBJECTS_PATH) and scope["method"] == "PUT"
        limit = self.body_limit(path, upload, capture)
        try:
            await self._authenticate(scope, path)
            check_url(path, scope.get("query_string", b""))
            declared = content_length(scope)
            if declared is not None and declared > limit:
                raise BodyTooLarge(too_large(declared, limit))
        except EdgefleetError as exc:
            await _refuse(exc, scope, receive, send, unread=has_body(scope))
            return
        if upload or capture:  # streamed by the route (not JSON): counted here, never held here
            await self.app(
                scope, _counted(receive, limit, "the package" if upload else "the capture object"), send
            )
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away: let the app see it
                await self.app(scope, replay(chunks, False, message, receive), send)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            more = bool(message.get("more_body", False))
            if size > limit:
                await _refuse(BodyTooLarge(too_large(None, limit)), scope, receive, send, unread=more)
                return
            chunks.append(chunk)
            if not more:
                break
        try:
            check_json_text(b"".join(chunks))
        except EdgefleetError as exc:
            await _refuse(exc, scope, receive, send, unread=False)
            return
        await self.app(scope, replay(chunks, True, None, receive), send)

    def body_limit(self, path: str, upload: bool, capture: bool = False) -> int:
        """The most bytes a request body to ``path`` may have."""
        limits = self.state.config.limits
        if upload:
            return limits.max_package_bytes
        if capture:
            return limits.max_capture_object_bytes
        if path == ENROL_PATH:
            return limits.max_enrol_body_bytes
        if path == UI_PREFIX or path.startswith(UI_PREFIX + "/"):
            return limits.max_form_body_bytes
        return limits.max_json_body_bytes

    async def _authenticate(self, scope: Scope, path: str) -> None:
        if path.startswith(OPERATOR_PREFIX):
            authorization = (header(scope, b"authorization") or b"").decode("latin-1")
            # one query, on the thread pool like the blocking routes
            scope[OPERATOR_SCOPE_KEY] = await anyio.to_thread.run_sync(
                authenticate_operator, self.state, authorization
            )
        elif path.startswith(DEVICE_PREFIX):
            identity_from_scope(scope)  # a client certificate: no database needed


def too_large(declared: int | None, limit: int) -> str:
    """The message of a body over its cap."""
    size = f"is {declared} bytes" if declared is not None else "is larger than that"
    return f"the request body {size}; this server accepts at most {limit} bytes here"


def _counted(receive: Receive, limit: int, what: str) -> Receive:
    """``receive`` that fails with RESOURCE_EXHAUSTED once more than ``limit`` body bytes arrived."""
    size = 0

    async def next_message() -> Message:
        nonlocal size
        message = await receive()
        if message["type"] == "http.request":
            size += len(message.get("body", b""))
            if size > limit:
                raise BodyTooLarge(f"{what} is larger than {limit} bytes, the most this server accepts")
        return message

    return next_message


async def _refuse(exc: EdgefleetError, scope: Scope, receive: Receive, send: Send, *, unread: bool) -> None:
    # the rest of an unread body is not wanted: closing the connection stops the server reading it
    headers = {"Connection": "close"} if unread else None
    await exception_response(exc, headers)(scope, receive, send)
