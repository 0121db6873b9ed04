"""The watch period of DEPLOYED stages: the health gate's limits keep being checked after a stage
is DEPLOYED, for the plan's ``WatchSeconds``, by the periodic work (:func:`watch_stages`).

Each check judges the stage's deployed devices (:mod:`~edgefleet.server.deployments.evidence`):
error rate and p99 latency from their heartbeats since the stage became DEPLOYED, drift from their
summary windows since each activated the new version. A breach under the plan's ``WatchPolicy``:

- ``ROLLBACK``: the stage's devices are asked to roll back (the per-device transition of
  :attr:`~edgefleet.server.deployments.rollout.StageEvent.WATCH_BREACH`, whatever the stage's
  failure policy: the watch policy chose it) and the stage becomes FAILED with the breach as its
  reason; a ``WATCH_ROLLBACK`` stage event records it.
- ``ALERT_ONLY``: a ``WATCH_ALERT`` stage event is recorded and logged at WARNING when a check
  finds a breach after a clean one (not at every check of a lasting breach); the stage stays DEPLOYED.

Every check locks the stage row, so replicas running the periodic work together never roll a
stage back twice nor record one alert twice.
"""

from __future__ import annotations

import logging
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.server.db.schema import PlanStage
from edgefleet.server.deployments import evidence
from edgefleet.server.deployments.records import EventKind, StageStatus, WatchPolicy
from edgefleet.server.deployments.rollout import StageEvent
from edgefleet.server.deployments.stages import _lock_stage, record_event, set_rows

log = logging.getLogger(__name__)


def watch_stages(session: Session, now: datetime) -> int:
    """Check every DEPLOYED stage in its watch period; returns how many were checked."""
    ids = list(
        session.scalars(
            select(PlanStage.id)
            .where(
                PlanStage.status == StageStatus.DEPLOYED.value,
                PlanStage.watch_until.is_not(None),
                PlanStage.watch_until >= now,
            )
            .order_by(PlanStage.id)
        )
    )
    for stage_id in ids:
        stage = session.get(PlanStage, stage_id)
        assert stage is not None
        check_stage(session, stage, now)
    return len(ids)


def check_stage(session: Session, stage: PlanStage, now: datetime) -> None:
    """One watch check of ``stage`` (locked here); acts on a breach per the plan's watch policy."""
    stage = _lock_stage(session, stage)
    if stage.status != StageStatus.DEPLOYED or stage.watch_until is None or stage.watch_until < now:
        return  # another replica acted first, or the watch is over
    plan = stage.plan
    since = stage.finished_at or stage.started_at or now
    judgement = evidence.heartbeat_figures(session, stage, since) + evidence.drift(session, stage)
    stage.watch_checked_at = now
    if not judgement.breaches:
        stage.watch_breach = None
        return
    reason = "watch period breached: " + "; ".join(judgement.breaches)
    if plan.watch_policy == WatchPolicy.ALERT_ONLY:
        if stage.watch_breach is None:
            record_event(session, stage, EventKind.WATCH_ALERT, reason, now)
            log.warning("plan %s stage %s: %s (alert only)", plan.name, stage.name, reason)
        stage.watch_breach = reason
        return
    set_rows(session, stage, StageEvent.WATCH_BREACH, now)
    stage.status = StageStatus.FAILED.value
    stage.status_message = reason + "; rolling the stage back"
    stage.watch_breach = reason
    stage.finished_at = now
    stage.updated_at = now
    plan.updated_at = now
    record_event(session, stage, EventKind.WATCH_ROLLBACK, reason, now)
    log.warning("plan %s stage %s: %s; rolling the stage back", plan.name, stage.name, reason)
