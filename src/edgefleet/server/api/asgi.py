"""ASGI plumbing shared by the middlewares in front of the routes (:mod:`.guard`, :mod:`.fastpath`)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


def header(scope: Scope, name: bytes) -> bytes | None:
    """The first value of request header ``name`` (lower case), or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return bytes(value)
    return None


def content_length(scope: Scope) -> int | None:
    """The declared body size, or None when the request declares none (chunked, or no body)."""
    value = header(scope, b"content-length")
    if value is None:
        return None
    value = value.strip()
    # the HTTP server has already refused a malformed Content-Length; be strict all the same
    return int(value) if value.isdigit() else None


def has_body(scope: Scope) -> bool:
    """Whether the request says a body follows (a positive Content-Length, or chunked)."""
    declared = content_length(scope)
    return bool(declared) or header(scope, b"transfer-encoding") is not None


def replay(chunks: list[bytes], complete: bool, tail: Message | None, receive: Receive) -> Receive:
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
