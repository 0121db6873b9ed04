"""Error responses: every failure is ``{"error": {"code": CODE, "message": ...}}`` with the code's HTTP status."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from edgefleet.core.errors import Code, EdgefleetError, ResourceExhausted, http_status

log = logging.getLogger(__name__)

_HTTP_TO_CODE = {
    400: Code.INVALID_ARGUMENT,
    401: Code.UNAUTHENTICATED,
    403: Code.PERMISSION_DENIED,
    404: Code.NOT_FOUND,
    405: Code.UNIMPLEMENTED,
    409: Code.ALREADY_EXISTS,
    411: Code.INVALID_ARGUMENT,
    412: Code.FAILED_PRECONDITION,
    413: Code.RESOURCE_EXHAUSTED,
    416: Code.OUT_OF_RANGE,
    429: Code.RESOURCE_EXHAUSTED,
    503: Code.UNAVAILABLE,
}


class ErrorDetail(BaseModel):
    """What went wrong."""

    code: str
    message: str


class ErrorBody(BaseModel):
    """The body of every error response."""

    error: ErrorDetail


ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "INVALID_ARGUMENT / OUT_OF_RANGE"),
        (401, "UNAUTHENTICATED"),
        (403, "PERMISSION_DENIED"),
        (404, "NOT_FOUND"),
        (409, "ALREADY_EXISTS / ABORTED"),
        (412, "FAILED_PRECONDITION"),
        (413, "RESOURCE_EXHAUSTED: the request body is larger than the server accepts"),
    )
}


class BodyTooLarge(ResourceExhausted):
    """A request body over its cap: RESOURCE_EXHAUSTED, answered ``413 Content Too Large`` (not the
    code's usual 429: sending it again will not help)."""

    @property
    def http_status(self) -> int:
        return 413


def error_response(
    code: Code, message: str, headers: dict[str, str] | None = None, *, status: int | None = None
) -> JSONResponse:
    """A JSON error response for ``code`` (with the code's HTTP status unless ``status`` is given)."""
    # a message quoting client text must still encode as UTF-8 (an unpaired surrogate would not)
    message = message.encode("utf-8", "backslashreplace").decode("utf-8")
    return JSONResponse(
        {"error": {"code": code.value, "message": message}},
        status_code=status or http_status(code),
        headers=headers,
    )


def _location(loc: tuple[Any, ...] | list[Any]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or "request"


def install_error_handlers(app: FastAPI) -> None:
    """Map edgefleet errors, validation errors, HTTP errors and crashes to the JSON error shape."""

    @app.exception_handler(EdgefleetError)
    async def _edgefleet(request: Request, exc: EdgefleetError) -> JSONResponse:
        if exc.code is Code.INTERNAL:
            log.error("%s %s failed: %s", request.method, request.url.path, exc)
        headers = {"WWW-Authenticate": "Bearer"} if exc.code is Code.UNAUTHENTICATED else None
        return error_response(exc.code, exc.message, headers, status=exc.http_status)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = [f"{_location(e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()[:10]]
        return error_response(Code.INVALID_ARGUMENT, "; ".join(problems) or "invalid request")

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = _HTTP_TO_CODE.get(
            exc.status_code, Code.INTERNAL if exc.status_code >= 500 else Code.INVALID_ARGUMENT
        )
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
