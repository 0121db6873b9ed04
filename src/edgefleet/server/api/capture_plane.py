"""Capture uploads from devices (mutual TLS, edgefleet extension): presigned URLs, or a relay.

A device asks ``POST /device/v1/capture/PresignUploads`` for the keys it is about to write and
PUTs each object to the URL it gets back. Where the capture store can presign (S3), that URL goes
straight to the store, short-lived, and the server never sees the bytes; where it cannot (a
directory, memory), the URL is the relay ``PUT /device/v1/capture/objects/<key>`` on the device
endpoint, which streams the body into the store. Either way a key must lie under the device's own
fleet prefix (:func:`check_capture_key`, the one rule both routes apply): a device can never get a
URL for, or write, another fleet's objects.
"""

from __future__ import annotations

import tempfile
from typing import Annotated, Any
from urllib.parse import quote

from fastapi import APIRouter, Depends, Request
from starlette.concurrency import run_in_threadpool

from edgefleet.core.deviceplane import CAPTURE_OBJECTS_PATH, MAX_UPLOAD_KEYS, UploadGrant, UploadTarget
from edgefleet.core.errors import InvalidArgument, PermissionDenied
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import DeviceIdentity, app_state, device_identity
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.api.state import AppState
from edgefleet.server.deviceplane.service import DeviceCall
from edgefleet.storage import validate_key

Identity = Annotated[DeviceIdentity, Depends(device_identity)]
router = APIRouter(prefix="/device/v1/capture", tags=["device plane (mutual TLS)"], responses=ERROR_RESPONSES)

#: relayed bodies up to this size are held in memory on their way to the store; larger ones on disk
SPOOL_IN_MEMORY = 1024 * 1024


def fleet_prefix(fleet_name: str) -> str:
    """The key prefix of a fleet's capture objects in the capture store."""
    return f"{fleet_name}/"


def check_capture_key(fleet_name: str, key: str) -> str:
    """``key`` if a device of ``fleet_name`` may write it: a safe key (else INVALID_ARGUMENT) under
    the fleet's prefix (else PERMISSION_DENIED)."""
    validate_key(key, "capture object")
    prefix = fleet_prefix(fleet_name)
    if not key.startswith(prefix):
        raise PermissionDenied(f"capture object key {key!r} is outside this device's fleet prefix {prefix!r}")
    return key


def _fleet_of(st: AppState, identity: DeviceIdentity, named: str | None, fleet: str | None) -> str:
    with st.db.session() as session:
        device = DeviceCall(identity.name, identity.serial, named=named).authenticate(
            session, st.db.now(), fleet
        )
        return str(device.fleet.name)


def grant(st: AppState, fleet_name: str, keys: list[str]) -> UploadGrant:
    """Upload targets for ``keys`` (each checked), presigned where the store can, else relayed."""
    if len(keys) > MAX_UPLOAD_KEYS:
        raise InvalidArgument(f"at most {MAX_UPLOAD_KEYS} keys per call, got {len(keys)}")
    ttl = st.config.timing.capture_upload_url_ttl
    uploads = []
    for key in keys:
        signed = st.captures.presign_put(check_capture_key(fleet_name, key), ttl)
        if signed is None:
            relay = CAPTURE_OBJECTS_PATH + quote(key, safe="/")
            uploads.append(UploadTarget(key, relay, "PUT", {"Content-Type": "application/octet-stream"}))
        else:
            uploads.append(UploadTarget(key, signed.url, "PUT", signed.headers, signed.expires))
    return UploadGrant(tuple(uploads), st.captures.uri, fleet_prefix(fleet_name))


@router.post("/PresignUploads", response_model=dict[str, Any], summary="Upload URLs for capture objects")
def presign_uploads(body: s.PresignRequest, request: Request, identity: Identity) -> dict[str, Any]:
    """``{Uploads: [{Key, Url, Method, Headers, Expires}], Location, Prefix}``: a presigned PUT URL per
    key, valid ``capture_upload_url_ttl`` seconds, or (for stores that cannot presign) the relay path
    with ``Expires`` null. Every key must lie under ``Prefix`` (the device's fleet, ``<fleet>/``)."""
    st = app_state(request)
    fleet = _fleet_of(st, identity, body.DeviceName, body.DeviceFleetName)
    return grant(st, fleet, body.Keys).to_wire()


@router.put("/objects/{key:path}", response_model=dict[str, Any], summary="Upload a capture object (relay)")
async def put_object(key: str, request: Request, identity: Identity) -> dict[str, Any]:
    """The body is stored as the capture object ``key`` (under the device's fleet prefix), replacing
    any old one. Its size is capped by the request guard (``Limits.max_capture_object_bytes``)."""
    st = app_state(request)
    fleet = await run_in_threadpool(_fleet_of, st, identity, None, None)
    check_capture_key(fleet, key)
    size = 0
    with tempfile.SpooledTemporaryFile(SPOOL_IN_MEMORY, prefix="edgefleet-capture-") as spool:
        async for chunk in request.stream():
            size += len(chunk)
            spool.write(chunk)
        spool.seek(0)
        await run_in_threadpool(st.captures.put_stream, key, spool)  # type: ignore[arg-type]
    return {"Key": key, "Size": size}
