"""The device data plane (mutual TLS): registration check, heartbeats, deployments, packages, results.

Every call is authenticated by the connection's client certificate (issued at enrolment) and checked
for revocation; the DeviceName/DeviceFleetName in a body must be the caller's own, so a device can
only read its own deployments and write its own heartbeats and results. Operation names and fields
are those of the Edge Manager device API (``fleet-api.md``); ``ReportDeploymentResult``,
``ReportDeploymentHealth``, ``RenewCertificate`` and package download are edgefleet extensions.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request, Response
from fastapi import Path as PathParam
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from edgefleet.core.deviceplane import HealthReport
from edgefleet.core.errors import EdgefleetError, InvalidArgument, NotFound, PermissionDenied
from edgefleet.server import deployments as dp
from edgefleet.server import devices
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import (
    DeviceIdentity,
    app_state,
    check_device,
    client_certificate,
    device_identity,
)
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.api.ranges import serve_artifact
from edgefleet.server.api.state import AppState
from edgefleet.server.db.schema import ModelPackage, PlanModel, PlanStage, StageDevice
from edgefleet.server.rollout import DeviceStatus
from edgefleet.server.validation import MAX_ID

log = logging.getLogger(__name__)

Identity = Annotated[DeviceIdentity, Depends(device_identity)]
router = APIRouter(prefix="/device/v1", tags=["device plane (mutual TLS)"], responses=ERROR_RESPONSES)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _metric(metric: s.EdgeMetric, stamps: dict[tuple[datetime, Any], str]) -> dict[str, Any]:
    """A metric as stored; ``stamps`` memoises formatted times (a heartbeat's metrics usually share one)."""
    stamp = metric.Timestamp
    text = None
    if stamp is not None:
        key = (stamp, stamp.tzinfo)  # equal instants in other zones are written in their own zone
        text = stamps.get(key)
        if text is None:
            aware = _aware(stamp)
            assert aware is not None
            text = stamps[key] = aware.isoformat()
    return {
        "Dimension": metric.Dimension,
        "MetricName": metric.MetricName,
        "Value": metric.Value,
        "Timestamp": text,
    }


@router.post("/GetDeviceRegistration", response_model=s.RegistrationOut, summary="GetDeviceRegistration")
def get_registration(body: s.DeviceRef, request: Request, identity: Identity) -> s.RegistrationOut:
    st = app_state(request)
    with st.db.session() as session:
        device = check_device(session, identity, st.db.now())
        devices.check_identity(device, body.DeviceName, body.DeviceFleetName)
        return s.RegistrationOut(
            DeviceRegistration="REGISTERED", CacheTTL=str(st.config.timing.registration_cache_ttl)
        )


@router.post("/RenewCertificate", response_model=s.RenewResponse, summary="Renew the client certificate")
def renew_certificate(body: s.RenewRequest, request: Request, identity: Identity) -> s.RenewResponse:
    """A certificate for the device's new key (*extension*). The certificate this request was made
    with stays valid until the renewed one is first used; from then on only the renewed one is."""
    st = app_state(request)
    with st.db.session() as session:
        device = check_device(session, identity, st.db.now())
        devices.check_identity(device, body.DeviceName, body.DeviceFleetName)
        issued = devices.renew_certificate(
            session,
            device,
            client_certificate(request.scope),
            body.CertificateSigningRequest,
            st.ca,
            st.db.now(),
            st.config.timing.device_cert_days,
        )
        return s.RenewResponse(
            DeviceName=device.name,
            DeviceFleetName=device.fleet.name,
            Certificate=issued.cert_pem,
            CertificateChain=[st.ca.cert_pem],
            CertificateExpiresAt=issued.not_after,
        )


#: set in the ASGI scope by :mod:`edgefleet.server.api.fastpath` when it handed a heartbeat on
FAST_PATH_DECLINED = "edgefleet.fastpath_declined"


def heartbeat_of(body: s.HeartbeatRequest) -> devices.Heartbeat:
    """The service-layer heartbeat of a SendHeartbeat body (its DeploymentResult is handled apart)."""
    stamps: dict[tuple[datetime, Any], str] = {}
    return devices.Heartbeat(
        agent_version=body.AgentVersion,
        agent_metrics=[_metric(m, stamps) for m in body.AgentMetrics],
        models=[
            devices.ModelReport(
                name=m.ModelName,
                version=m.ModelVersion,
                latest_sample=_aware(m.LatestSampleTime),
                latest_inference=_aware(m.LatestInference),
                metrics=[_metric(x, stamps) for x in m.ModelMetrics],
            )
            for m in body.Models
        ],
        platform=(body.Platform.Os, body.Platform.Arch, body.Platform.Accelerator) if body.Platform else None,
    )


def group_commit_eligible(
    body: s.HeartbeatRequest, identity: DeviceIdentity, heartbeat: devices.Heartbeat
) -> bool:
    """Whether a heartbeat may be group-committed: no result to apply, own name, valid fields.

    Everything else takes the ordinary path, which reports errors in the documented order
    (identity first, then the fields).
    """
    return body.DeploymentResult is None and body.DeviceName == identity.name and _valid(heartbeat)


@router.post("/SendHeartbeat", response_model=dict[str, Any], summary="SendHeartbeat")
async def send_heartbeat(body: s.HeartbeatRequest, request: Request, identity: Identity) -> dict[str, Any]:
    """Agent version and metrics, loaded models; optionally a DeploymentResult (applied like ReportDeploymentResult).

    Answered once the heartbeat is committed. Plain heartbeats (the bulk of a fleet's traffic) are
    group-committed with other devices' (:mod:`edgefleet.server.heartbeats`); one carrying a
    result, and any that the group commit cannot vouch for, go through one transaction of their own.
    """
    st = app_state(request)
    heartbeat = heartbeat_of(body)
    grouped = not request.scope.get(FAST_PATH_DECLINED) and group_commit_eligible(body, identity, heartbeat)
    if grouped and await st.heartbeats.write(identity.name, identity.serial, body.DeviceFleetName, heartbeat):
        return {}
    await run_in_threadpool(_store_heartbeat, st, body, identity, heartbeat)
    return {}


def _valid(heartbeat: devices.Heartbeat) -> bool:
    try:
        devices.check_heartbeat(heartbeat)
    except InvalidArgument:
        return False  # the ordinary path reports it, after the identity checks that come first
    return True


def _store_heartbeat(
    st: AppState, body: s.HeartbeatRequest, identity: DeviceIdentity, heartbeat: devices.Heartbeat
) -> None:
    with st.db.session() as session:
        device = check_device(session, identity, st.db.now())
        devices.check_identity(device, body.DeviceName, body.DeviceFleetName)
        devices.record_heartbeat(session, device, heartbeat, st.db.now())
        if body.DeploymentResult is not None:
            result = body.DeploymentResult
            try:
                dp.record_result(
                    session,
                    device,
                    dp.ResultReport(
                        result.DeploymentName, result.DeploymentStatus, result.DeploymentStatusMessage
                    ),
                    st.db.now(),
                )
            except NotFound as exc:
                # A queued result for a plan deleted since must not block heartbeats forever.
                log.warning(
                    "device %s: ignoring the result for %s: %s", device.name, result.DeploymentName, exc
                )


@router.post("/GetDeployments", response_model=s.DeploymentsOut, summary="GetDeployments")
def get_deployments(body: s.DeviceRef, request: Request, identity: Identity) -> s.DeploymentsOut:
    """The deployments this device must act on, oldest first; fetching one marks it INPROGRESS."""
    st = app_state(request)
    with st.db.session() as session:
        device = check_device(session, identity, st.db.now())
        devices.check_identity(device, body.DeviceName, body.DeviceFleetName)
        items = dp.device_deployments(session, device, st.db.now())
        return s.DeploymentsOut(Deployments=[render.deployment(item, st.artifacts) for item in items])


@router.post("/ReportDeploymentResult", response_model=s.ResultOut, summary="Report a deployment result")
def report_result(body: s.ResultRequest, request: Request, identity: Identity) -> s.ResultOut:
    """The device's row is written and committed first; its stage is refreshed in a second
    transaction only if the result may change it (so a large stage's reports run in parallel)."""
    st = app_state(request)
    result = body.DeploymentResult
    with st.db.session() as session:
        device = check_device(session, identity, st.db.now())
        devices.check_identity(device, body.DeviceName, body.DeviceFleetName)
        row = dp.record_result(
            session,
            device,
            dp.ResultReport(result.DeploymentName, result.DeploymentStatus, result.DeploymentStatusMessage),
            st.db.now(),
            refresh=False,
        )
        answer = s.ResultOut(DeploymentName=result.DeploymentName, DeviceDeploymentStatus=row.status)
        stage_id, failed = row.stage_id, row.status == DeviceStatus.FAILED
    try:
        with st.db.session() as session:
            dp.settle_stage(session, stage_id, st.db.now(), device_failed=failed)
    except EdgefleetError as exc:  # the result is stored; the periodic stage refresh settles the stage
        log.warning("device %s: stage refresh after its result failed: %s", identity.name, exc)
    return answer


@router.post("/ReportDeploymentHealth", response_model=s.HealthOut, summary="Report post-activation health")
def report_health(body: s.HealthRequest, request: Request, identity: Identity) -> s.HealthOut:
    """Error rate and p99 latency of the new model; the answer says whether to keep it or roll back."""
    st = app_state(request)
    with st.db.session() as session:
        device = check_device(session, identity, st.db.now())
        devices.check_identity(device, body.DeviceName, body.DeviceFleetName)
        verdict = dp.record_health(
            session,
            device,
            HealthReport(body.DeploymentName, body.Inferences, body.Errors, body.P99LatencyMs),
            st.db.now(),
        )
        return s.HealthOut(**verdict.to_wire())


@router.get("/packages/{package_id}", summary="Download a package (HTTP Range supported)")
def download_package(
    package_id: Annotated[int, PathParam(ge=0, le=MAX_ID)], request: Request, identity: Identity
) -> Response:
    """Only packages of deployments assigned to this device can be downloaded."""
    st = app_state(request)
    with st.db.session() as session:
        device = check_device(session, identity, st.db.now())
        package = session.get(ModelPackage, package_id)
        assigned = session.scalar(
            select(StageDevice.stage_id)
            .join(PlanStage, PlanStage.id == StageDevice.stage_id)
            .join(PlanModel, PlanModel.plan_id == PlanStage.plan_id)
            .where(StageDevice.device_id == device.id)
            .where(PlanModel.model_version_id == (package.model_version_id if package else -1))
            .limit(1)
        )
        if package is None or assigned is None:
            raise PermissionDenied(
                f"package {package_id} is not part of a deployment of device {device.name!r}"
            )
        key, size, sha256 = package.artifact_key, package.size, package.sha256
    return serve_artifact(request, st.artifacts, key, size, sha256, key.rsplit("/", 1)[-1])
