"""The deployment plans a pipeline run creates: the twin fleet's (one stage, every twin) and each
production fleet's (the ``[rollout]`` stages and health gate), in the operator API's plan spec, so
a rollout behaves exactly as one an operator starts by hand (server/deployments/)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgefleet.core.errors import InvalidArgument
from edgefleet.server.deployments.records import PlanSpec

if TYPE_CHECKING:
    from edgefleet.server.pipelines.config import RolloutConfig


def _request(plan_name: str, fleet: str, model: str, version: str, rollout: RolloutConfig | None) -> Any:
    from pydantic import ValidationError

    from edgefleet.server.api import schemas as s

    body: dict[str, Any] = {
        "EdgeDeploymentPlanName": plan_name,
        "DeviceFleetName": fleet,
        "ModelConfigs": [{"ModelHandle": model, "ModelName": model, "ModelVersion": version}],
        "Stages": [
            {
                "StageName": "all",
                "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
            }
        ],
    }
    if rollout is not None:
        body["Stages"] = list(rollout.stages)
        if rollout.health_gate is not None:
            body["HealthGate"] = rollout.health_gate
        body["WatchSeconds"] = rollout.watch_seconds
        if rollout.watch_policy is not None:
            body["WatchPolicy"] = rollout.watch_policy
        if rollout.device_timeout_seconds is not None:
            body["DeviceTimeoutSeconds"] = rollout.device_timeout_seconds
    try:
        return s.CreatePlanRequest.model_validate(body)
    except ValidationError as exc:
        problems = "; ".join(
            f"rollout.{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()[:5]
        )
        raise InvalidArgument(f"rollout is not a valid deployment plan spec: {problems}") from exc


def plan_spec(
    plan_name: str, fleet: str, model: str, version: str, rollout: RolloutConfig | None
) -> PlanSpec:
    """The plan that deploys ``model`` ``version`` to ``fleet``: the rollout's stages and gate, or
    (``rollout`` None) one stage of every device."""
    from edgefleet.server.api.deployments import _spec

    return _spec(_request(plan_name, fleet, model, version, rollout))


def check_rollout(rollout: RolloutConfig, model: str) -> None:
    """INVALID_ARGUMENT when the rollout's stages or gate would not make a plan."""
    from datetime import UTC, datetime

    from edgefleet.server.deployments.plans import _check_gate, _stage_row

    spec = plan_spec("check", "check", model, "1", rollout)
    for position, stage in enumerate(spec.stages):
        try:
            _stage_row(stage, position, datetime.now(UTC))
        except InvalidArgument as exc:
            raise InvalidArgument(f"rollout.stages: {exc.message}") from exc
    names = [st.name for st in spec.stages]
    if len(set(names)) != len(names):
        raise InvalidArgument("rollout.stages: a StageName is listed twice")
    _check_gate(spec.health_gate)
    if spec.watch_seconds > 0 and not any(
        v is not None for v in (spec.health_gate.max_error_rate, spec.health_gate.max_p99_latency_ms)
    ):
        raise InvalidArgument("rollout.watch_seconds needs rollout.health_gate with a limit to watch")
