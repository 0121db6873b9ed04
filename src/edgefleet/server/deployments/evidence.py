"""The new model versions' figures on a stage's devices, judged against the plan's health gate.

Two kinds of evidence, both read from what devices already send (nothing here writes):

- **drift**: each plan model version's summary windows (heartbeat ``ModelSummaries``, stored by
  :mod:`edgefleet.server.drift`) of the stage's deployed devices, each device's windows only from
  its activation of the new version on (a window that started earlier may hold the smoke test's or
  another version's traffic), merged and scored against the version's baseline with
  :func:`edgefleet.monitoring.compare`. The score is the worst PSI over the version's input and
  output features (see :class:`edgefleet.core.deviceplane.HealthGate`). No verdict before the
  merged windows hold ``MinInferences`` calls.
- **error rate and p99** (the watch period): the deployed devices' latest heartbeat model metrics
  of the new version (``requests``, ``errors``, ``latency_p99_ms``) reported since a moment (the
  stage's DEPLOYED time). The error rate is the stage's errors over its requests (judged from
  ``MinInferences`` requests on), the p99 the worst device's among devices with ``MinInferences``
  requests (percentiles do not merge; the worst one is the conservative reading).

Each breach is a sentence that names the limit and the figure.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import select
from sqlalchemy.orm import Session

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import FailedPrecondition
from edgefleet.monitoring import ModelSummary, compare
from edgefleet.server.db.schema import (
    Baseline,
    DeploymentPlan,
    Device,
    DeviceModel,
    PlanStage,
    StageDevice,
    SummaryWindowRow,
)
from edgefleet.server.deployments.records import plan_gate
from edgefleet.server.deployments.rollout import DeviceStatus
from edgefleet.server.drift import MAX_REPORT_WINDOWS


@dataclass(frozen=True)
class Judgement:
    """What the evidence says: the breaches found, and what is still too thin to judge."""

    #: one sentence per limit exceeded, naming the limit and the figure
    breaches: tuple[str, ...] = ()
    #: why a limit could not be judged yet (too few calls or requests); empty when all were
    waiting: tuple[str, ...] = ()

    def __add__(self, other: Judgement) -> Judgement:
        return Judgement(self.breaches + other.breaches, self.waiting + other.waiting)


def _versions(plan: DeploymentPlan) -> list[tuple[int, str, str]]:
    """(model version id, model name, version) of each of the plan's model configs, once each."""
    seen = {
        c.model_version_id: (c.model_version.model.name, c.model_version.version) for c in plan.model_configs
    }
    return [(version_id, name, version) for version_id, (name, version) in sorted(seen.items())]


def require_baselines(session: Session, plan: DeploymentPlan) -> None:
    """FAILED_PRECONDITION unless every model version of a plan with a drift limit has a baseline."""
    if plan.max_drift_score is None:
        return
    missing = [
        f"{name!r} version {version!r}"
        for version_id, name, version in _versions(plan)
        if session.get(Baseline, version_id) is None
    ]
    if missing:
        raise FailedPrecondition(
            f"plan {plan.name!r} limits drift (MaxDriftScore) but model {', '.join(missing)} has no "
            "baseline to score against: edgefleet baseline create"
        )


def drift(session: Session, stage: PlanStage) -> Judgement:
    """The drift limit judged on the stage's deployed devices since each activated the new version."""
    plan = stage.plan
    limit = plan.max_drift_score
    if limit is None:
        return Judgement()
    min_calls = plan.min_inferences
    judgement = Judgement()
    for version_id, name, version in _versions(plan):
        baseline = session.get(Baseline, version_id)
        if baseline is None:  # checked at stage start; a judgement is never made without one
            judgement += Judgement(waiting=(f"model {name!r} version {version!r} has no baseline",))
            continue
        rows = session.execute(
            select(SummaryWindowRow.device_id, SummaryWindowRow.calls, SummaryWindowRow.summary)
            .join(
                StageDevice,
                (StageDevice.device_id == SummaryWindowRow.device_id) & (StageDevice.stage_id == stage.id),
            )
            .where(
                StageDevice.status == DeviceStatus.DEPLOYED.value,
                StageDevice.activated_at.is_not(None),
                SummaryWindowRow.window_start >= StageDevice.activated_at,
                SummaryWindowRow.model_name == name,
                SummaryWindowRow.model_version == version,
            )
            .order_by(SummaryWindowRow.window_end.desc())
            .limit(MAX_REPORT_WINDOWS)  # the latest windows: a long watch must not read them all
        ).all()
        calls = sum(int(r.calls) for r in rows)
        what = f"model {name!r} version {version!r}"
        if calls < min_calls:
            judgement += Judgement(waiting=(f"{what}: drift needs {min_calls} calls, has {calls}",))
            continue
        merged = ModelSummary.empty()
        for row in rows:
            merged.merge(ModelSummary.from_wire(cast(dict[str, Any], row.summary)))
        report = compare(ModelSummary.from_wire(baseline.summary), merged)
        if report.features and report.max_psi > limit:
            worst = report.features[0]
            judgement += Judgement(
                breaches=(
                    f"drift score (worst PSI) {report.max_psi:.3f} > {limit:g} on {what} "
                    f"({worst.kind} {worst.tensor!r} feature {worst.feature}; {calls} calls on "
                    f"{len({r.device_id for r in rows})} device(s))",
                )
            )
    return judgement


def _metric(metrics: Sequence[Any], name: str) -> float | None:
    """The value of metric ``name`` in a stored heartbeat metric list (None if absent)."""
    for metric in metrics:
        if isinstance(metric, dict) and metric.get("MetricName") == name:
            value = metric.get("Value")
            return float(value) if isinstance(value, int | float) else None
    return None


def heartbeat_figures(session: Session, stage: PlanStage, since: datetime) -> Judgement:
    """The error-rate and p99 limits judged on the deployed devices' heartbeats since ``since``."""
    plan = stage.plan
    gate = plan_gate(plan)
    if gate.max_error_rate is None and gate.max_p99_latency_ms is None:
        return Judgement()
    judgement = Judgement()
    for _, name, version in _versions(plan):
        rows = session.execute(
            select(Device.name, DeviceModel.metrics)
            .join(Device, Device.id == DeviceModel.device_id)
            .join(
                StageDevice,
                (StageDevice.device_id == DeviceModel.device_id) & (StageDevice.stage_id == stage.id),
            )
            .where(
                StageDevice.status == DeviceStatus.DEPLOYED.value,
                DeviceModel.model_name == name,
                DeviceModel.model_version == version,
                DeviceModel.updated_at >= since,
            )
        ).all()
        what = f"model {name!r} version {version!r}"
        requests = errors = 0.0
        worst: tuple[float, str] | None = None  # (p99, device name)
        for device_name, metrics in cast(list[tuple[str, list[Any]]], rows):
            n = _metric(metrics, dp.MODEL_REQUESTS) or 0.0
            requests += n
            errors += _metric(metrics, dp.MODEL_ERRORS) or 0.0
            p99 = _metric(metrics, dp.MODEL_LATENCY_P99_MS)
            if p99 is not None and n >= gate.min_inferences and (worst is None or p99 > worst[0]):
                worst = (p99, device_name)
        if requests < gate.min_inferences:
            judgement += Judgement(
                waiting=(f"{what}: heartbeats report {requests:.0f}/{gate.min_inferences} requests",)
            )
            continue
        rate = errors / requests
        if gate.max_error_rate is not None and rate > gate.max_error_rate:
            judgement += Judgement(
                breaches=(
                    f"error rate {rate:.2%} > {gate.max_error_rate:.2%} on {what} "
                    f"({errors:.0f} of {requests:.0f} requests on {len(rows)} device(s))",
                )
            )
        if gate.max_p99_latency_ms is not None and worst is not None and worst[0] > gate.max_p99_latency_ms:
            judgement += Judgement(
                breaches=(
                    f"p99 latency {worst[0]:g} ms > {gate.max_p99_latency_ms:g} ms on {what} "
                    f"(device {worst[1]!r})",
                )
            )
    return judgement
