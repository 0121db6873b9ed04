"""Health gates on drift and the watch period of DEPLOYED stages, on a real control plane (real TLS,
devices over mutual TLS), on SQLite and on PostgreSQL when reachable.

Devices here are driven call by call (GetDeployments, ReportDeploymentResult, ReportDeploymentHealth,
SendHeartbeat with model metrics and summary windows) so that each test decides what the new
version's figures are; the watch is driven by one round of the server's periodic work
(:func:`edgefleet.server.jobs.run_once`) at a time.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from server_testkit import DeviceClient, build_test_package, enrol, scratch_pg_database

from edgefleet.core import deviceplane as dp
from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.monitoring import ModelSummary
from edgefleet.server.jobs import run_once

FEATURES = 8
MODEL = "digits"


def digits(rows: int, *, shift: float = 0.0, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(8.0 + shift, 3.0, size=(rows, FEATURES)), 0, 16 + shift).astype(np.float32)


def classify(x: np.ndarray) -> np.ndarray:
    weights = np.random.default_rng(42).normal(size=(FEATURES, 4)).astype(np.float32)
    return ((x - 8.0) @ weights).astype(np.float32)


def summary_of(x: np.ndarray) -> ModelSummary:
    summary = ModelSummary.empty()
    summary.update({"x": x}, ["y"], [classify(x)], calls=x.shape[0])
    return summary


@dataclass
class Server:
    running: Any
    op: Any
    workdir: Path

    def fleet(self, fleet: str, *names: str) -> list[DeviceClient]:
        """A fleet with devices ``names``, each enrolled (a mutual-TLS client)."""
        self.op.create_fleet(fleet, f"s3://bucket/{fleet}")
        registered = self.op.register_devices(fleet, [{"DeviceName": n} for n in names])
        return [
            enrol(self.running.endpoints.api_url, r["EnrolmentToken"], self.workdir / r["DeviceName"])
            for r in registered
        ]

    def plan(self, name: str, fleet: str, version: str, **extra: Any) -> dict[str, Any]:
        body = {
            "EdgeDeploymentPlanName": name,
            "DeviceFleetName": fleet,
            "ModelConfigs": [{"ModelHandle": MODEL, "ModelName": MODEL, "ModelVersion": version}],
            "Stages": [
                {
                    "StageName": "canary",
                    "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                }
            ],
            **extra,
        }
        return self.op.create_plan(body)  # type: ignore[no-any-return]

    def stage(self, plan: str, stage: str = "canary") -> dict[str, Any]:
        described = self.op.describe_plan(plan)
        return next(s for s in described["Stages"] if s["StageName"] == stage)  # type: ignore[no-any-return]

    def devices(self, plan: str, stage: str = "canary") -> dict[str, str]:
        return {d["DeviceName"]: d["DeviceDeploymentStatus"] for d in self.op.stage_devices(plan, stage)}

    def periodic_work(self) -> None:
        run_once(self.running.state)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, keys: Path
) -> Iterator[Server]:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    def run(database_url: str | None) -> Iterator[Server]:
        # the periodic work's own tick is an hour: the tests run its rounds themselves
        config = ServerConfig(
            data_dir=tmp_path_factory.mktemp("server"),
            port=0,
            device_port=0,
            trust_dir=keys / "trust",
            timing=Timing(shutdown_grace=1, job_tick=3600),
            database_url=database_url,
        )
        running = start_in_thread(config)
        db = running.state.db
        with db.session() as session:
            token = tokens.create_token(session, "ops-watch", db.now())
        endpoints = running.endpoints
        op = FleetClient(ClientConfig(endpoints.api_url, token, Path(endpoints.ca_cert)))
        out = tmp_path_factory.mktemp("packages")
        for version in ("1", "2"):  # version 2 never gets a baseline
            op.upload_package(build_test_package(keys, out, MODEL, version))
            op.set_approval(MODEL, version, "Approved")
        op.put_baseline(MODEL, "1", summary_of(digits(2000, seed=1)).to_wire())
        try:
            yield Server(running, op, tmp_path_factory.mktemp("devices"))
        finally:
            op.close()
            running.stop()

    if request.param == "sqlite":
        yield from run(None)
    else:
        with scratch_pg_database("edgefleet_watch") as url:
            yield from run(url)


def _ok(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def activate(device: DeviceClient, deployment: str) -> None:
    """Fetch ``deployment`` and report it SUCCEEDED (the device serves the new version from now)."""
    (fetched,) = _ok(device.call("GetDeployments"))["Deployments"]
    assert (fetched["DeploymentName"], fetched["Action"]) == (deployment, "DEPLOY")
    result = {"DeploymentName": deployment, "DeploymentStatus": "SUCCEEDED"}
    _ok(device.call("ReportDeploymentResult", {"DeploymentResult": result}))


def report_health(
    device: DeviceClient, deployment: str, inferences: int = 100, errors: int = 0
) -> dict[str, Any]:
    body = {"DeploymentName": deployment, "Inferences": inferences, "Errors": errors, "P99LatencyMs": 5.0}
    return _ok(device.call("ReportDeploymentHealth", body))


def send_windows(device: DeviceClient, *, shift: float, seed: int, start: datetime | None = None) -> None:
    """Three summary windows of the new version, by default starting now (after the device activated it)."""
    start = start or datetime.now(UTC) + timedelta(seconds=1)
    windows = []
    for i in range(3):
        summary = summary_of(digits(200, shift=shift, seed=seed + i))
        begin = start + timedelta(minutes=i)
        windows.append(
            dp.SummaryWindow(
                MODEL, "1", begin, begin + timedelta(minutes=1), summary.calls, summary.to_wire()
            )
        )
    beat = dp.Heartbeat(agent_version="1.0", taken_at=start, summaries=tuple(windows))
    _ok(device.call("SendHeartbeat", beat.to_wire()))


def send_metrics(device: DeviceClient, requests: int, errors: int, p99: float = 5.0) -> None:
    """A heartbeat whose model metrics for the new version say ``errors`` of ``requests`` failed."""
    now = datetime.now(UTC)
    metrics = (
        dp.EdgeMetric(MODEL, dp.MODEL_REQUESTS, float(requests), now),
        dp.EdgeMetric(MODEL, dp.MODEL_ERRORS, float(errors), now),
        dp.EdgeMetric(MODEL, dp.MODEL_LATENCY_P99_MS, p99, now),
    )
    report = dp.ModelReport(MODEL, "1", MODEL, now, None, metrics)
    _ok(
        device.call(
            "SendHeartbeat", dp.Heartbeat(agent_version="1.0", taken_at=now, models=(report,)).to_wire()
        )
    )


def roll_back(device: DeviceClient, deployment: str) -> None:
    """The device is asked to roll back ``deployment``, does, and reports it."""
    (asked,) = _ok(device.call("GetDeployments"))["Deployments"]
    assert (asked["DeploymentName"], asked["Action"]) == (deployment, "ROLLBACK")
    assert {d["State"] for d in asked["Definitions"]} == {"UNDEPLOY"}
    result = {"DeploymentName": deployment, "DeploymentStatus": "FAILED_ROLLED_BACK"}
    _ok(device.call("ReportDeploymentResult", {"DeploymentResult": result}))
    assert _ok(device.call("GetDeployments"))["Deployments"] == []


DRIFT_GATE = {"MaxDriftScore": 0.25, "MinInferences": 100, "ObservationSeconds": 0}


def test_a_health_gate_on_drift_rolls_a_stage_back(server: Server) -> None:
    devices = server.fleet("drift-bad", "bad-a", "bad-b")
    try:
        plan = server.plan("drift-bad", "drift-bad", "1", HealthGate=DRIFT_GATE)
        assert plan["HealthGate"]["MaxDriftScore"] == 0.25
        server.op.start_stage("drift-bad", "canary")
        for index, device in enumerate(devices):
            activate(device, "drift-bad.canary")
            # the devices' inputs have shifted since the baseline was taken
            send_windows(device, shift=4.0, seed=10 * index)
        # the devices pass their own figures; the stage's merged drift fails it
        for device in devices:
            report_health(device, "drift-bad.canary")
        stage = server.stage("drift-bad")
        status = stage["DeploymentStatus"]
        assert status["StageStatus"] == "FAILED"
        message = status["EdgeDeploymentStatusMessage"]
        assert "health gate breached: drift score (worst PSI)" in message and "> 0.25" in message
        assert "model 'digits' version '1'" in message and "on 2 device(s)" in message
        assert message.endswith("rolling the stage back")
        assert float(message.split("(worst PSI) ")[1].split(" ")[0]) > 0.25
        assert server.devices("drift-bad") == {"bad-a": "STOPPING", "bad-b": "STOPPING"}
        for device in devices:
            roll_back(device, "drift-bad.canary")
        assert server.devices("drift-bad") == {"bad-a": "STOPPED", "bad-b": "STOPPED"}
    finally:
        for device in devices:
            device.close()


def test_a_drift_breach_under_do_nothing_fails_the_stage_and_leaves_its_devices(server: Server) -> None:
    (device,) = server.fleet("drift-keep", "keep-a")
    try:
        stages = [
            {
                "StageName": "canary",
                "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                "DeploymentConfig": {"FailureHandlingPolicy": "DO_NOTHING"},
            }
        ]
        server.plan("drift-keep", "drift-keep", "1", HealthGate=DRIFT_GATE, Stages=stages)
        server.op.start_stage("drift-keep", "canary")
        activate(device, "drift-keep.canary")
        send_windows(device, shift=4.0, seed=50)
        report_health(device, "drift-keep.canary")
        status = server.stage("drift-keep")["DeploymentStatus"]
        assert status["StageStatus"] == "FAILED"
        assert "drift score (worst PSI)" in status["EdgeDeploymentStatusMessage"]
        assert "rolling the stage back" not in status["EdgeDeploymentStatusMessage"]
        assert server.devices("drift-keep") == {"keep-a": "DEPLOYED"}
        assert _ok(device.call("GetDeployments"))["Deployments"] == []
    finally:
        device.close()


def test_a_health_gate_on_drift_deploys_a_stage_without_drift(server: Server) -> None:
    devices = server.fleet("drift-ok", "ok-a", "ok-b")
    try:
        server.plan("drift-ok", "drift-ok", "1", HealthGate=DRIFT_GATE)
        server.op.start_stage("drift-ok", "canary")
        for index, device in enumerate(devices):
            # windows from before the activation (another deployment's traffic) do not count
            send_windows(device, shift=4.0, seed=70 + index, start=datetime.now(UTC) - timedelta(hours=1))
            activate(device, "drift-ok.canary")
            report_health(device, "drift-ok.canary")
        # every device passed, but no summary window came yet: too few calls to judge drift
        status = server.stage("drift-ok")["DeploymentStatus"]
        assert status["StageStatus"] == "INPROGRESS"
        assert "health gate waiting" in status["EdgeDeploymentStatusMessage"]
        assert "drift needs 100 calls, has 0" in status["EdgeDeploymentStatusMessage"]
        for index, device in enumerate(devices):
            send_windows(device, shift=0.0, seed=100 + 10 * index)  # the baseline's distribution
        status = server.stage("drift-ok")["DeploymentStatus"]  # Describe refreshes the stage
        assert status["StageStatus"] == "DEPLOYED", status
        assert server.devices("drift-ok") == {"ok-a": "DEPLOYED", "ok-b": "DEPLOYED"}
    finally:
        for device in devices:
            device.close()


def test_a_drift_limit_needs_a_baseline_when_the_stage_starts(server: Server) -> None:
    (device,) = server.fleet("drift-nobase", "nobase-a")
    try:
        server.plan("drift-nobase", "drift-nobase", "2", HealthGate=DRIFT_GATE)
        with pytest.raises(FailedPrecondition, match="model 'digits' version '2' has no baseline"):
            server.op.start_stage("drift-nobase", "canary")
        assert server.stage("drift-nobase")["DeploymentStatus"]["StageStatus"] == "READYTODEPLOY"
        assert server.devices("drift-nobase") == {}
        assert _ok(device.call("GetDeployments"))["Deployments"] == []
    finally:
        device.close()


ERROR_GATE = {"MaxErrorRate": 0.1, "MinInferences": 10, "ObservationSeconds": 0}


def _deployed_and_watched(server: Server, name: str, devices: list[DeviceClient], **extra: Any) -> None:
    plan = server.plan(name, name, "1", HealthGate=ERROR_GATE, WatchSeconds=3600, **extra)
    assert plan["WatchSeconds"] == 3600
    server.op.start_stage(name, "canary")
    for device in devices:
        activate(device, f"{name}.canary")
        assert report_health(device, f"{name}.canary")["Verdict"] == "PASS"
    stage = server.stage(name)
    assert stage["DeploymentStatus"]["StageStatus"] == "DEPLOYED"
    watch = stage["Watch"]
    assert watch["LastCheckTime"] is None and watch["BreachReason"] is None
    until = datetime.fromisoformat(watch["WatchUntil"].replace("Z", "+00:00"))
    assert timedelta(minutes=59) < until - datetime.now(UTC) <= timedelta(hours=1)


def test_the_watch_period_rolls_a_deployed_stage_back_on_an_error_rate_breach(server: Server) -> None:
    devices = server.fleet("watch-rb", "rb-a", "rb-b")
    try:
        _deployed_and_watched(server, "watch-rb", devices)
        for device in devices:
            send_metrics(device, requests=500, errors=5)  # 1 %: within the limit
        server.periodic_work()
        stage = server.stage("watch-rb")
        assert stage["DeploymentStatus"]["StageStatus"] == "DEPLOYED"
        assert stage["Watch"]["LastCheckTime"] is not None and stage["Watch"]["BreachReason"] is None
        assert stage["Events"] == []

        send_metrics(devices[1], requests=500, errors=200)  # 205 of 1000 requests failed over the stage
        server.periodic_work()
        stage = server.stage("watch-rb")
        status = stage["DeploymentStatus"]
        assert status["StageStatus"] == "FAILED"
        reason = stage["Watch"]["BreachReason"]
        assert reason.startswith("watch period breached: error rate 20.50% > 10.00%")
        assert "205 of 1000 requests on 2 device(s)" in reason
        assert status["EdgeDeploymentStatusMessage"] == reason + "; rolling the stage back"
        assert [(e["Kind"], e["Message"]) for e in stage["Events"]] == [("WATCH_ROLLBACK", reason)]
        assert server.devices("watch-rb") == {"rb-a": "STOPPING", "rb-b": "STOPPING"}
        for device in devices:
            roll_back(device, "watch-rb.canary")
        assert server.devices("watch-rb") == {"rb-a": "STOPPED", "rb-b": "STOPPED"}
        server.periodic_work()  # a FAILED stage is not watched any more
        assert len(server.stage("watch-rb")["Events"]) == 1
    finally:
        for device in devices:
            device.close()


def test_the_watch_period_rolls_a_stage_back_when_its_inputs_drift_after_deployed(server: Server) -> None:
    (device,) = server.fleet("watch-drift", "wd-a")
    try:
        server.plan("watch-drift", "watch-drift", "1", HealthGate=DRIFT_GATE, WatchSeconds=3600)
        server.op.start_stage("watch-drift", "canary")
        activate(device, "watch-drift.canary")
        send_windows(device, shift=0.0, seed=300)
        report_health(device, "watch-drift.canary")
        assert server.stage("watch-drift")["DeploymentStatus"]["StageStatus"] == "DEPLOYED"
        server.periodic_work()
        assert server.stage("watch-drift")["Watch"]["BreachReason"] is None
        for seed in (310, 320, 330):  # the inputs shift after the stage was DEPLOYED
            send_windows(device, shift=6.0, seed=seed, start=datetime.now(UTC) + timedelta(minutes=seed))
        server.periodic_work()
        stage = server.stage("watch-drift")
        assert stage["DeploymentStatus"]["StageStatus"] == "FAILED"
        reason = stage["Watch"]["BreachReason"]
        assert reason.startswith("watch period breached: drift score (worst PSI)") and "> 0.25" in reason
        assert [e["Kind"] for e in stage["Events"]] == ["WATCH_ROLLBACK"]
        roll_back(device, "watch-drift.canary")
        assert server.devices("watch-drift") == {"wd-a": "STOPPED"}
    finally:
        device.close()


def test_an_alert_only_watch_records_the_breach_and_changes_nothing(
    server: Server, caplog: pytest.LogCaptureFixture
) -> None:
    devices = server.fleet("watch-alert", "alert-a")
    try:
        body = {
            "Stages": [
                {
                    "StageName": s,
                    "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                }
                for s in ("canary", "rest")
            ]
        }
        _deployed_and_watched(server, "watch-alert", devices, WatchPolicy="ALERT_ONLY", **body)
        assert server.op.describe_plan("watch-alert")["WatchPolicy"] == "ALERT_ONLY"
        # the next stage waits for the watch period of the one before it
        with pytest.raises(FailedPrecondition, match="stage 'canary' is in its watch period until"):
            server.op.start_stage("watch-alert", "rest")
        send_metrics(devices[0], requests=100, errors=60)
        with caplog.at_level(logging.WARNING, logger="edgefleet.server.deployments.watch"):
            server.periodic_work()
            server.periodic_work()  # a lasting breach is one alert, not one per check
        stage = server.stage("watch-alert")
        assert stage["DeploymentStatus"]["StageStatus"] == "DEPLOYED"
        reason = stage["Watch"]["BreachReason"]
        assert reason.startswith("watch period breached: error rate 60.00% > 10.00%")
        assert [(e["Kind"], e["Message"]) for e in stage["Events"]] == [("WATCH_ALERT", reason)]
        warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
        assert len(warnings) == 1 and "alert only" in warnings[0].getMessage()
        assert server.devices("watch-alert") == {"alert-a": "DEPLOYED"}
        assert _ok(devices[0].call("GetDeployments"))["Deployments"] == []
        # a clean check ends the breach; a new one is a new alert
        send_metrics(devices[0], requests=1000, errors=0)
        server.periodic_work()
        assert server.stage("watch-alert")["Watch"]["BreachReason"] is None
        send_metrics(devices[0], requests=1000, errors=500)
        server.periodic_work()
        kinds = [e["Kind"] for e in server.stage("watch-alert")["Events"]]
        assert kinds == ["WATCH_ALERT", "WATCH_ALERT"]
    finally:
        for device in devices:
            device.close()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"WatchSeconds": -1, "HealthGate": ERROR_GATE}, "WatchSeconds must not be negative (got -1)"),
        (
            {"WatchSeconds": 1e300, "HealthGate": ERROR_GATE},
            "WatchSeconds must be at most 31536000 (365 days)",
        ),
        (
            {"WatchSeconds": 60, "WatchPolicy": "PAGE_ME", "HealthGate": ERROR_GATE},
            "WatchPolicy 'PAGE_ME' is invalid (known: ROLLBACK, ALERT_ONLY)",
        ),
        ({"HealthGate": {"MaxDriftScore": 0}}, "HealthGate.MaxDriftScore must be positive"),
        ({"HealthGate": {"MaxDriftScore": -0.5}}, "HealthGate.MaxDriftScore must be positive"),
        ({"WatchSeconds": 60}, "WatchSeconds needs a HealthGate with at least one limit"),
    ],
    ids=[
        "negative-watch",
        "endless-watch",
        "unknown-policy",
        "zero-drift",
        "negative-drift",
        "watch-without-gate",
    ],
)
def test_bad_watch_and_drift_settings_are_refused(
    server: Server, extra: dict[str, Any], message: str
) -> None:
    if "bad-input" not in {f["DeviceFleetName"] for f in server.op.list_fleets()}:
        server.op.create_fleet("bad-input", "s3://bucket/bad-input")
    with pytest.raises(InvalidArgument, match=message.replace("(", r"\(").replace(")", r"\)")):
        server.plan("bad-input", "bad-input", "1", **extra)
    assert [p["EdgeDeploymentPlanName"] for p in server.op.list_plans(fleet="bad-input")] == []


@pytest.fixture
def run(server: Server, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> Any:
    """``edgefleet ARGS`` in-process against the test server; (exit code, stdout, stderr)."""
    from edgefleet.cli import main as cli_main

    endpoints = server.running.endpoints
    monkeypatch.setenv("EDGEFLEET_CLIENT_CONFIG", str(server.workdir / "client.json"))
    monkeypatch.setenv("EDGEFLEET_SERVER", endpoints.api_url)
    monkeypatch.setenv("EDGEFLEET_CA_CERT", str(endpoints.ca_cert))
    monkeypatch.setenv("EDGEFLEET_TOKEN", server.op.config.token)

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


def test_deploy_create_takes_the_drift_limit_and_the_watch(server: Server, run: Any) -> None:
    server.op.create_fleet("cli-watch", "s3://bucket/cli-watch")
    common = [
        "deploy",
        "create",
        "--fleet",
        "cli-watch",
        "--model",
        f"{MODEL}:1",
        "--stage",
        "canary percent=100",
    ]
    code, out, err = run(
        *common,
        "cli-watch",
        "--max-drift-score",
        "0.3",
        "--watch-seconds",
        "120",
        "--watch-policy",
        "ALERT_ONLY",
        "--json",
    )
    assert code == 0, err
    plan = json.loads(out)
    assert plan["HealthGate"]["MaxDriftScore"] == 0.3
    assert (plan["WatchSeconds"], plan["WatchPolicy"]) == (120.0, "ALERT_ONLY")
    code, out, err = run("deploy", "describe", "cli-watch")
    assert code == 0, err
    assert "Watch policy" in out and "ALERT_ONLY" in out and "WATCH" in out
    code, _, err = run(*common, "cli-watch-bad", "--max-drift-score", "0", "--watch-seconds", "-5")
    assert code == 1 and "HealthGate.MaxDriftScore must be positive" in err
    code, _, err = run(*common, "cli-watch-bad", "--max-error-rate", "0.1", "--watch-seconds", "-5")
    assert code == 1 and "WatchSeconds must not be negative" in err
    assert [p["EdgeDeploymentPlanName"] for p in server.op.list_plans(fleet="cli-watch")] == ["cli-watch"]
