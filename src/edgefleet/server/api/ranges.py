"""Serving stored artifacts with HTTP range requests (RFC 9110 single ranges), so downloads resume."""

from __future__ import annotations

import re

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from edgefleet.core.errors import OutOfRange
from edgefleet.server.api.errors import error_response
from edgefleet.server.artifacts import ArtifactStore

_RANGE_RE = re.compile(r"^bytes=(\d*)-(\d*)$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(start, length) for a ``Range`` header, None for the whole object.

    Multi-range and malformed headers are ignored (the whole object is sent, as RFC 9110
    allows); an unsatisfiable range is OUT_OF_RANGE (416).
    """
    if not header:
        return None
    match = _RANGE_RE.match(header.strip())
    if match is None:
        return None
    first, last = match.groups()
    if not first and not last:
        return None
    if not first:  # suffix range: the last N bytes
        length = min(int(last), size)
        if length == 0:
            raise OutOfRange(f"range {header!r} is empty")
        return size - length, length
    start = int(first)
    end = min(int(last), size - 1) if last else size - 1
    if start >= size or (last and int(last) < start):
        raise OutOfRange(f"range {header!r} is outside the {size}-byte object")
    return start, end - start + 1


def serve_artifact(
    request: Request,
    artifacts: ArtifactStore,
    key: str,
    size: int,
    etag: str,
    filename: str,
    data: bytes | None = None,
) -> Response:
    """A 200 or 206 response streaming ``key`` (a whole one from ``data`` when given); ``If-Range``
    with a stale ETag sends everything."""
    headers = {
        "Accept-Ranges": "bytes",
        "ETag": f'"{etag}"',
        "Content-Disposition": f'attachment; filename="{filename}"',
    }
    range_header = request.headers.get("range")
    if_range = request.headers.get("if-range")
    if if_range is not None and if_range.strip() != f'"{etag}"':
        range_header = None
    try:
        byte_range = parse_range(range_header, size)
    except OutOfRange as exc:
        # HTTP wants 416 here, not the 400 that OUT_OF_RANGE maps to elsewhere.
        response = error_response(exc.code, exc.message, {"Content-Range": f"bytes */{size}"})
        response.status_code = 416
        return response
    if byte_range is None and data is not None:
        return Response(data, media_type="application/gzip", headers=headers)
    if byte_range is None:
        headers["Content-Length"] = str(size)
        return StreamingResponse(
            artifacts.open_range(key), media_type="application/gzip", headers=headers, status_code=200
        )
    start, length = byte_range
    headers["Content-Range"] = f"bytes {start}-{start + length - 1}/{size}"
    headers["Content-Length"] = str(length)
    return StreamingResponse(
        artifacts.open_range(key, start, length),
        media_type="application/gzip",
        headers=headers,
        status_code=206,
    )
