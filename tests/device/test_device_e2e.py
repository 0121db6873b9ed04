"""End to end on one machine with real processes: the server, three device daemons, their agents.

Covers: register, enrol (CLI), heartbeats and the fleet report, a staged rollout (a percentage
stage, then the rest), a package that fails its smoke test rolling back while the old version keeps
serving two applications (one through the handle map, one calling the agent's own handle the way
an unmodified Edge Manager application does), every agent's handles matching the map, a device rebooted (SIGKILL) mid-deployment, devices offline while the
server is down and reconnecting, a device reading another device's deployments (refused), a
tampered package upload (refused) and bad API input (a 4xx with an error code).
"""

from __future__ import annotations

import http.client
import json
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from device_testkit import Hammer, null_package
from support import REPO, short_socket_dir

pytestmark = pytest.mark.e2e

pytest.importorskip("fastapi", reason="the end-to-end test needs the server extra")

FLEET = "plant"
DEVICES = ("cam-a", "cam-b", "cam-c")


def wait_for(
    condition: Callable[[], Any], what: str, timeout: float = 90.0, show: Callable[[], Any] | None = None
) -> Any:
    """Wait until ``condition()`` is truthy (checked every 50 ms) and return it.

    On a timeout the message carries ``show()`` (what the test was looking at), if given.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f"; last seen: {show()!r}" if show is not None else ""
            raise AssertionError(f"timed out waiting for {what}{seen}")
        time.sleep(0.05)


def edgefleet(*args: str, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet", *args], stdout=out, stderr=subprocess.STDOUT, cwd=REPO
        )


@dataclass
class Server:
    """``edgefleet server`` in a process. Its first start binds free ports (port 0) and reads them
    back from ``--port-file``; a restart asks for the same ports again, as a real server's would be
    (enrolled devices know its URL)."""

    data_dir: Path
    trust: Path
    log: Path
    port: int = 0
    device_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> None:
        port_file = self.data_dir.parent / "server-ports.json"
        port_file.unlink(missing_ok=True)
        self.proc = edgefleet(
            "server",
            "--port",
            str(self.port),
            "--device-port",
            str(self.device_port),
            "--port-file",
            str(port_file),
            "--data-dir",
            str(self.data_dir),
            "--trust",
            str(self.trust),
            "--connected-window",
            "60",
            log=self.log,
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"server exited:\n{self.log.read_text()}")
            return port_file.exists()  # written once both listeners accept

        wait_for(ready, "the server")
        bound = json.loads(port_file.read_text())
        self.port, self.device_port = bound["port"], bound["device_port"]

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(60)


@dataclass
class DeviceDaemon:
    name: str
    config: Path
    state: Path
    socket: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.proc = edgefleet("device", "run", "--config", str(self.config), log=self.log)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def handles(self) -> dict[str, str]:
        path = self.state / "handles.json"
        if not path.exists():
            return {}
        return {h: e["model_version"] for h, e in json.loads(path.read_text())["handles"].items()}

    def handles_consistent(self) -> bool:
        """Whether the agent resolves every handle to the alias the handle map names."""
        from edgefleet.client import AgentClient

        path = self.state / "handles.json"
        mapped = {h: e["alias"] for h, e in json.loads(path.read_text())["handles"].items()}
        with AgentClient(f"unix://{self.socket}", timeout=30) as client:
            return client.handles() == mapped

    def state_json(self) -> dict[str, Any]:
        result: dict[str, Any] = json.loads((self.state / "state.json").read_text())
        return result


@dataclass
class Fleet:
    server: Server
    op: Any
    devices: list[DeviceDaemon]
    packages: dict[str, Path]


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[Fleet]:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    work = tmp_path_factory.mktemp("e2e")
    sockets = short_socket_dir()
    server = Server(work / "server", keys / "trust", work / "server.log")
    devices: list[DeviceDaemon] = []
    op = None
    try:
        server.start()
        token_log = work / "token.log"
        assert (
            edgefleet("admin", "create-token", "ops", "--data-dir", str(server.data_dir), log=token_log).wait(
                60
            )
            == 0
        )
        token = next(w for w in token_log.read_text().split() if w.startswith("eft_"))
        op = FleetClient(ClientConfig(server.url, token, server.data_dir / "tls" / "ca.pem"))
        op.request(
            "POST",
            "/api/v1/fleets",
            json={
                "DeviceFleetName": FLEET,
                "OutputConfig": {"S3OutputLocation": (work / "outputs").as_uri()},
            },
        )
        out = work / "packages"
        packages = {
            "1.0": null_package(keys, out, "1.0"),
            "2.0": null_package(keys, out, "2.0", delay_ms=1500),  # a slow smoke test: time to reboot mid-way
            "3.0": null_package(keys, out, "3.0", fail=True),
        }
        for version, package in packages.items():
            op.upload_package(package)
            op.set_approval("det", version, "Approved")
        registered = op.register_devices(FLEET, [{"DeviceName": n} for n in DEVICES])
        enrolments = []
        for entry in registered:
            name = entry["DeviceName"]
            state = work / name
            device = DeviceDaemon(
                name, work / f"{name}.toml", state, sockets / f"{name}.sock", work / f"{name}.log"
            )
            device.config.write_text(
                f'[daemon]\ntrust_dir = "{keys / "trust"}"\nstate_dir = "{state}"\n'
                f'[agent]\nspawn = true\naddress = "unix://{device.socket}"\n'
                "[timing]\nheartbeat_interval_seconds = 0.3\npoll_interval_seconds = 0.3\n"
                "health_interval_seconds = 0.3\nrequest_timeout_seconds = 10\n"
                "[retry]\nmax_attempts = 2\ninitial_seconds = 0.2\n"
            )
            devices.append(device)
            enrolments.append(
                edgefleet(
                    "device", "enroll", "--server", server.url, "--token", entry["EnrolmentToken"],
                    "--config", str(device.config), log=device.log,
                )
            )  # fmt: skip
        for device, proc in zip(devices, enrolments, strict=True):
            assert proc.wait(60) == 0, device.log.read_text()
            assert (device.state / "identity" / "device.key").stat().st_mode & 0o777 == 0o600
            device.start()
        yield Fleet(server, op, devices, packages)
    finally:
        for device in devices:
            device.stop()
        if op is not None:
            op.close()
        server.stop()
        shutil.rmtree(sockets, ignore_errors=True)


def stage_status(op: Any, plan: str, stage: str) -> str:
    described = op.describe_plan(plan)
    (found,) = [s for s in described["Stages"] if s["StageName"] == stage]
    return str(found["DeploymentStatus"]["StageStatus"])


def plan_body(name: str, version: str, stages: list[tuple[str, int]]) -> dict[str, Any]:
    return {
        "EdgeDeploymentPlanName": name,
        "DeviceFleetName": FLEET,
        "ModelConfigs": [{"ModelHandle": "detector", "ModelName": "det", "ModelVersion": version}],
        "Stages": [
            {"StageName": s, "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": p}}
            for s, p in stages
        ],
    }


def roll_out(fleet: Fleet, plan: str, stage: str, until: tuple[str, ...] = ("DEPLOYED",)) -> str:
    fleet.op.start_stage(plan, stage)
    return str(
        wait_for(
            lambda: (s := stage_status(fleet.op, plan, stage)) in (*until, "FAILED", "DEPLOYED") and s,
            f"stage {plan}.{stage}",
        )
    )


def test_a_fleet_end_to_end(fleet: Fleet) -> None:
    op, devices = fleet.op, fleet.devices

    # heartbeats reach the server: the fleet report counts three connected devices
    def connected() -> bool:
        report = op.fleet_report(FLEET, regenerate=True)
        return bool(report["DeviceStats"] == {"ConnectedDeviceCount": 3, "RegisteredDeviceCount": 3})

    wait_for(connected, "three connected devices")
    described = op.describe_device(devices[0].name)
    assert described["Platform"]["Os"] == "linux"
    assert {m["MetricName"] for m in described["AgentMetrics"]} >= {
        "cpu_percent",
        "memory_used_bytes",
        "uptime_seconds",
    }

    # a staged rollout: one device first, then the rest
    op.create_plan(plan_body("rollout", "1.0", [("canary", 33), ("rest", 100)]))
    assert roll_out(fleet, "rollout", "canary") == "DEPLOYED"
    canary = [d["DeviceName"] for d in op.stage_devices("rollout", "canary")]
    assert len(canary) == 1
    assert roll_out(fleet, "rollout", "rest") == "DEPLOYED"
    wait_for(lambda: all(d.handles() == {"detector": "1.0"} for d in devices), "1.0 on every device")
    wait_for(
        lambda: all(
            [(m["ModelName"], m["ModelVersion"]) for m in op.describe_device(d.name)["Models"]]
            == [("det", "1.0")]
            for d in devices
        ),
        "heartbeats listing det 1.0",
    )

    assert all(d.handles_consistent() for d in devices)

    # a package that fails its smoke test: every device rolls back, applications never notice
    from edgefleet.client import AgentClient
    from edgefleet.client.handles import HandleClient

    first = devices[0]
    x = np.ones((1, 4), dtype=np.float32)
    with (
        HandleClient(f"unix://{first.socket}", first.state / "handles.json") as app,
        AgentClient(f"unix://{first.socket}") as vendor_app,
    ):
        with (
            Hammer(lambda: app.predict("detector", {"x": x})) as hammer,
            Hammer(lambda: vendor_app.predict("detector", {"x": x})) as vendor_hammer,
        ):
            op.create_plan(plan_body("broken", "3.0", [("all", 100)]))
            assert roll_out(fleet, "broken", "all", until=("FAILED",)) == "FAILED"

            # Every device that started rolls back; one that the failed stage stopped before it
            # fetched the plan (timing decides whether there is one) never touches its model.
            def settled() -> list[dict[str, Any]]:
                rows = list(op.stage_devices("broken", "all"))
                done = all(
                    d["DeviceResult"] == "FAILED_ROLLED_BACK"
                    or (d["DeviceDeploymentStatus"] == "STOPPED" and d["DeviceResult"] is None)
                    for d in rows
                )
                return rows if done and len(rows) == len(devices) else []

            rows = wait_for(
                settled, "every device's result", show=lambda: list(op.stage_devices("broken", "all"))
            )
            assert any(d["DeviceResult"] == "FAILED_ROLLED_BACK" for d in rows)
        assert hammer.errors == [] and hammer.ok > 0
        assert vendor_hammer.errors == [] and vendor_hammer.ok > 0
    assert all(d.handles() == {"detector": "1.0"} for d in devices)
    assert all(d.handles_consistent() for d in devices)

    # a device rebooted mid-deployment (SIGKILL while smoke-testing 2.0) resumes and finishes
    victim = devices[2]
    op.create_plan(plan_body("upgrade", "2.0", [("all", 100)]))
    op.start_stage("upgrade", "all")

    def smoke_testing() -> bool:
        journal = victim.state_json().get("journal")
        return bool(journal) and any(
            s["kind"] == "SMOKE" and s["status"] == "STARTED" for s in journal["steps"]
        )

    wait_for(smoke_testing, "the victim's smoke test")
    victim.kill()
    victim.start()
    assert wait_for(lambda: stage_status(op, "upgrade", "all") in ("DEPLOYED", "FAILED") and True, "upgrade")
    assert stage_status(op, "upgrade", "all") == "DEPLOYED"
    assert all(d.handles() == {"detector": "2.0"} for d in devices)
    assert all(d.handles_consistent() for d in devices)
    assert victim.state_json()["interrupted"] == {}

    # the server goes away: devices queue heartbeats; when it is back they are sent
    fleet.server.stop()
    outbox = first.state / "outbox.json"
    wait_for(
        lambda: outbox.exists() and len(json.loads(outbox.read_text())["heartbeats"]) >= 2,
        "queued heartbeats",
    )
    assert first.handles() == {"detector": "2.0"}  # inference is unaffected
    fleet.server.start()
    wait_for(lambda: len(json.loads(outbox.read_text())["heartbeats"]) == 0, "the queue to drain")
    wait_for(connected, "three connected devices again")


def test_a_device_cannot_read_another_devices_deployments(fleet: Fleet) -> None:
    from edgefleet.device.https import device_context
    from edgefleet.device.identity import load_identity

    identity = load_identity(fleet.devices[0].state)
    connection = http.client.HTTPSConnection(
        "127.0.0.1", fleet.server.device_port, context=device_context(identity), timeout=30
    )
    try:
        body = json.dumps({"DeviceName": fleet.devices[1].name, "DeviceFleetName": FLEET})
        connection.request("POST", "/device/v1/GetDeployments", body, {"Content-Type": "application/json"})
        response = connection.getresponse()
        answer = json.loads(response.read())
    finally:
        connection.close()
    assert response.status == 403
    assert answer["error"]["code"] == "PERMISSION_DENIED"


def test_tampered_uploads_and_bad_input_are_refused(fleet: Fleet, tmp_path: Path) -> None:
    from edgefleet.core.errors import EdgefleetError

    tampered = tmp_path / "det-9.0.tar.gz"
    data = bytearray(fleet.packages["1.0"].read_bytes())
    data[len(data) // 2] ^= 0xFF
    tampered.write_bytes(bytes(data))
    with pytest.raises(EdgefleetError, match=r"INVALID_ARGUMENT|FAILED_PRECONDITION") as refused:
        fleet.op.upload_package(tampered)
    assert refused.value.http_status in (400, 412)
    with pytest.raises(EdgefleetError, match="INVALID_ARGUMENT") as bad:
        fleet.op.request(
            "POST", "/api/v1/fleets", json={"DeviceFleetName": "no_underscores", "OutputConfig": {}}
        )
    assert bad.value.http_status == 400
