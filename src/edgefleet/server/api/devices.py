"""Operator API: device registration and inventory."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from edgefleet.server import captures, devices
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.validation import check_page_size, parse_tag_filters

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1/devices", tags=["devices"], responses=ERROR_RESPONSES)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


@router.post("", status_code=201, response_model=s.RegisterDevicesResponse, summary="RegisterDevices")
def register_devices(
    body: s.RegisterDevicesRequest, request: Request, actor: Actor
) -> s.RegisterDevicesResponse:
    """Register devices; each gets a one-time enrolment token (returned only in this response)."""
    st = app_state(request)
    specs = [devices.DeviceSpec(d.DeviceName, d.Description, d.IotThingName, d.Tags) for d in body.Devices]
    with st.db.session() as session:
        registrations = devices.register_devices(
            session,
            body.DeviceFleetName,
            specs,
            st.ca,
            st.db.now(),
            timedelta(seconds=st.config.timing.enrolment_token_ttl),
            tags=body.Tags,
            max_batch=st.config.limits.max_register_batch,
        )
        return s.RegisterDevicesResponse(
            Devices=[
                s.EnrolmentTokenOut(
                    DeviceName=r.device.name,
                    EnrolmentToken=r.enrolment_token,
                    EnrolmentTokenExpiresAt=r.expires_at,
                )
                for r in registrations
            ]
        )


@router.get("", response_model=s.DeviceList, summary="ListDevices")
def list_devices(
    request: Request,
    actor: Actor,
    DeviceFleetName: str | None = None,
    ModelName: str | None = None,
    LatestHeartbeatAfter: datetime | None = None,
    Tag: Annotated[list[str] | None, Query(description="KEY=VALUE; repeat to require several")] = None,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.DeviceList:
    st = app_state(request)
    limit = check_page_size(MaxResults, 100, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = devices.list_devices(
            session,
            fleet_name=DeviceFleetName,
            model_name=ModelName,
            heartbeat_after=_aware(LatestHeartbeatAfter),
            tags=parse_tag_filters(Tag or []),
            limit=limit,
            next_token=NextToken,
        )
        return s.DeviceList(
            DeviceSummaries=[render.device_summary(d) for d in page.items], NextToken=page.next_token
        )


@router.get("/{name}", response_model=s.DeviceOut, summary="DescribeDevice")
def describe_device(name: str, request: Request, actor: Actor) -> s.DeviceOut:
    st = app_state(request)
    with st.db.session() as session:
        row = devices.get_device(session, name)
        return render.device(
            row, captures.latest_samples(session, row), captures.capture_status(session, row)
        )


@router.patch("/{name}", response_model=s.DeviceOut, summary="UpdateDevices (one device)")
def update_device(name: str, body: s.UpdateDeviceRequest, request: Request, actor: Actor) -> s.DeviceOut:
    st = app_state(request)
    platform = None
    if body.Platform is not None:
        platform = (body.Platform.Os, body.Platform.Arch, body.Platform.Accelerator)
    with st.db.session() as session:
        row = devices.update_device(
            session,
            name,
            st.db.now(),
            description=body.Description,
            iot_thing_name=body.IotThingName,
            tags=body.Tags,
            platform=platform,
        )
        return render.device(
            row, captures.latest_samples(session, row), captures.capture_status(session, row)
        )


@router.delete("/{name}", status_code=204, response_class=Response, summary="DeregisterDevices (one device)")
def deregister_device(name: str, request: Request, actor: Actor) -> Response:
    """Deregister a device: its certificate is revoked at once."""
    st = app_state(request)
    with st.db.session() as session:
        devices.deregister_devices(session, None, [name], st.db.now())
    return Response(status_code=204)


@router.post(
    "/{name}/enrolment-token", response_model=s.EnrolmentTokenOut, summary="Issue a new enrolment token"
)
def new_enrolment_token(name: str, request: Request, actor: Actor) -> s.EnrolmentTokenOut:
    """A fresh one-time token (e.g. for a replaced device); enrolling with it revokes the old certificate."""
    st = app_state(request)
    with st.db.session() as session:
        reg = devices.new_enrolment_token(
            session, name, st.ca, st.db.now(), timedelta(seconds=st.config.timing.enrolment_token_ttl)
        )
        return s.EnrolmentTokenOut(
            DeviceName=reg.device.name,
            EnrolmentToken=reg.enrolment_token,
            EnrolmentTokenExpiresAt=reg.expires_at,
        )
