"""``--log-format json`` on the real processes: ``edgefleet server`` and ``edgefleet device run``.

A server and a device daemon (with its agent child) run as processes with JSON logs; the device
enrols, heartbeats and takes a deployment. Every line either wrote on stderr must be a JSON object
with the documented fields (docs/device-daemon.md, docs/fleet-api.md): time (RFC 3339 UTC), level,
component, event, logger; the daemon's carry its device and fleet; uvicorn's own records (its
access log included, with --access-log) come out as JSON too.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from device_testkit import null_package
from support import REPO, short_socket_dir

pytestmark = pytest.mark.e2e

pytest.importorskip("fastapi", reason="the server needs the server extra")

RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
FLEET = "logs-fleet"
DEVICE = "logs-cam"


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
    return value


def spawn(*args: str, out: Path, err: Path) -> subprocess.Popen[bytes]:
    with out.open("ab") as stdout, err.open("ab") as stderr:
        return subprocess.Popen(
            [sys.executable, "-m", "edgefleet", *args], stdout=stdout, stderr=stderr, cwd=REPO
        )


def stop(proc: subprocess.Popen[bytes]) -> int:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def json_lines(path: Path, component: str) -> list[dict[str, Any]]:
    """Every line of ``path``, each parsed as JSON and checked for the required fields."""
    entries = []
    for number, line in enumerate(path.read_text().splitlines(), 1):
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            raise AssertionError(f"{path.name} line {number} is not JSON: {line!r}") from None
        assert isinstance(entry, dict), line
        assert RFC3339_UTC.match(entry["time"]), line
        assert entry["level"] in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"), line
        assert entry["component"] == component, line
        assert isinstance(entry["event"], str) and entry["event"], line
        assert isinstance(entry["logger"], str) and entry["logger"], line
        entries.append(entry)
    assert entries, f"{path.name} is empty"
    return entries


def test_server_and_daemon_log_json(tmp_path: Path, keys: Path) -> None:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    data = tmp_path / "server"
    port_file = tmp_path / "ports.json"
    server_err, daemon_err = tmp_path / "server.err", tmp_path / "daemon.err"
    server = spawn(
        "server", "--port", "0", "--port-file", str(port_file), "--data-dir", str(data),
        "--trust", str(keys / "trust"), "--connected-window", "60", "--log-format", "json",
        "--access-log", out=tmp_path / "server.out", err=server_err,
    )  # fmt: skip
    daemon: subprocess.Popen[bytes] | None = None
    sockets = short_socket_dir()
    op = None
    try:
        wait_for(lambda: port_file.exists() or server.poll() is not None, "the server")
        assert server.poll() is None, server_err.read_text()
        api_url = json.loads(port_file.read_text())["api_url"]
        token_out = tmp_path / "token.out"
        assert (
            spawn("admin", "create-token", "ops", "--data-dir", str(data), out=token_out, err=token_out).wait(
                60
            )
            == 0
        )
        token = next(w for w in token_out.read_text().split() if w.startswith("eft_"))
        op = FleetClient(ClientConfig(api_url, token, data / "tls" / "ca.pem"))
        op.request(
            "POST",
            "/api/v1/fleets",
            json={"DeviceFleetName": FLEET, "OutputConfig": {"S3OutputLocation": (tmp_path / "o").as_uri()}},
        )
        op.upload_package(null_package(keys, tmp_path / "packages", "1.0"))
        op.set_approval("det", "1.0", "Approved")
        (entry,) = op.register_devices(FLEET, [{"DeviceName": DEVICE}])
        state, config = tmp_path / "device", tmp_path / "device.toml"
        config.write_text(
            f'[daemon]\ntrust_dir = "{keys / "trust"}"\nstate_dir = "{state}"\n'
            f'[agent]\nspawn = true\naddress = "unix://{sockets / "agent.sock"}"\n'
            "[timing]\nheartbeat_interval_seconds = 0.3\npoll_interval_seconds = 0.3\n"
        )
        enrol_log = tmp_path / "enrol.log"
        enrolled = spawn(
            "device", "enroll", "--server", api_url, "--token", entry["EnrolmentToken"], "--config", str(config),
            out=enrol_log, err=enrol_log,
        )  # fmt: skip
        assert enrolled.wait(60) == 0, enrol_log.read_text()
        daemon = spawn(
            "device", "run", "--config", str(config), "--log-format", "json",
            out=tmp_path / "daemon.out", err=daemon_err,
        )  # fmt: skip
        wait_for(
            lambda: op.describe_device(DEVICE).get("LatestHeartbeat") or daemon.poll() is not None,
            "a heartbeat",
        )
        assert daemon.poll() is None, daemon_err.read_text()
        op.create_plan(
            {
                "EdgeDeploymentPlanName": "logs-plan",
                "DeviceFleetName": FLEET,
                "ModelConfigs": [{"ModelHandle": "detector", "ModelName": "det", "ModelVersion": "1.0"}],
                "Stages": [
                    {
                        "StageName": "all",
                        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                    }
                ],
            }
        )
        op.start_stage("logs-plan", "all")
        wait_for(
            lambda: any("deployment" in e and "SUCCEEDED" in e["event"] for e in _parsed(daemon_err)),
            "the deployment's result in the daemon's log",
        )
    finally:
        if daemon is not None:
            assert stop(daemon) == 0, daemon_err.read_text()
        if op is not None:
            op.close()
        assert stop(server) == 0, server_err.read_text()
        shutil.rmtree(sockets, ignore_errors=True)

    served = json_lines(server_err, "server")
    assert any(e["logger"].startswith("uvicorn") for e in served), "uvicorn's records are JSON too"
    assert any(
        e["logger"] == "uvicorn.error" and e["event"].startswith("Started server process") for e in served
    )
    (stored,) = [e for e in served if e["event"].startswith("stored package det 1.0")]
    assert (stored["model"], stored["version"]) == ("det", "1.0")
    (enrolment,) = [e for e in served if "enrolled" in e["event"]]
    assert enrolment["device"] == DEVICE
    access = [e for e in served if e["logger"] == "uvicorn.access"]  # --access-log
    (created,) = [e for e in access if (e["method"], e["path"]) == ("POST", "/api/v1/fleets")]
    assert created["status"] == 201
    assert created["client"].startswith("127.0.0.1:")
    assert '"POST /api/v1/fleets HTTP/1.1" 201' in created["event"]
    assert any(e["path"].startswith("/device/v1/") for e in access), "the device listener's requests too"

    daemon_entries = json_lines(daemon_err, "daemon")
    for e in daemon_entries:  # one daemon, one device: every record names it
        assert (e["device"], e["fleet"]) == (DEVICE, FLEET), e
    events = [e["event"] for e in daemon_entries]
    assert any(event.startswith("device daemon starting") for event in events)
    assert any(event == "device daemon stopped" for event in events)
    (result,) = [e for e in daemon_entries if "SUCCEEDED" in e["event"]]
    assert result["deployment"] == "logs-plan.all"

    # the agent child the daemon started logs JSON too, with the same device and fleet
    agent_entries = json_lines(state / "agent" / "agent.log", "agent")
    for e in agent_entries:
        assert (e["device"], e["fleet"]) == (DEVICE, FLEET), e
    (loaded,) = [e for e in agent_entries if e["event"].startswith("loaded model det")]
    assert (loaded["model"], loaded["version"]) == ("det", "1.0")


def _parsed(path: Path) -> list[dict[str, Any]]:
    entries = []
    for line in path.read_text().splitlines():
        try:
            entries.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written; checked strictly at the end
    return entries


def test_a_daemon_that_cannot_start_says_why_in_json(tmp_path: Path, keys: Path) -> None:
    config = tmp_path / "device.toml"
    config.write_text(f'[daemon]\ntrust_dir = "{keys / "trust"}"\nstate_dir = "{tmp_path / "state"}"\n')
    err = tmp_path / "daemon.err"
    daemon = spawn(
        "device", "run", "--config", str(config), "--log-format", "json", out=tmp_path / "o", err=err
    )
    assert daemon.wait(60) == 1
    entries = json_lines(err, "daemon")
    assert entries[-1]["level"] == "ERROR"
    assert entries[-1]["event"].startswith("edgefleet: error: ")
    assert "INVALID_ARGUMENT: agent.address is required" in entries[-1]["event"]


def test_server_workers_log_json_with_their_index(tmp_path: Path, keys: Path) -> None:
    port_file, err = tmp_path / "ports.json", tmp_path / "server.err"
    server = spawn(
        "server", "--port", "0", "--port-file", str(port_file), "--data-dir", str(tmp_path / "data"),
        "--trust", str(keys / "trust"), "--workers", "2", "--log-format", "json",
        out=tmp_path / "server.out", err=err,
    )  # fmt: skip
    try:
        wait_for(lambda: port_file.exists() or server.poll() is not None, "the server")
        assert server.poll() is None, err.read_text()
    finally:
        assert stop(server) == 0, err.read_text()
    entries = json_lines(err, "server")
    started = {e.get("worker") for e in entries if e["event"].startswith("Application startup complete")}
    assert started == {"0", "1"}
