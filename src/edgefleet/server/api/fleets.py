"""Operator API: fleets, fleet reports and the fleet's shadow figures."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from edgefleet.server import fleets, reports, shadows
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.validation import check_page_size

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1/fleets", tags=["fleets"], responses=ERROR_RESPONSES)


@router.post("", status_code=201, response_model=s.FleetOut, summary="CreateDeviceFleet")
def create_fleet(body: s.CreateFleetRequest, request: Request, actor: Actor) -> s.FleetOut:
    st = app_state(request)
    spec = fleets.FleetSpec(
        name=body.DeviceFleetName,
        output_location=body.OutputConfig.S3OutputLocation,
        description=body.Description,
        role_arn=body.RoleArn,
        kms_key_id=body.OutputConfig.KmsKeyId,
        tags=body.Tags,
    )
    with st.db.session() as session:
        return render.fleet(fleets.create_fleet(session, spec, st.db.now()))


@router.get("", response_model=s.FleetList, summary="ListDeviceFleets")
def list_fleets(
    request: Request,
    actor: Actor,
    NameContains: str | None = None,
    SortBy: str = "NAME",
    SortOrder: str = "Ascending",
    MaxResults: Annotated[int | None, Query()] = None,
    NextToken: str | None = None,
) -> s.FleetList:
    st = app_state(request)
    limit = check_page_size(MaxResults, 50, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = fleets.list_fleets(
            session,
            name_contains=NameContains,
            sort_by=SortBy,
            sort_order=SortOrder,
            limit=limit,
            next_token=NextToken,
        )
        return s.FleetList(
            DeviceFleetSummaries=[render.fleet_summary(f) for f in page.items], NextToken=page.next_token
        )


@router.get("/{name}", response_model=s.FleetOut, summary="DescribeDeviceFleet")
def describe_fleet(name: str, request: Request, actor: Actor) -> s.FleetOut:
    st = app_state(request)
    with st.db.session() as session:
        return render.fleet(fleets.get_fleet(session, name))


@router.patch("/{name}", response_model=s.FleetOut, summary="UpdateDeviceFleet")
def update_fleet(name: str, body: s.UpdateFleetRequest, request: Request, actor: Actor) -> s.FleetOut:
    st = app_state(request)
    with st.db.session() as session:
        row = fleets.update_fleet(
            session,
            name,
            st.db.now(),
            output_location=body.OutputConfig.S3OutputLocation if body.OutputConfig else None,
            kms_key_id=body.OutputConfig.KmsKeyId if body.OutputConfig else None,
            description=body.Description,
            role_arn=body.RoleArn,
            tags=body.Tags,
        )
        return render.fleet(row)


@router.delete("/{name}", status_code=204, response_class=Response, summary="DeleteDeviceFleet")
def delete_fleet(name: str, request: Request, actor: Actor) -> Response:
    st = app_state(request)
    with st.db.session() as session:
        fleets.delete_fleet(session, name)
    return Response(status_code=204)


@router.get("/{name}/report", response_model=s.FleetReportOut, summary="GetDeviceFleetReport")
def get_report(name: str, request: Request, actor: Actor) -> s.FleetReportOut:
    """The latest generated report (generated now if the fleet has none yet)."""
    st = app_state(request)
    with st.db.session() as session:
        row = reports.get_report(session, name, st.db.now(), st.connected_window)
        return render.report(fleets.get_fleet(session, name), row)


@router.post("/{name}/report", response_model=s.FleetReportOut, summary="Regenerate the fleet report now")
def regenerate_report(name: str, request: Request, actor: Actor) -> s.FleetReportOut:
    st = app_state(request)
    with st.db.session() as session:
        row = reports.generate_report(session, name, st.db.now(), st.connected_window)
        return render.report(fleets.get_fleet(session, name), row)


@router.get("/{name}/shadows", response_model=s.FleetShadowsOut, summary="The fleet's shadow figures")
def get_shadows(
    name: str,
    request: Request,
    actor: Actor,
    ChampionModel: str | None = None,
    ShadowModel: str | None = None,
    Since: datetime | None = None,
) -> s.FleetShadowsOut:
    """Per champion and shadow model version: the devices' latest shadow figures summed, the
    agreement rate, and the shadow's latency against the champion's on the same device."""
    since = None if Since is None else Since if Since.tzinfo else Since.replace(tzinfo=UTC)
    st = app_state(request)
    with st.db.session() as session:
        pairs = shadows.shadow_report(session, name, ChampionModel, ShadowModel, since=since)
    return s.FleetShadowsOut(
        DeviceFleetName=name,
        ShadowPairs=[
            s.ShadowPairOut(
                ChampionModel=p.champion_model,
                ChampionVersion=p.champion_version,
                ShadowModel=p.shadow_model,
                ShadowVersion=p.shadow_version,
                DeviceCount=p.devices,
                Mirrored=p.mirrored,
                Completed=p.completed,
                Agreed=p.agreed,
                Disagreed=p.disagreed,
                ShadowErrors=p.shadow_errors,
                Dropped=p.dropped,
                AgreementRate=p.agreement_rate,
                ShadowErrorRate=p.shadow_error_rate,
                LatencyRatioP50Median=p.p50_ratio_median,
                LatencyRatioP50Worst=p.p50_ratio_worst,
                LatencyRatioP99Median=p.p99_ratio_median,
                LatencyRatioP99Worst=p.p99_ratio_worst,
                ChampionLatencyP99MsWorst=p.champion_p99_ms_worst,
                ShadowLatencyP99MsWorst=p.shadow_p99_ms_worst,
                LastReportTime=p.last_reported,
            )
            for p in pairs
        ],
    )
