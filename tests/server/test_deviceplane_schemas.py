"""The server's pydantic device-plane schemas agree with the contract in edgefleet.core.deviceplane.

Each pair is walked field by field: the same wire names (the differences that exist are listed
here, so a new one fails), values of every type that one side writes are read back unchanged by
the other, and every default the schema fills in is the default the contract reads.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import BaseModel

from edgefleet.core.deviceplane import (
    IN_PROGRESS,
    Action,
    CaptureReport,
    CaptureUpload,
    Definition,
    Deployment,
    DeploymentResult,
    DesiredState,
    EdgeMetric,
    FailurePolicy,
    HealthGate,
    HealthReport,
    HealthVerdict,
    Heartbeat,
    ModelReport,
    ModelResult,
    PackageRef,
    Registration,
    Result,
    ShadowReport,
    SummaryWindow,
    Verdict,
)
from edgefleet.server.api import schemas as s

AT = datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=UTC)
METRIC = EdgeMetric("ModelMetric", "latency", 1.5, AT)
GATE = HealthGate(max_error_rate=0.05, max_p99_latency_ms=50.0, min_inferences=20, observation_seconds=90.0)
DEFINITION = Definition(
    handle="detector",
    model_name="detector",
    model_version="7",
    package=PackageRef(url="file:///p.tar.gz", sha256="ab" * 32, size=1234),
    state=DesiredState.UNDEPLOY,
)
HEARTBEAT = Heartbeat(
    agent_version="1.2.0",
    taken_at=AT,
    agent_metrics=(METRIC,),
    models=(ModelReport("detector", "7", "detector", AT, AT, (METRIC,)),),
    platform=("linux", "aarch64", "none"),
    capture=CaptureReport(
        backlog_records=3,
        backlog_bytes=4096,
        oldest_age_seconds=1.5,
        dropped=1,
        failed=2,
        uploads=(
            CaptureUpload(
                "p/fleet/detector/2026/05/04/03/" + "a" * 32 + ".jsonl", "detector", "7", 10, 999, AT, AT, 2
            ),
        ),
    ),
    summaries=(SummaryWindow("detector", "7", AT, AT, 42, {"Version": 1, "Inputs": []}),),
    shadows=(
        ShadowReport("detector", "detector", "7", "detector", "8", 9, 8, 7, 1, 1, 0, 1.5, 3.0, 2.0, 4.5),
    ),
)
RESULT = DeploymentResult(
    deployment_name="plan.canary",
    result=Result.FAILED_ROLLED_BACK,
    message="boom",
    started_at=AT,
    finished_at=AT,
    models=(
        ModelResult("detector", "detector", "7", DesiredState.DEPLOY, DesiredState.UNDEPLOY, False, "x", "y"),
    ),
)
REPORT = HealthReport("plan.canary", 100, 3, 12.5)


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields)


def _reads_back(model: type[BaseModel], wire: Mapping[str, Any]) -> None:
    """The schema parses what the contract writes and gives every value back unchanged."""
    parsed = model.model_validate(wire).model_dump(mode="json", include=set(wire))
    assert parsed == wire  # times: the contract writes ISO text with Z, as pydantic's JSON dump does


def _same_defaults(
    model: type[BaseModel], wire: Mapping[str, Any], read: Callable[[dict[str, Any]], dict[str, Any]]
) -> None:
    """For each field the schema may omit, the schema's default is what the contract reads without it
    (``read`` parses with the contract and writes the wire form again)."""
    for name, info in model.model_fields.items():
        if info.is_required() or name not in wire:
            continue
        without = {k: v for k, v in wire.items() if k != name}
        schema_default = model.model_validate(without).model_dump(mode="json")[name]
        assert read(without)[name] == schema_default, f"{model.__name__}.{name}: default drifted"


# ---------------------------------------------------------------------------------- device -> server


def test_heartbeat_request_matches_the_heartbeat() -> None:
    wire = HEARTBEAT.to_wire()
    # the transport adds the device's name and fleet; a result may ride along; the daemon's
    # Timestamp is informational (the server records its own time of receipt)
    assert _fields(s.HeartbeatRequest) == set(wire) - {"Timestamp"} | {
        "DeviceName",
        "DeviceFleetName",
        "DeploymentResult",
    }
    body = {**wire, "DeviceName": "cam-1", "DeviceFleetName": "fleet"}
    del body["Timestamp"]
    body["Models"] = [{k: v for k, v in m.items() if k != "ModelHandle"} for m in body["Models"]]
    _reads_back(s.HeartbeatRequest, body)
    _same_defaults(
        s.DevicePlatform,
        wire["Platform"],
        lambda raw: Heartbeat.from_wire({"AgentVersion": "1", "Platform": raw}).to_wire()["Platform"],
    )


def test_heartbeat_models_and_metrics_match() -> None:
    model = HEARTBEAT.models[0].to_wire()
    # the server keys loaded models by name and version; the handle is the device's business
    assert _fields(s.HeartbeatModel) == set(model) - {"ModelHandle"}
    assert _fields(s.EdgeMetric) == set(METRIC.to_wire())
    _reads_back(s.EdgeMetric, METRIC.to_wire())
    without_handle = {k: v for k, v in model.items() if k != "ModelHandle"}
    _same_defaults(s.HeartbeatModel, without_handle, lambda raw: ModelReport.from_wire(raw).to_wire())


def test_heartbeat_capture_and_summaries_match() -> None:
    capture = HEARTBEAT.capture
    assert capture is not None
    wire = capture.to_wire()
    assert _fields(s.CaptureReportModel) == set(wire)
    assert _fields(s.CaptureUploadModel) == set(capture.uploads[0].to_wire())
    _reads_back(s.CaptureReportModel, wire)
    _same_defaults(s.CaptureReportModel, wire, lambda raw: CaptureReport.from_wire(raw).to_wire())
    upload = capture.uploads[0].to_wire()
    _same_defaults(s.CaptureUploadModel, upload, lambda raw: CaptureUpload.from_wire(raw).to_wire())
    window = HEARTBEAT.summaries[0].to_wire()
    assert _fields(s.SummaryWindowModel) == set(window)
    _reads_back(s.SummaryWindowModel, window)
    _same_defaults(s.SummaryWindowModel, window, lambda raw: SummaryWindow.from_wire(raw).to_wire())
    assert Heartbeat.from_wire(HEARTBEAT.to_wire()) == HEARTBEAT


def test_heartbeat_shadows_match() -> None:
    pair = HEARTBEAT.shadows[0].to_wire()
    assert _fields(s.ShadowReportModel) == set(pair)
    _reads_back(s.ShadowReportModel, pair)
    _same_defaults(s.ShadowReportModel, pair, lambda raw: ShadowReport.from_wire(raw).to_wire())
    assert Heartbeat.from_wire(HEARTBEAT.to_wire()).shadows == HEARTBEAT.shadows


def test_deployment_result_matches() -> None:
    wire = RESULT.to_wire()
    assert _fields(s.DeploymentResultModel) == set(wire)
    assert _fields(s.DeploymentModelResult) == set(RESULT.models[0].to_wire())
    _reads_back(s.DeploymentResultModel, wire)
    _reads_back(
        s.ResultRequest, {"DeviceName": "cam-1", "DeviceFleetName": "fleet", "DeploymentResult": wire}
    )
    described = s.DeploymentResultModel.model_fields["DeploymentStatus"].description
    assert described is not None and described.split(" | ") == [IN_PROGRESS, *Result]


def test_health_request_matches_the_health_report() -> None:
    wire = REPORT.to_wire()
    assert _fields(s.HealthRequest) == set(wire) | {"DeviceName", "DeviceFleetName"}
    body = {**wire, "DeviceName": "cam-1", "DeviceFleetName": "fleet"}
    _reads_back(s.HealthRequest, body)
    parsed = s.HealthRequest.model_validate(body).model_dump(mode="json")
    assert (
        HealthReport(parsed["DeploymentName"], parsed["Inferences"], parsed["Errors"], parsed["P99LatencyMs"])
        == REPORT
    )
    # a daemon without latency figures reports None; the schema reads an omitted one the same way
    assert s.HealthRequest.model_fields["P99LatencyMs"].default is None


# ---------------------------------------------------------------------------------- server -> device


def test_health_gate_schemas_match_the_gate() -> None:
    wire = GATE.to_wire()
    assert _fields(s.HealthGateIn) == _fields(s.HealthGateOut) == set(wire)
    # the operator's defaults are the contract's defaults
    assert s.HealthGateIn().model_dump() == HealthGate().to_wire()
    for name in wire:
        without = {k: v for k, v in wire.items() if k != name}
        assert (
            s.HealthGateIn.model_validate(without).model_dump()[name]
            == HealthGate.from_wire(without).to_wire()[name]
        )
    out = s.HealthGateOut.model_validate(wire).model_dump(mode="json")
    assert HealthGate.from_wire(out) == GATE


@pytest.mark.parametrize("gate", [GATE, None], ids=["gated", "ungated"])
def test_deployment_out_matches_the_deployment(gate: HealthGate | None) -> None:
    deployment = Deployment(
        name="plan.canary",
        definitions=(DEFINITION,),
        failure_policy=FailurePolicy.DO_NOTHING,
        action=Action.ROLLBACK,
        health_gate=gate,
    )
    wire = deployment.to_wire()
    definition = wire["Definitions"][0]
    assert _fields(s.DeploymentOut) == set(wire)
    # the server also gives the package's path on the device endpoint (supports HTTP Range)
    assert _fields(s.DefinitionOut) == set(definition) | {"PackageUrl"}
    assert _fields(s.ChecksumModel) == set(definition["Checksum"])
    served = {**wire, "Definitions": [{**definition, "PackageUrl": "/device/v1/packages/1"}]}
    out = s.DeploymentOut.model_validate(served).model_dump(mode="json")
    parsed = Deployment.from_wire(out)
    # the device downloads from PackageUrl when given
    assert parsed == Deployment(
        name=deployment.name,
        definitions=(
            Definition(
                handle=DEFINITION.handle,
                model_name=DEFINITION.model_name,
                model_version=DEFINITION.model_version,
                package=PackageRef("/device/v1/packages/1", DEFINITION.package.sha256, None, 1234),
                state=DEFINITION.state,
            ),
        ),
        failure_policy=deployment.failure_policy,
        action=deployment.action,
        health_gate=gate,
    )
    assert s.DeploymentOut.model_fields["Action"].description == " | ".join(Action)
    assert s.DeploymentOut.model_fields["Type"].default == wire["Type"]


@pytest.mark.parametrize("verdict", list(Verdict))
@pytest.mark.parametrize("rollback", [False, True])
def test_health_out_matches_the_verdict(verdict: Verdict, rollback: bool) -> None:
    answer = HealthVerdict(verdict, "why", rollback)
    wire = answer.to_wire()
    assert _fields(s.HealthOut) == set(wire)
    assert HealthVerdict.from_wire(s.HealthOut.model_validate(wire).model_dump(mode="json")) == answer
    assert s.HealthOut.model_fields["Verdict"].description == " | ".join(Verdict)


def test_registration_out_matches_the_registration() -> None:
    out = s.RegistrationOut(DeviceRegistration="REGISTERED", CacheTTL="600").model_dump(mode="json")
    assert _fields(s.RegistrationOut) == {"DeviceRegistration", "CacheTTL"}
    assert Registration.from_wire(out) == Registration("REGISTERED", 600.0)
