"""Drift alerts: thresholds per model (optionally one fleet and one version) on the stored drift
time series (server/drift.py), alert events when a score crosses one, webhooks through the outbox
(server/webhooks.py).

The periodic work reconciles every rule with the latest scored bucket of each series it covers (a
fleet's model version): a score above the rule's threshold (``MaxPsi`` for PSI, ``MaxKs`` for KS,
``MaxJs`` for JS) opens an event (logged at WARNING, webhook ``alert.opened``) unless one is open
for the same (rule, fleet, version, feature, kind); an open event whose score is no longer above it
(or no longer scored, or no longer covered by the rule) clears (logged at INFO, webhook
``alert.cleared``). Evaluation is idempotent: a round that finds nothing new changes nothing, so
there are no event storms, and a rule is evaluated under its row's lock so replicas do not race.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.server import registry, webhooks
from edgefleet.server.db.engine import Database
from edgefleet.server.db.paging import paginate
from edgefleet.server.db.schema import (
    AlertEventRow,
    AlertRuleRow,
    DriftBucketRow,
    DriftScoreRow,
    Fleet,
    Model,
)
from edgefleet.server.drift import JS, KS, PSI
from edgefleet.server.fleets import get_fleet
from edgefleet.server.validation import Page, validate_name

log = logging.getLogger(__name__)

WEBHOOK_SCHEMES = ("http", "https")
OPENED, CLEARED = "alert.opened", "alert.cleared"
MAX_URL_CHARS = 2000
MAX_SECRET_CHARS = 200


@dataclass(frozen=True)
class RuleSpec:
    """What an operator sets: thresholds (at least one) and optionally a webhook."""

    fleet: str | None = None
    version: str | None = None
    max_psi: float | None = None
    max_ks: float | None = None
    max_js: float | None = None
    webhook_url: str | None = None
    webhook_secret: str | None = None


def check_spec(spec: RuleSpec) -> None:
    """INVALID_ARGUMENT for a rule that cannot work: no threshold, a negative or non-finite one,
    a webhook URL that is not absolute http(s), a secret without a URL or out of bounds."""
    thresholds = {"MaxPsi": spec.max_psi, "MaxKs": spec.max_ks, "MaxJs": spec.max_js}
    if all(v is None for v in thresholds.values()):
        raise InvalidArgument("an alert rule needs at least one of MaxPsi, MaxKs, MaxJs")
    for field, value in thresholds.items():
        if value is not None and (not math.isfinite(value) or value < 0):
            raise InvalidArgument(f"{field} must be a number of at least 0 (got {value!r})")
    if spec.max_js is not None and spec.max_js > 1:
        raise InvalidArgument(f"MaxJs is a Jensen-Shannon divergence, 0-1 (got {spec.max_js!r})")
    if spec.webhook_url is not None:
        url = spec.webhook_url
        if len(url) > MAX_URL_CHARS:
            raise InvalidArgument(f"Webhook.Url is at most {MAX_URL_CHARS} characters")
        parts = urlsplit(url)
        if parts.scheme not in WEBHOOK_SCHEMES:
            raise InvalidArgument(
                f"Webhook.Url {url[:100]!r} must be an http or https URL (scheme {parts.scheme!r} is not supported)"
            )
        if not parts.hostname:
            raise InvalidArgument(f"Webhook.Url {url[:100]!r} names no host")
    if spec.webhook_secret is not None:
        if spec.webhook_url is None:
            raise InvalidArgument("Webhook.Secret needs a Webhook.Url")
        if not 1 <= len(spec.webhook_secret) <= MAX_SECRET_CHARS:
            raise InvalidArgument(f"Webhook.Secret is 1-{MAX_SECRET_CHARS} characters")


def put_rule(
    session: Session, model_name: str, rule_name: str, spec: RuleSpec, actor: str, now: datetime
) -> AlertRuleRow:
    """Create or replace the rule ``rule_name`` of a model; NOT_FOUND for an unknown model, fleet
    or version, INVALID_ARGUMENT for a bad name or rule (:func:`check_spec`)."""
    validate_name(rule_name, "alert rule name")
    check_spec(spec)
    model = registry.get_model(session, model_name)
    fleet_id = get_fleet(session, spec.fleet).id if spec.fleet is not None else None
    if spec.version is not None:
        registry.get_version(session, model_name, spec.version)
    row = session.scalar(
        select(AlertRuleRow).where(AlertRuleRow.model_id == model.id, AlertRuleRow.name == rule_name)
    )
    if row is None:
        row = AlertRuleRow(model_id=model.id, name=rule_name, created_at=now)
        session.add(row)
    row.fleet_id = fleet_id
    row.model_version = spec.version
    row.max_psi, row.max_ks, row.max_js = spec.max_psi, spec.max_ks, spec.max_js
    row.webhook_url, row.webhook_secret = spec.webhook_url, spec.webhook_secret
    row.updated_at, row.updated_by = now, actor
    session.flush()
    return row


def get_rule(session: Session, model_name: str, rule_name: str) -> AlertRuleRow:
    """One rule of a model; NOT_FOUND for an unknown model or rule."""
    model = registry.get_model(session, model_name)
    row = session.scalar(
        select(AlertRuleRow).where(AlertRuleRow.model_id == model.id, AlertRuleRow.name == rule_name)
    )
    if row is None:
        raise NotFound(f"model {model_name!r} has no alert rule {rule_name!r}")
    return row


def list_rules(session: Session, model_name: str) -> list[AlertRuleRow]:
    """A model's rules by name."""
    model = registry.get_model(session, model_name)
    return list(
        session.scalars(
            select(AlertRuleRow).where(AlertRuleRow.model_id == model.id).order_by(AlertRuleRow.name)
        )
    )


def delete_rule(session: Session, model_name: str, rule_name: str, now: datetime) -> None:
    """Delete a rule; its open events clear (with their ``alert.cleared`` webhooks)."""
    row = get_rule(session, model_name, rule_name)
    for event in session.scalars(
        select(AlertEventRow).where(AlertEventRow.rule_id == row.id, AlertEventRow.cleared_at.is_(None))
    ):
        _clear(session, row, event, None, now)
    session.delete(row)


def fleet_name_of(session: Session, row: AlertRuleRow) -> str | None:
    """The name of the rule's fleet, or None for every fleet."""
    return None if row.fleet_id is None else session.get_one(Fleet, row.fleet_id).name


def list_events(
    session: Session,
    model_name: str,
    *,
    rule: str | None,
    fleet: str | None,
    open_only: bool,
    limit: int,
    next_token: str | None,
) -> Page[AlertEventRow]:
    """A model's alert events, newest first."""
    registry.get_model(session, model_name)
    stmt = select(AlertEventRow).where(AlertEventRow.model_name == model_name)
    if rule is not None:
        stmt = stmt.where(AlertEventRow.rule_name == rule)
    if fleet is not None:
        stmt = stmt.where(AlertEventRow.fleet_name == fleet)
    if open_only:
        stmt = stmt.where(AlertEventRow.cleared_at.is_(None))
    stmt = stmt.order_by(AlertEventRow.opened_at.desc(), AlertEventRow.id.desc())
    return paginate(session, stmt, limit, next_token)


# ------------------------------------------------------------------------------------ evaluation


@dataclass(frozen=True)
class Change:
    """An event opened or cleared by :func:`evaluate`."""

    kind: str
    event_id: int
    rule: str
    fleet: str
    model_version: str
    feature: str
    score_kind: str
    score: float


def evaluate(db: Database, *, lookback: timedelta) -> list[Change]:
    """Reconcile every rule's open events with the latest scored buckets (of those that started
    within ``lookback``: a series scored no more than that long clears its events); returns what
    changed."""
    with db.session() as session:
        rule_ids = list(session.scalars(select(AlertRuleRow.id).order_by(AlertRuleRow.id)))
    changes: list[Change] = []
    for rule_id in rule_ids:
        with db.session() as session:
            rule = session.get(AlertRuleRow, rule_id, with_for_update=True)
            if rule is not None:
                now = db.now()
                changes.extend(_evaluate_rule(session, rule, now, now - lookback))
    return changes


def _thresholds(rule: AlertRuleRow) -> dict[str, float]:
    values = {PSI: rule.max_psi, KS: rule.max_ks, JS: rule.max_js}
    return {kind: value for kind, value in values.items() if value is not None}


def _evaluate_rule(session: Session, rule: AlertRuleRow, now: datetime, since: datetime) -> list[Change]:
    model = session.get_one(Model, rule.model_id)
    latest = select(
        DriftBucketRow.fleet_id,
        DriftBucketRow.model_version,
        func.max(DriftBucketRow.bucket_start).label("start"),
    ).where(DriftBucketRow.model_name == model.name, DriftBucketRow.bucket_start >= since)
    if rule.fleet_id is not None:
        latest = latest.where(DriftBucketRow.fleet_id == rule.fleet_id)
    if rule.model_version is not None:
        latest = latest.where(DriftBucketRow.model_version == rule.model_version)
    newest = latest.group_by(DriftBucketRow.fleet_id, DriftBucketRow.model_version).subquery()
    thresholds = _thresholds(rule)
    scores = session.execute(
        select(DriftScoreRow, Fleet.name)
        .join(
            newest,
            (DriftScoreRow.fleet_id == newest.c.fleet_id)
            & (DriftScoreRow.model_version == newest.c.model_version)
            & (DriftScoreRow.bucket_start == newest.c.start),
        )
        .join(Fleet, Fleet.id == DriftScoreRow.fleet_id)
        .where(DriftScoreRow.model_name == model.name, DriftScoreRow.kind.in_(list(thresholds)))
    ).all()
    # the latest bucket of a series may have been stored with another bucket length: take one
    above: dict[tuple[str, str, str, str], DriftScoreRow] = {}
    current: dict[tuple[str, str, str, str], DriftScoreRow] = {}
    for score, fleet_name in scores:
        key = (str(fleet_name), score.model_version, score.feature, score.kind)
        current[key] = score
        if score.score > thresholds[score.kind]:
            above[key] = score
    open_events = {
        (e.fleet_name, e.model_version, e.feature, e.kind): e
        for e in session.scalars(
            select(AlertEventRow).where(AlertEventRow.rule_id == rule.id, AlertEventRow.cleared_at.is_(None))
        )
    }
    changes: list[Change] = []
    for key, event in sorted(open_events.items()):
        if key not in above:
            changes.append(_clear(session, rule, event, current.get(key), now))
    for key, score in sorted(above.items()):
        if key not in open_events:
            changes.append(_open(session, rule, model.name, key[0], score, thresholds[score.kind], now))
    return changes


def payload(event: AlertEventRow, kind: str, now: datetime) -> dict[str, Any]:
    """The webhook body of an event (docs/fleet-api.md, "Drift alerts")."""

    def when(value: datetime | None) -> str | None:
        # as the API's answers write times: RFC 3339 UTC, fractions only when there are some
        return None if value is None else value.astimezone(UTC).isoformat().replace("+00:00", "Z")

    return {
        "Type": kind,
        "EventId": event.id,
        "AlertRuleName": event.rule_name,
        "DeviceFleetName": event.fleet_name,
        "ModelName": event.model_name,
        "ModelVersion": event.model_version,
        "Feature": event.feature,
        "ScoreKind": event.kind,
        "Score": event.score if kind == OPENED else event.cleared_score,
        "OpenedScore": event.score,
        "Threshold": event.threshold,
        "BucketStart": when(event.bucket_start),
        "BucketEnd": when(event.bucket_end),
        "OpenedAt": when(event.opened_at),
        "ClearedAt": when(event.cleared_at),
        "SentAt": when(now),
    }


def _notify(session: Session, rule: AlertRuleRow, event: AlertEventRow, kind: str, now: datetime) -> None:
    if rule.webhook_url is not None:
        webhooks.enqueue(
            session,
            event_id=event.id,
            url=rule.webhook_url,
            payload=payload(event, kind, now),
            secret=rule.webhook_secret,
            now=now,
        )


def _open(
    session: Session,
    rule: AlertRuleRow,
    model_name: str,
    fleet_name: str,
    score: DriftScoreRow,
    threshold: float,
    now: datetime,
) -> Change:
    event = AlertEventRow(
        rule_id=rule.id,
        rule_name=rule.name,
        fleet_name=fleet_name,
        model_name=model_name,
        model_version=score.model_version,
        feature=score.feature,
        kind=score.kind,
        score=score.score,
        threshold=threshold,
        bucket_start=score.bucket_start,
        bucket_end=score.bucket_end,
        opened_at=now,
    )
    session.add(event)
    session.flush()
    log.warning(
        "drift alert %s opened: fleet %s model %s version %s %s %s = %.4f above %.4f (bucket %s)",
        rule.name,
        fleet_name,
        model_name,
        score.model_version,
        score.feature,
        score.kind,
        score.score,
        threshold,
        score.bucket_start.isoformat(),
    )
    _notify(session, rule, event, OPENED, now)
    return Change(
        OPENED, event.id, rule.name, fleet_name, score.model_version, score.feature, score.kind, score.score
    )


def _clear(
    session: Session, rule: AlertRuleRow, event: AlertEventRow, score: DriftScoreRow | None, now: datetime
) -> Change:
    event.cleared_at = now
    event.cleared_score = None if score is None else score.score
    session.flush()
    log.info(
        "drift alert %s cleared: fleet %s model %s version %s %s %s = %s (threshold %.4f)",
        rule.name,
        event.fleet_name,
        event.model_name,
        event.model_version,
        event.feature,
        event.kind,
        "not scored" if score is None else f"{score.score:.4f}",
        event.threshold,
    )
    _notify(session, rule, event, CLEARED, now)
    return Change(
        CLEARED,
        event.id,
        rule.name,
        event.fleet_name,
        event.model_version,
        event.feature,
        event.kind,
        event.score if score is None else score.score,
    )
