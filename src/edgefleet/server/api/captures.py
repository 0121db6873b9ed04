"""Operator API: the capture index, and the captured objects themselves from the capture store.

The routes with a suffix (``/object``, ``/raw/{name}``) come first: a key is a path, and the plain
route would otherwise take ``<key>/object`` for a key.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.responses import StreamingResponse

from edgefleet.core.errors import InvalidArgument, quoted
from edgefleet.server import captures
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.validation import check_page_size
from edgefleet.storage import ObjectStore
from edgefleet.storage.base import is_safe_component

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1/captures", tags=["captures"], responses=ERROR_RESPONSES)
#: the media type of a capture object (JSON Lines)
JSONL = "application/x-ndjson"


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@router.get("", response_model=s.CaptureList, summary="List captured objects")
def list_captures(
    request: Request,
    actor: Actor,
    fleet: Annotated[str | None, Query(description="fleet name")] = None,
    model: Annotated[str | None, Query(description="package model name")] = None,
    version: Annotated[str | None, Query(description="model version")] = None,
    device: Annotated[str | None, Query(description="device name")] = None,
    since: Annotated[
        datetime | None, Query(description="objects with a record at or after (ISO 8601)")
    ] = None,
    until: Annotated[datetime | None, Query(description="objects with a record before (ISO 8601)")] = None,
    limit: Annotated[int | None, Query(description="page size (default 100)")] = None,
    next_token: Annotated[str | None, Query()] = None,
) -> s.CaptureList:
    """Indexed capture objects, oldest first, filtered by fleet, model, version, device and time."""
    st = app_state(request)
    size = check_page_size(limit, 100, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = captures.list_objects(
            session,
            fleet_name=fleet,
            model_name=model,
            model_version=version,
            device_name=device,
            since=_aware(since),
            until=_aware(until),
            limit=size,
            next_token=next_token,
        )
        return s.CaptureList(
            Captures=[render.capture_object(r) for r in page.items], NextToken=page.next_token
        )


@router.get(
    "/{key:path}/object",
    summary="Download a captured object (JSON Lines)",
    response_class=StreamingResponse,
    responses={200: {"content": {JSONL: {}}}},
)
def download_capture(key: str, request: Request, actor: Actor) -> Response:
    """The object's bytes from the capture store, streamed."""
    st = app_state(request)
    with st.db.session() as session:
        row = captures.get_object(session, key)
    return _stream(st.captures, row.key, JSONL)


@router.get(
    "/{key:path}/raw/{name}",
    summary="Download a raw-data payload of a captured object",
    response_class=StreamingResponse,
    responses={200: {"content": {"application/octet-stream": {}}}},
)
def download_raw(key: str, name: str, request: Request, actor: Actor) -> Response:
    """A payload too big to embed (``<folder of key>/raw-data/<name>``), of an indexed object only."""
    st = app_state(request)
    if not is_safe_component(name):
        raise InvalidArgument(f"raw-data name {quoted(name)} is not a safe file name")
    with st.db.session() as session:
        row = captures.get_object(session, key)
    return _stream(st.captures, f"{row.key.rsplit('/', 1)[0]}/raw-data/{name}", "application/octet-stream")


@router.get("/{key:path}", response_model=s.CaptureObjectOut, summary="Describe a captured object")
def describe_capture(key: str, request: Request, actor: Actor) -> s.CaptureObjectOut:
    """The index's row of one object."""
    st = app_state(request)
    with st.db.session() as session:
        return render.capture_object(captures.get_object(session, key))


def _stream(store: ObjectStore, key: str, media_type: str) -> Response:
    size = store.size(key)  # NOT_FOUND now, before the response starts
    filename = key.rsplit("/", 1)[-1]
    headers = {"Content-Length": str(size), "Content-Disposition": f'attachment; filename="{filename}"'}
    return StreamingResponse(store.open_range(key), media_type=media_type, headers=headers)
