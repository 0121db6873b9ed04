"""Slow tier: an aarch64 twin under qemu-user, where this machine can run one.

Needs ``qemu-aarch64`` on the PATH and an aarch64 Python with edgefleet and onnxruntime installed,
named by ``EDGEFLEET_AARCH64_PYTHON`` (with ``QEMU_LD_PREFIX`` set for a dynamically linked one, and
an ARM ``/proc/cpuinfo`` for ONNX Runtime's wheel: see docs/twins.md); skipped with the reason
otherwise. Where qemu-user is missing, the refusal is tested in CI (test_twin_fleet.py).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from twin_testkit import Plane

from edgefleet.twin import TwinFleet, TwinTiming

PYTHON = os.environ.get("EDGEFLEET_AARCH64_PYTHON")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        shutil.which("qemu-aarch64") is None, reason="qemu-aarch64 not found (apt-get install qemu-user)"
    ),
    pytest.mark.skipif(
        not PYTHON,
        reason="EDGEFLEET_AARCH64_PYTHON does not name an aarch64 Python with edgefleet and onnxruntime",
    ),
]


def test_an_aarch64_twin_runs_under_qemu_and_reports_its_architecture(
    plane: Plane, keys: Path, tmp_path: Path
) -> None:
    assert PYTHON is not None
    with TwinFleet(tmp_path / "arm") as fleet:
        fleet.start(
            1,
            "arm-twins",
            plane.url,
            plane.token,
            ca_cert=plane.ca_cert,
            trust_dir=keys / "trust",
            device_class="linux-aarch64",
            emulator_python=Path(PYTHON),
            timing=TwinTiming(heartbeat_interval_seconds=2, poll_interval_seconds=2),
            ready_timeout=600,
        )
        assert fleet.device_class is not None and fleet.device_class.emulated
        fleet.wait_heartbeats(600)
        assert plane.op.describe_device("arm-twins-01")["Platform"]["Arch"] == "aarch64"
