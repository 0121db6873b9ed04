"""Operator API: drift alert rules of a model and their events (see server/alerts.py)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response
from sqlalchemy.orm import Session

from edgefleet.server import alerts
from edgefleet.server.api import schemas as s
from edgefleet.server.api.auth import app_state, operator
from edgefleet.server.api.errors import ERROR_RESPONSES
from edgefleet.server.db.schema import AlertEventRow, AlertRuleRow, Model
from edgefleet.server.validation import check_page_size

Actor = Annotated[str, Depends(operator)]
router = APIRouter(prefix="/api/v1", tags=["alerts"], responses=ERROR_RESPONSES)


def _rule(session: Session, row: AlertRuleRow) -> s.AlertRuleOut:
    webhook = None
    if row.webhook_url is not None:
        webhook = s.WebhookOut(Url=row.webhook_url, HasSecret=row.webhook_secret is not None)
    return s.AlertRuleOut(
        AlertRuleName=row.name,
        ModelName=session.get_one(Model, row.model_id).name,
        DeviceFleetName=alerts.fleet_name_of(session, row),
        ModelVersion=row.model_version,
        MaxPsi=row.max_psi,
        MaxKs=row.max_ks,
        MaxJs=row.max_js,
        Webhook=webhook,
        CreationTime=row.created_at,
        LastModifiedTime=row.updated_at,
        UpdatedBy=row.updated_by,
    )


def _event(row: AlertEventRow) -> s.AlertEventOut:
    return s.AlertEventOut(
        EventId=row.id,
        AlertRuleName=row.rule_name,
        DeviceFleetName=row.fleet_name,
        ModelName=row.model_name,
        ModelVersion=row.model_version,
        Feature=row.feature,
        ScoreKind=row.kind,
        Score=row.score,
        Threshold=row.threshold,
        BucketStart=row.bucket_start,
        BucketEnd=row.bucket_end,
        OpenedAt=row.opened_at,
        ClearedAt=row.cleared_at,
        ClearedScore=row.cleared_score,
    )


@router.put(
    "/models/{name}/alert-rules/{rule}", response_model=s.AlertRuleOut, summary="Set a drift alert rule"
)
def put_rule(
    name: str, rule: str, body: s.AlertRuleRequest, request: Request, actor: Actor
) -> s.AlertRuleOut:
    """Create or replace a rule: thresholds on the model's stored drift scores, and a webhook."""
    spec = alerts.RuleSpec(
        fleet=body.DeviceFleetName,
        version=body.ModelVersion,
        max_psi=body.MaxPsi,
        max_ks=body.MaxKs,
        max_js=body.MaxJs,
        webhook_url=body.Webhook.Url if body.Webhook else None,
        webhook_secret=body.Webhook.Secret if body.Webhook else None,
    )
    st = app_state(request)
    with st.db.session() as session:
        return _rule(session, alerts.put_rule(session, name, rule, spec, actor, st.db.now()))


@router.get(
    "/models/{name}/alert-rules", response_model=s.AlertRuleList, summary="List a model's alert rules"
)
def list_rules(name: str, request: Request, actor: Actor) -> s.AlertRuleList:
    st = app_state(request)
    with st.db.session() as session:
        return s.AlertRuleList(AlertRules=[_rule(session, r) for r in alerts.list_rules(session, name)])


@router.get("/models/{name}/alert-rules/{rule}", response_model=s.AlertRuleOut, summary="Show an alert rule")
def get_rule(name: str, rule: str, request: Request, actor: Actor) -> s.AlertRuleOut:
    st = app_state(request)
    with st.db.session() as session:
        return _rule(session, alerts.get_rule(session, name, rule))


@router.delete(
    "/models/{name}/alert-rules/{rule}",
    status_code=204,
    response_class=Response,
    summary="Delete an alert rule",
)
def delete_rule(name: str, rule: str, request: Request, actor: Actor) -> Response:
    """Delete a rule; its open events clear (and their webhooks say so)."""
    st = app_state(request)
    with st.db.session() as session:
        alerts.delete_rule(session, name, rule, st.db.now())
    return Response(status_code=204)


@router.get("/models/{name}/alert-events", response_model=s.AlertEventList, summary="A model's alert events")
def list_events(
    name: str,
    request: Request,
    actor: Actor,
    AlertRuleName: str | None = None,
    DeviceFleetName: str | None = None,
    OpenOnly: bool = False,
    MaxResults: int | None = None,
    NextToken: str | None = None,
) -> s.AlertEventList:
    """Newest first; ``OpenOnly`` keeps the events not cleared yet."""
    st = app_state(request)
    limit = check_page_size(MaxResults, 50, st.config.limits.max_page_size)
    with st.db.session() as session:
        page = alerts.list_events(
            session,
            name,
            rule=AlertRuleName,
            fleet=DeviceFleetName,
            open_only=OpenOnly,
            limit=limit,
            next_token=NextToken,
        )
        return s.AlertEventList(AlertEvents=[_event(e) for e in page.items], NextToken=page.next_token)
