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
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool

from edgefleet.core import deviceplane as dp
from edgefleet.core.deviceplane import HealthReport
from edgefleet.server import devices
from edgefleet.server.api import render
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import DeviceIdentity, app_state, client_certificate, device_identity
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.api.ranges import serve_artifact
from edgefleet.server.api.state import AppState
from edgefleet.server.db.schema import Device
from edgefleet.server.deployments.device_side import record_health
from edgefleet.server.deployments.records import ResultReport
from edgefleet.server.deviceplane.download import DownloadItem
from edgefleet.server.deviceplane.heartbeat import HeartbeatItem
from edgefleet.server.deviceplane.poll import PollItem
from edgefleet.server.deviceplane.result import ResultItem
from edgefleet.server.deviceplane.service import DeviceCall
from edgefleet.server.validation import MAX_ID

log = logging.getLogger(__name__)

Identity = Annotated[DeviceIdentity, Depends(device_identity)]
State = Annotated[AppState, Depends(app_state)]
router = APIRouter(prefix="/device/v1", tags=["device plane (mutual TLS)"], responses=ERROR_RESPONSES)


def _aware(value: datetime | None) -> datetime | None:
    if value is not None and value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value


def _device(session: Session, st: AppState, identity: DeviceIdentity, named: str, fleet_name: str) -> Device:
    """The caller's device, authenticated as every device call is (:class:`DeviceCall`)."""
    call = DeviceCall(identity.name, identity.serial, named=named)
    return call.authenticate(session, st.db.now(), fleet_name)


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
        _device(session, st, identity, body.DeviceName, body.DeviceFleetName)
        return s.RegistrationOut(
            DeviceRegistration="REGISTERED", CacheTTL=str(st.config.timing.registration_cache_ttl)
        )


@router.post("/RenewCertificate", response_model=s.RenewResponse, summary="Renew the client certificate")
def renew_certificate(body: s.RenewRequest, request: Request, identity: Identity) -> s.RenewResponse:
    """A certificate for the device's new key (*extension*). The certificate this request was made
    with stays valid until the renewed one is first used; from then on only the renewed one is."""
    st = app_state(request)
    with st.db.session() as session:
        device = _device(session, st, identity, body.DeviceName, body.DeviceFleetName)
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
        capture=None
        if body.Capture is None
        else dp.CaptureReport.from_wire(body.Capture.model_dump(mode="json")),
        summaries=tuple(dp.SummaryWindow.from_wire(w.model_dump(mode="json")) for w in body.ModelSummaries),
        shadows=tuple(dp.ShadowReport.from_wire(p.model_dump(mode="json")) for p in body.Shadows),
    )


# The routine calls: the device fast path (edgefleet.server.api.fastpath) calls these too.


@router.post("/SendHeartbeat", response_model=dict[str, Any], summary="SendHeartbeat")
async def send_heartbeat(body: s.HeartbeatRequest, st: State, identity: Identity) -> dict[str, Any]:
    """Agent version and metrics, loaded models; optionally a DeploymentResult (applied like ReportDeploymentResult).

    Answered once the heartbeat is committed; plain heartbeats (the bulk of a fleet's traffic) are
    group-committed with other devices' (:mod:`edgefleet.server.deviceplane.heartbeat`).
    """
    got = body.DeploymentResult
    result = (
        None
        if got is None
        else ResultReport(got.DeploymentName, got.DeploymentStatus, got.DeploymentStatusMessage)
    )
    beat = heartbeat_of(body)
    await st.heartbeats.call(
        HeartbeatItem(
            identity.name, identity.serial, body.DeviceFleetName, beat, result=result, named=body.DeviceName
        )
    )
    st.metrics.heartbeats.inc()
    return {}


@router.post("/GetDeployments", response_model=s.DeploymentsOut, summary="GetDeployments")
async def get_deployments(body: s.DeviceRef, st: State, identity: Identity) -> s.DeploymentsOut:
    """The deployments this device must act on, oldest first; fetching one marks it INPROGRESS."""
    item = PollItem(identity.name, identity.serial, body.DeviceFleetName, named=body.DeviceName)
    found = await st.polls.call(item)
    return s.DeploymentsOut(Deployments=[render.deployment(d, st.artifacts) for d in found])


@router.post("/ReportDeploymentResult", response_model=s.ResultOut, summary="Report a deployment result")
async def report_result(body: s.ResultRequest, st: State, identity: Identity) -> s.ResultOut:
    """The device's row is written and committed first; its stage is refreshed in a second
    transaction only if the result may change it (so a large stage's reports run in parallel)."""
    got = body.DeploymentResult
    item = ResultItem(
        identity.name,
        identity.serial,
        body.DeviceFleetName,
        got.DeploymentName,
        got.DeploymentStatus,
        got.DeploymentStatusMessage,
        named=body.DeviceName,
    )
    status = await st.results.call(item)
    return s.ResultOut(DeploymentName=got.DeploymentName, DeviceDeploymentStatus=status)


@router.post("/ReportDeploymentHealth", response_model=s.HealthOut, summary="Report post-activation health")
def report_health(body: s.HealthRequest, request: Request, identity: Identity) -> s.HealthOut:
    """Error rate and p99 latency of the new model; the answer says whether to keep it or roll back."""
    st = app_state(request)
    with st.db.session() as session:
        device = _device(session, st, identity, body.DeviceName, body.DeviceFleetName)
        verdict = record_health(
            session,
            device,
            HealthReport(body.DeploymentName, body.Inferences, body.Errors, body.P99LatencyMs),
            st.db.now(),
        )
        return s.HealthOut(**verdict.to_wire())


@router.get("/packages/{package_id}", summary="Download a package (HTTP Range supported)")
async def download_package(
    package_id: Annotated[int, PathParam(ge=0, le=MAX_ID)], request: Request, st: State, identity: Identity
) -> Response:
    """Only packages of deployments assigned to this device can be downloaded (a whole small
    archive is served from memory)."""
    grant = await st.downloads.call(DownloadItem(identity.name, identity.serial, package_id))
    ranged = "range" in request.headers or "if-range" in request.headers
    data = None if ranged else await st.downloads.content(grant)
    return await run_in_threadpool(
        serve_artifact,
        request,
        st.artifacts,
        grant.artifact_key,
        grant.size,
        grant.sha256,
        grant.filename,
        data,
    )
