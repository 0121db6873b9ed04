"""The digital-twin fleet on real processes: a real control plane, twins that enrol for real (key,
CSR, mutual TLS), heartbeat, take a signed ONNX Runtime package through a deployment plan and answer
a Predict on their own agent socket; stopping leaves no process; a device class this host cannot
run is refused before anything is registered."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
from conftest import Plane
from support import REPO

from edgefleet.core.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.twin import PRE_PRODUCTION, STAGE_TAG, TwinFleet, TwinTiming, resolve_device_class

pytestmark = pytest.mark.e2e

FAST = TwinTiming(heartbeat_interval_seconds=1, poll_interval_seconds=1, health_interval_seconds=1)


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A signed ONNX Runtime package of a digits classifier trained here, and held-out digits."""
    pytest.importorskip("sklearn", reason="training the digits model needs scikit-learn")
    pytest.importorskip("skl2onnx", reason="exporting the digits model needs skl2onnx")
    from edgefleet.demo.device import train_digits
    from edgefleet.packager.build import build_package

    work = tmp_path_factory.mktemp("digits")
    model, x_test, y_test, _ = train_digits(work, lambda line: None)
    package = build_package(model, name="digits", version="1.0", key_dir=keys, out_dir=work / "packages")
    return package, x_test, y_test


def test_twins_enrol_heartbeat_deploy_and_predict(
    plane: Plane, keys: Path, digits: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    from edgefleet.client import AgentClient

    package, x_test, y_test = digits
    lines: list[str] = []
    fleet = TwinFleet(tmp_path / "twins", say=lines.append)
    with fleet:
        fleet.start(
            2, "twins", plane.url, plane.token, ca_cert=plane.ca_cert, trust_dir=keys / "trust", timing=FAST
        )
        assert any("twin 2/2" in line and "enrolled" in line for line in lines)
        described = plane.op.describe_fleet("twins")
        assert described["Tags"][STAGE_TAG] == PRE_PRODUCTION
        beats = fleet.wait_heartbeats(120)
        assert set(beats) == {"twins-01", "twins-02"}
        device = plane.op.describe_device("twins-01")
        assert device["Platform"]["Arch"] == fleet.device_class.arch  # type: ignore[union-attr]
        assert device["Tags"]["edgefleet.io/device-class"] == fleet.device_class.name  # type: ignore[union-attr]

        uploaded = plane.op.upload_package(package)
        plane.op.set_approval("digits", uploaded["ModelVersion"], "Approved")
        plane.op.create_plan(
            {
                "EdgeDeploymentPlanName": "twin-digits",
                "DeviceFleetName": "twins",
                "ModelConfigs": [{"ModelHandle": "digits", "ModelName": "digits", "ModelVersion": "1.0"}],
                "Stages": [
                    {
                        "StageName": "all",
                        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                    }
                ],
            }
        )
        plane.op.start_stage("twin-digits", "all")

        def deployed() -> str | None:
            (stage,) = plane.op.describe_plan("twin-digits")["Stages"]
            status = str(stage["DeploymentStatus"]["StageStatus"])
            return status if status in ("DEPLOYED", "FAILED") else None

        assert wait_for(deployed, "the stage to settle") == "DEPLOYED"
        twin = fleet.twins[1]
        with AgentClient(twin.agent_address, timeout=30) as app:
            assert app.handles()["digits"]
            labels = [int(app.predict("digits", {"X": row[None, :]})["label"][0]) for row in x_test[:50]]
        assert np.mean(np.array(labels) == y_test[:50]) > 0.85
        statuses = fleet.status(plane.op)
        assert [s.phase for s in statuses] == ["running", "running"]
        assert all(s.models and "digits" in s.handles for s in statuses), statuses
        assert all(s.last_heartbeat for s in statuses)
        pids = [t.pid for t in fleet.twins]
    codes = fleet.stop()
    assert all(not psutil.pid_exists(p) for p in pids if p is not None)
    assert set(codes.values()) == {0}, codes
