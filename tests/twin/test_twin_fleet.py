"""The digital-twin fleet on real processes: a real control plane, twins that enrol for real (key,
CSR, mutual TLS), heartbeat, take a signed ONNX Runtime package through a deployment plan and answer
a Predict on their own agent socket; stopping leaves no process; a device class this host cannot
run is refused before anything is registered."""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest
import support
from support import REPO
from twin_testkit import Plane

from edgefleet.core.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from edgefleet.twin import PRE_PRODUCTION, STAGE_TAG, TwinFleet, TwinTiming, resolve_device_class

pytestmark = pytest.mark.e2e

FAST = TwinTiming(heartbeat_interval_seconds=1, poll_interval_seconds=1, health_interval_seconds=1)


#: what these tests wait on takes whole processes on a busy machine
def wait_for(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    return support.wait_for(condition, what, timeout)


def _digits_table() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's bundled digits (8x8 images, 1797 rows), read from its data file: importing
    scikit-learn takes several seconds on a busy machine, reading the file a few milliseconds."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("the digits data comes with scikit-learn, which is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    raw = np.loadtxt(path, delimiter=",")
    return (raw[:, :-1] / 16.0).astype(np.float32), raw[:, -1].astype(np.int64)


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> tuple[Path, np.ndarray, np.ndarray]:
    """A signed ONNX Runtime package of a digits classifier trained here (ridge regression on one-hot
    labels, ~95 % accurate), and held-out digits."""
    onnx = pytest.importorskip("onnx", reason="building the digits model needs onnx")
    from onnx import TensorProto, helper, numpy_helper

    from edgefleet.packager.build import build_package

    x, y = _digits_table()
    order = np.random.default_rng(0).permutation(len(y))
    train, test = order[:1200], order[1200:]
    features = np.hstack([x[train], np.ones((len(train), 1), np.float32)])
    solution = np.linalg.solve(features.T @ features + 1e-1 * np.eye(65), features.T @ np.eye(10)[y[train]])
    weight, bias = solution[:64].astype(np.float32), solution[64].astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["X", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["scores"]),
            helper.make_node("ArgMax", ["scores"], ["label"], axis=1, keepdims=0),
        ],
        "digits",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 64])],
        [
            helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["N", 10]),
        ],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model_proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model_proto.ir_version = 8
    onnx.checker.check_model(model_proto)
    work = tmp_path_factory.mktemp("digits")
    model = work / "digits.onnx"
    model.write_bytes(model_proto.SerializeToString())
    package = build_package(model, name="digits", version="1.0", key_dir=keys, out_dir=work / "packages")
    x_test, y_test = x[test], y[test]
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
        assert np.mean(np.array(labels) == y_test[:50]) > 0.85, labels
        statuses = fleet.status(plane.op)
        assert [s.phase for s in statuses] == ["running", "running"]
        assert all(s.models and "digits" in s.handles for s in statuses), statuses
        assert all(s.last_heartbeat for s in statuses)
        pids = [t.pid for t in fleet.twins]
    codes = fleet.stop()
    assert all(not psutil.pid_exists(p) for p in pids if p is not None)
    assert set(codes.values()) == {0}, codes

    # again in the same directory: the identities are kept, new heartbeats are waited for, and each
    # daemon serves its installed model under its handle before it hears from the server
    lines.clear()
    with TwinFleet(tmp_path / "twins", say=lines.append) as again:
        again.start(
            2, "twins", plane.url, plane.token, ca_cert=plane.ca_cert, trust_dir=keys / "trust", timing=FAST
        )
        assert sum("enrolled in an earlier run (identity kept)" in line for line in lines) == 2, lines
        assert set(again.wait_heartbeats(120).values()).isdisjoint(beats.values())
        with AgentClient(again.twins[0].agent_address, timeout=30) as app:
            assert int(app.predict("digits", {"X": x_test[:1]})["label"][0]) == labels[0]


def _cli_env(plane: Plane) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(REPO / "src"),
        "EDGEFLEET_SERVER": plane.url,
        "EDGEFLEET_TOKEN": plane.token,
        "EDGEFLEET_CA_CERT": str(plane.ca_cert),
        "EDGEFLEET_CLIENT_CONFIG": "/nonexistent/client.json",
    }


def _edgefleet(*args: str, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "edgefleet", *args], env=env, capture_output=True, text=True, timeout=timeout
    )


def _twin_pids(workdir: Path) -> list[int]:
    return [t.pid for t in TwinFleet.attach(workdir).twins if t.pid is not None]


def test_cli_up_detached_status_down(plane: Plane, keys: Path, tmp_path: Path) -> None:
    env = _cli_env(plane)
    workdir = tmp_path / "w"
    common = ("--workdir", str(workdir))
    up = _edgefleet(
        "twin", "up", "2", "--fleet", "cli-twins", "--trust", str(keys / "trust"), "--heartbeat-seconds", "1",
        "--poll-seconds", "1", "--detach", *common, env=env,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    assert "twin 1/2 cli-twins-01: enrolled" in up.stdout and "twin 2/2 cli-twins-02: heartbeat" in up.stdout
    pids = _twin_pids(workdir)
    controller = TwinFleet.controller(workdir)
    assert controller is not None and len(pids) == 2 and all(psutil.pid_exists(p) for p in pids)

    status = _edgefleet("twin", "status", "--json", *common, env=env)
    assert status.returncode == 0, status.stderr
    assert (
        '"Phase": "running"' in status.stdout
        and str(pids[0]) in status.stdout
        and "cli-twins-02" in status.stdout
    )
    again = _edgefleet(
        "twin",
        "up",
        "1",
        "--fleet",
        "cli-twins",
        "--trust",
        str(keys / "trust"),
        "--detach",
        *common,
        env=env,
    )
    assert again.returncode == 1 and "runs in" in again.stderr and "twin down" in again.stderr

    down = _edgefleet("twin", "down", *common, env=env)
    assert down.returncode == 0, down.stderr
    assert "stopped 2 twins of fleet cli-twins" in down.stdout
    wait_for(lambda: not controller.is_running(), "the controller to exit", 30)
    assert not any(psutil.pid_exists(p) for p in pids)
    assert not (workdir / "twins.json").exists()
    gone = _edgefleet("twin", "status", *common, env=env)
    assert gone.returncode == 1 and "no twin fleet in" in gone.stderr


def test_foreground_up_stops_on_ctrl_c_and_twins_die_with_a_killed_controller(
    plane: Plane, keys: Path, tmp_path: Path
) -> None:
    env = _cli_env(plane)
    for round_, how in enumerate((signal.SIGINT, signal.SIGKILL)):
        workdir = tmp_path / f"w{round_}"
        with (tmp_path / f"up{round_}.log").open("wb") as log:
            proc = subprocess.Popen(
                [sys.executable, "-m", "edgefleet", "twin", "up", "1", "--fleet", "fg-twins", "--trust",
                 str(keys / "trust"), "--heartbeat-seconds", "1", "--workdir", str(workdir), "--prefix", f"fg{round_}"],
                env=env, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_for(
                lambda w=workdir: (w / "twins.json").exists() and TwinFleet.attach(w).phase == "ready",
                "the twins to be up",
            )
            pids = _twin_pids(workdir)
            proc.send_signal(how)
            code = proc.wait(120)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        # SIGINT: the controller stops its twins and exits 0; SIGKILL: each twin gets SIGTERM from the
        # kernel when its parent dies (PR_SET_PDEATHSIG) and stops by itself
        assert code == (0 if how == signal.SIGINT else -signal.SIGKILL), (
            tmp_path / f"up{round_}.log"
        ).read_text()
        wait_for(lambda p=pids: not any(psutil.pid_exists(x) for x in p), "the twins to exit", 60)
        status = (workdir / f"fg{round_}-01" / "status.json").read_text()
        assert '"stopped"' in status


def test_a_device_class_this_host_cannot_run_is_refused_before_anything_is_registered(
    plane: Plane, keys: Path, tmp_path: Path
) -> None:
    with pytest.raises(FailedPrecondition, match="qemu-aarch64 not found: cannot emulate aarch64"):
        resolve_device_class("linux-aarch64", python=sys.executable, which=lambda name: None)
    with pytest.raises(FailedPrecondition, match="qemu-aarch64 found, but no aarch64 Python"):
        resolve_device_class("linux-aarch64", python=sys.executable, which=lambda name: f"/usr/bin/{name}")
    emulated = resolve_device_class(
        "linux-aarch64", python=sys.executable, emulator_python=Path("/opt/arm64/python3"),
        which=lambda name: f"/usr/bin/{name}",
    )  # fmt: skip
    assert emulated.emulated and emulated.python == ("/usr/bin/qemu-aarch64", "/opt/arm64/python3")
    with pytest.raises(InvalidArgument, match="unknown target 'linux-sparc'"):
        resolve_device_class("linux-sparc", python=sys.executable)

    if shutil.which("qemu-aarch64") is None:  # this host: the whole fleet is refused up front
        fleet = TwinFleet(tmp_path / "arm")
        with pytest.raises(FailedPrecondition, match="qemu-aarch64 not found: cannot emulate aarch64"):
            fleet.start(
                2, "arm-twins", plane.url, plane.token, ca_cert=plane.ca_cert, trust_dir=keys / "trust",
                device_class="linux-aarch64",
            )  # fmt: skip
        with pytest.raises(NotFound):
            plane.op.describe_fleet("arm-twins")
        assert not list((tmp_path / "arm").glob("arm-twins-*"))
        cli = _edgefleet(
            "twin", "up", "1", "--fleet", "arm-twins", "--trust", str(keys / "trust"), "--device-class",
            "linux-aarch64", "--workdir", str(tmp_path / "arm-cli"), env=_cli_env(plane),
        )  # fmt: skip
        assert cli.returncode == 1 and "qemu-aarch64 not found: cannot emulate aarch64" in cli.stderr


def test_bad_input_is_refused_with_its_code(plane: Plane, keys: Path, tmp_path: Path) -> None:
    fleet = TwinFleet(tmp_path / "bad")
    args = {"ca_cert": plane.ca_cert, "trust_dir": keys / "trust"}
    with pytest.raises(InvalidArgument, match="1 to 1000 twins, not 0"):
        fleet.start(0, "bad-twins", plane.url, plane.token, **args)
    with pytest.raises(NotFound, match="is not a directory"):
        fleet.start(
            1, "bad-twins", plane.url, plane.token, ca_cert=plane.ca_cert, trust_dir=tmp_path / "nope"
        )
    with pytest.raises(NotFound, match="no twin fleet in"):
        TwinFleet.attach(tmp_path / "empty")
    with pytest.raises(InvalidArgument, match="timing heartbeat_interval_seconds must be positive"):
        TwinTiming(heartbeat_interval_seconds=0)
    # a twin's name taken by a device of another fleet: refused, and that device is left alone
    plane.op.create_fleet("production", (tmp_path / "prod").as_uri())
    plane.op.register_devices("production", [{"DeviceName": "clash-01"}])
    with pytest.raises(
        AlreadyExists, match="device clash-01 is registered in fleet production, not clash-twins"
    ):
        TwinFleet(tmp_path / "clash").start(1, "clash-twins", plane.url, plane.token, prefix="clash", **args)
    assert plane.op.describe_device("clash-01")["DeviceFleetName"] == "production"
    assert not (tmp_path / "clash" / "twins.json").exists()
