"""Simulated devices against a real server (TLS on loopback): enrolment, heartbeats, a rollout, a
stage whose smoke tests fail, a stage a health gate rolls back, and the ``edgefleet simulate`` command."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import pytest
from device_testkit import FLEET, LoopbackServer
from support import wait_for

from edgefleet.core.deviceplane import Result

pytest.importorskip("fastapi", reason="simulations need the server extra")


def stage_status(op: Any, plan: str) -> str:
    return str(op.describe_plan(plan)["Stages"][0]["DeploymentStatus"]["StageStatus"])


def start_plan(op: Any, plan: str, version: str, gate: dict[str, float] | None = None) -> None:
    op.create_plan(
        {
            "EdgeDeploymentPlanName": plan,
            "DeviceFleetName": FLEET,
            "ModelConfigs": [{"ModelHandle": "detector", "ModelName": "det", "ModelVersion": version}],
            "Stages": [
                {
                    "StageName": "all",
                    "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                }
            ],
            "HealthGate": gate,
        }
    )
    op.start_stage(plan, "all")


def test_simulated_devices_roll_out_and_roll_back(server: LoopbackServer, tmp_path: Path) -> None:
    from edgefleet.device.sim.simulator import SimulationSettings, Simulator

    running, op = server.running, server.op
    registered = op.register_devices(FLEET, [{"DeviceName": f"sim-{i:02d}"} for i in range(12)])
    simulator = Simulator(
        SimulationSettings(
            server_url=running.endpoints.api_url,
            work_dir=tmp_path,
            heartbeat_interval_seconds=0.2,
            poll_interval_seconds=0.2,
            health_interval_seconds=0.2,
            workers=4,
            inferences_per_heartbeat=5,
            erroring_versions=frozenset({"3.0"}),
        )
    )
    simulator.enrol([(d["DeviceName"], d["EnrolmentToken"]) for d in registered])
    stop = threading.Event()
    runner = threading.Thread(target=simulator.run, args=(None, stop), daemon=True)
    runner.start()
    try:
        wait_for(
            lambda: op.fleet_report(FLEET, regenerate=True)["DeviceStats"]["ConnectedDeviceCount"] == 12,
            "12 connected devices",
        )
        for plan, version in (("sim-good", "1.0"), ("sim-bad", "2.0")):
            start_plan(op, plan, version)
            wait_for(lambda p=plan: stage_status(op, p) in ("DEPLOYED", "FAILED"), f"plan {plan}")  # type: ignore[misc]
        assert stage_status(op, "sim-good") == "DEPLOYED"
        assert stage_status(op, "sim-bad") == "FAILED"
        # the first failure fails the stage (threshold 0): devices that had started roll back, the
        # others never start
        rows = wait_for(
            lambda: (r := list(op.stage_devices("sim-bad", "all")))
            and {d["DeviceDeploymentStatus"] for d in r} <= {"FAILED", "STOPPED"}
            and r,
            "every simulated device to finish or stop",
        )
        assert {d["DeviceResult"] for d in rows} <= {"FAILED_ROLLED_BACK", "FAILED_NO_CHANGE", None}
        assert "FAILED_ROLLED_BACK" in {d["DeviceResult"] for d in rows}

        def active() -> bool:  # simulated inferences count as activity
            report = op.fleet_report(FLEET, regenerate=True)
            return any(
                m["ModelVersion"] == "1.0" and m["ActiveDeviceCount"] == 12 for m in report["ModelStats"]
            )

        wait_for(active, "12 devices actively serving 1.0")

        # 3.0 passes its smoke test but every inference fails: the health gate rolls it back
        gate = {"MaxErrorRate": 0.5, "MinInferences": 5, "ObservationSeconds": 0}
        start_plan(op, "sim-gated", "3.0", gate)
        gated = wait_for(
            lambda: stage_status(op, "sim-gated") == "FAILED"
            and (r := list(op.stage_devices("sim-gated", "all")))
            and {d["DeviceDeploymentStatus"] for d in r} <= {"FAILED", "STOPPED"}
            and r,
            "the health gate to fail the stage",
        )
        assert any(d["Health"].get("ErrorRate", 0) > 0.5 for d in gated)
        assert "FAILED_ROLLED_BACK" in {d["DeviceResult"] for d in gated}
    finally:
        stop.set()
        runner.join(60)
        simulator.close()
    results = simulator.results()
    assert all(r["sim-good.all"] is Result.SUCCEEDED for r in results.values())
    assert {r.get("sim-bad.all") for r in results.values()} <= {
        Result.FAILED_ROLLED_BACK,
        Result.FAILED_NO_CHANGE,
        None,
    }
    assert all(
        [m.name.rsplit("-", 1)[0] for m in d.agent.list()] == ["detector-1-0"] for d in simulator.devices
    )
    assert simulator.stats.errors == 0 and simulator.stats.heartbeats_sent > 0


def test_the_simulate_command(
    server: LoopbackServer, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from edgefleet.cli.main import main

    running, op = server.running, server.op
    registered = op.register_devices(FLEET, [{"DeviceName": f"cli-{i}"} for i in range(3)])
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"Devices": registered}))
    code = main(
        [
            "simulate",
            "--server",
            running.endpoints.api_url,
            "--devices",
            "3",
            "--tokens",
            str(tokens),
            "--duration",
            "1",
            "--heartbeat-interval",
            "0.2",
            "--poll-interval",
            "0.2",
            "--work-dir",
            str(tmp_path / "work"),
        ]
    )
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["heartbeats_sent"] >= 3 and summary["errors"] == 0
    devices = {d["DeviceName"]: d for d in op.list_devices(fleet=FLEET)}
    assert all(devices[f"cli-{i}"]["LatestHeartbeat"] for i in range(3))
