"""Operator API: model version baselines and fleet drift reports (see server/drift.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Depends, Request

from edgefleet.core.errors import InvalidArgument
from edgefleet.server import drift
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.db.schema import Baseline

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1", tags=["drift"], responses=ERROR_RESPONSES)


def _baseline(row: Baseline) -> s.BaselineOut:
    return s.BaselineOut(
        ModelName=row.model_version.model.name,
        ModelVersion=row.model_version.version,
        Samples=row.samples,
        CreationTime=row.created_at,
        CreatedBy=row.created_by,
        Summary=row.summary,
    )


@router.put(
    "/models/{name}/versions/{version}/baseline",
    response_model=s.BaselineOut,
    summary="Attach a baseline to a model version",
)
def put_baseline(
    name: str, version: str, body: s.BaselineRequest, request: Request, actor: Actor
) -> s.BaselineOut:
    """The reference summary drift is scored against (replaces the version's previous one)."""
    st = app_state(request)
    with st.db.session() as session:
        return _baseline(drift.put_baseline(session, name, version, body.Summary, actor, st.db.now()))


@router.get(
    "/models/{name}/versions/{version}/baseline",
    response_model=s.BaselineOut,
    summary="Show a model version's baseline",
)
def get_baseline(name: str, version: str, request: Request, actor: Actor) -> s.BaselineOut:
    st = app_state(request)
    with st.db.session() as session:
        return _baseline(drift.get_baseline(session, name, version))


@router.get("/fleets/{fleet}/drift", response_model=s.DriftReportOut, summary="A fleet's drift for a model")
def fleet_drift(
    fleet: str,
    request: Request,
    actor: Actor,
    ModelName: str,
    ModelVersion: str | None = None,
    Since: datetime | None = None,
    BucketSeconds: int | None = None,
    DeviceTag: str | None = None,
) -> s.DriftReportOut:
    """Live summaries merged per version and time bucket, scored against each version's baseline."""
    tag = None
    if DeviceTag is not None:
        key, sep, value = DeviceTag.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"DeviceTag must be KEY=VALUE (got {DeviceTag!r})")
        tag = (key, value)
    st = app_state(request)
    with st.db.session() as session:
        report = drift.fleet_drift(
            session,
            fleet,
            ModelName,
            version=ModelVersion,
            since=Since,
            now=st.db.now(),
            bucket_seconds=BucketSeconds,
            tag=tag,
        )
    return s.DriftReportOut(
        DeviceFleetName=report.fleet,
        ModelName=report.model_name,
        Since=report.since,
        BucketSeconds=report.bucket_seconds,
        Buckets=[
            s.DriftBucketOut(
                ModelVersion=b.model_version,
                BucketStart=b.start,
                BucketEnd=b.end,
                Windows=b.windows,
                Devices=b.devices,
                Calls=b.calls,
                MaxPsi=b.report.max_psi,
                MaxKs=b.report.max_ks,
                MaxJs=b.report.max_js,
                Mismatches=list(b.report.mismatches),
            )
            for b in report.buckets
        ],
        Features=[
            s.FeatureDriftOut(
                ModelVersion=b.model_version,
                BucketStart=b.start,
                Kind=f.kind,
                Tensor=f.tensor,
                Feature=f.feature,
                Psi=f.psi,
                Ks=f.ks,
                BaselineCount=f.baseline_count,
                LiveCount=f.live_count,
            )
            for b, f in report.features()
        ],
        Classes=[
            s.ClassDriftOut(
                ModelVersion=b.model_version,
                BucketStart=b.start,
                Output=c.output,
                Js=c.js,
                Baseline=c.baseline,
                Live=c.live,
            )
            for b, c in report.classes()
        ],
        MissingBaselines=list(report.missing_baselines),
    )
