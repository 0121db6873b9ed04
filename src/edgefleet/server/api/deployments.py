"""Operator API: edge deployment plans, their stages and per-device status."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from edgefleet.core.deviceplane import HealthGate
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.deployments import plans, stages
from edgefleet.server.deployments.records import ModelConfigSpec, PlanSpec, StageSpec
from edgefleet.server.validation import check_page_size

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1/deployment-plans", tags=["deployments"], responses=ERROR_RESPONSES)


def _spec(body: s.CreatePlanRequest) -> PlanSpec:
    gate = HealthGate() if body.HealthGate is None else HealthGate.from_wire(body.HealthGate.model_dump())
    return PlanSpec(
        name=body.EdgeDeploymentPlanName,
        fleet_name=body.DeviceFleetName,
        model_configs=[
            ModelConfigSpec(c.ModelHandle, c.ModelName, version=c.ModelVersion, alias=c.ModelAlias)
            for c in body.ModelConfigs
        ],
        stages=[
            StageSpec(
                name=st.StageName,
                subset_type=st.DeviceSelectionConfig.DeviceSubsetType,
                percentage=st.DeviceSelectionConfig.Percentage,
                device_names=st.DeviceSelectionConfig.DeviceNames or (),
                name_contains=st.DeviceSelectionConfig.DeviceNameContains,
                tags=st.DeviceSelectionConfig.DeviceTags,
                failure_policy=st.DeploymentConfig.FailureHandlingPolicy,
                failure_threshold=st.DeploymentConfig.FailureThreshold,
            )
            for st in body.Stages
        ],
        health_gate=gate,
        device_timeout_seconds=body.DeviceTimeoutSeconds,
        watch_seconds=body.WatchSeconds,
        watch_policy=body.WatchPolicy,
    )


@router.post("", status_code=201, response_model=s.PlanOut, summary="CreateEdgeDeploymentPlan")
def create_plan(body: s.CreatePlanRequest, request: Request, actor: Actor) -> s.PlanOut:
    st = app_state(request)
    with st.db.session() as session:
        plan = plans.create_plan(session, _spec(body), actor, st.db.now())
        return render.plan(session, plan)


@router.get("", response_model=s.PlanList, summary="ListEdgeDeploymentPlans")
def list_plans(
    request: Request,
    actor: Actor,
    DeviceFleetName: str | None = None,
    NameContains: str | None = None,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.PlanList:
    st = app_state(request)
    limit = check_page_size(MaxResults, 50, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = plans.list_plans(
            session, fleet_name=DeviceFleetName, name_contains=NameContains, limit=limit, next_token=NextToken
        )
        return s.PlanList(
            EdgeDeploymentPlanSummaries=[render.plan_summary(p) for p in page.items],
            NextToken=page.next_token,
        )


@router.get("/{name}", response_model=s.PlanOut, summary="DescribeEdgeDeploymentPlan")
def describe_plan(name: str, request: Request, actor: Actor) -> s.PlanOut:
    """The plan with each stage's status and device counts (refreshed now: applies device timeouts)."""
    st = app_state(request)
    with st.db.session() as session:
        plan = plans.get_plan(session, name)
        for stage in plan.stages:
            stages.refresh_stage(session, stage, st.db.now())
        session.flush()  # keep the transitions: expiring would drop unflushed changes
        session.expire_all()
        return render.plan(session, plans.get_plan(session, name))


@router.delete("/{name}", status_code=204, response_class=Response, summary="DeleteEdgeDeploymentPlan")
def delete_plan(name: str, request: Request, actor: Actor) -> Response:
    st = app_state(request)
    with st.db.session() as session:
        plans.delete_plan(session, name)
    return Response(status_code=204)


@router.post("/{name}/stages/{stage}/start", response_model=s.PlanOut, summary="StartEdgeDeploymentStage")
def start_stage(name: str, stage: str, request: Request, actor: Actor) -> s.PlanOut:
    st = app_state(request)
    with st.db.session() as session:
        stages.start_stage(session, name, stage, st.db.now())
        session.flush()  # keep the transitions: expiring would drop unflushed changes
        session.expire_all()
        return render.plan(session, plans.get_plan(session, name))


@router.post("/{name}/stages/{stage}/stop", response_model=s.PlanOut, summary="StopEdgeDeploymentStage")
def stop_stage(name: str, stage: str, request: Request, actor: Actor) -> s.PlanOut:
    st = app_state(request)
    with st.db.session() as session:
        stages.stop_stage(session, name, stage, st.db.now())
        session.flush()  # keep the transitions: expiring would drop unflushed changes
        session.expire_all()
        return render.plan(session, plans.get_plan(session, name))


@router.get("/{name}/stages/{stage}/devices", response_model=s.StageDeviceList, summary="ListStageDevices")
def list_stage_devices(
    name: str,
    stage: str,
    request: Request,
    actor: Actor,
    DeviceDeploymentStatus: str | None = None,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.StageDeviceList:
    st = app_state(request)
    limit = check_page_size(MaxResults, 100, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = stages.list_stage_devices(
            session, name, stage, status=DeviceDeploymentStatus, limit=limit, next_token=NextToken
        )
        return s.StageDeviceList(
            DeviceDeploymentSummaries=[render.stage_device(name, stage, row) for row in page.items],
            NextToken=page.next_token,
        )
