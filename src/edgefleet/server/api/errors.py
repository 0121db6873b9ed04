"""Error responses: every failure is ``{"error": {"code": CODE, "message": ...}}`` with the code's HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    ResourceExhausted,
    code_from_http,
    error_body,
    http_status,
)

log = logging.getLogger(__name__)


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


# each status's codes (from the one table); 413 is no code's own status, only BodyTooLarge's
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {
        "model": ErrorBody,
        "description": " / ".join(c.value for c in Code if http_status(c) == status)
        or "RESOURCE_EXHAUSTED: the request body is larger than the server accepts",
    }
    for status in (400, 401, 403, 404, 409, 412, 413)
}


class BodyTooLarge(ResourceExhausted):
    """A request body over its cap: RESOURCE_EXHAUSTED, answered ``413 Content Too Large`` (not the
    code's usual 429: sending it again will not help)."""

    status_override = 413


def error_response(
    code: Code, message: str, headers: dict[str, str] | None = None, *, status: int | None = None
) -> JSONResponse:
    """A JSON error response for ``code`` (with the code's HTTP status unless ``status`` is given)."""
    return JSONResponse(
        error_body(code, message),
        status_code=status or http_status(code),
        headers=headers,
    )


def exception_response(exc: EdgefleetError, headers: dict[str, str] | None = None) -> JSONResponse:
    """The response for ``exc`` (``WWW-Authenticate`` on UNAUTHENTICATED), as every entry answers it."""
    extra = {"WWW-Authenticate": "Bearer"} if exc.code is Code.UNAUTHENTICATED else {}
    return error_response(exc.code, exc.message, {**extra, **(headers or {})} or None, status=exc.http_status)


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI) -> None:
    """Map edgefleet errors, validation errors, HTTP errors and crashes to the JSON error shape."""

    @app.exception_handler(EdgefleetError)
    async def _edgefleet(request: Request, exc: EdgefleetError) -> JSONResponse:
        if exc.code is Code.INTERNAL:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        return exception_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:10]]
        return error_response(Code.INVALID_ARGUMENT, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = code_from_http(exc.status_code)
        message = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}"
        response = error_response(code, message, dict(exc.headers) if exc.headers else None)
        response.status_code = exc.status_code
        return response

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        log.exception("%s %s crashed", request.method, request.url.path)
        return error_response(Code.INTERNAL, f"internal error ({type(exc).__name__}); see the server log")
