"""The operator CLI against a real ``edgefleet server`` process (started by its command line)."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_testkit import build_test_package, enrol

from edgefleet.cli import main as cli_main
from edgefleet.cli.device_ops import add_operator_commands


@pytest.fixture(scope="module")
def server_process(tmp_path_factory: pytest.TempPathFactory, signing_keys: Any) -> Iterator[dict[str, Any]]:
    data = tmp_path_factory.mktemp("cli-server")
    command = [
        sys.executable,
        "-m",
        "edgefleet",
        "server",
        "--port",
        "0",
        "--port-file",
        str(data.parent / "cli-server-ports.json"),
        "--data-dir",
        str(data),
        "--trust",
        str(signing_keys.trust_dir),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()  # blocks until the server is ready (or has died)
        if not line:
            _, err = process.communicate(timeout=30)
            pytest.fail(f"edgefleet server did not start: {err}")
        assert line.startswith("edgefleet server ready: operator API https://127.0.0.1:")
        words = line.split()
        yield {
            "api": words[5],
            "device": words[8],
            "ca": words[-1],
            "data": data,
            "process": process,
            "port_file": data.parent / "cli-server-ports.json",
        }
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        if process.stdout:
            process.stdout.close()
        if process.stderr:
            process.stderr.close()


@pytest.fixture
def run(
    server_process: dict[str, Any],
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """Run ``edgefleet ARGS`` in-process with a token; returns (exit code, stdout)."""
    monkeypatch.setenv("EDGEFLEET_CLIENT_CONFIG", str(tmp_path / "client.json"))
    monkeypatch.setenv("EDGEFLEET_SERVER", server_process["api"])
    monkeypatch.setenv("EDGEFLEET_CA_CERT", server_process["ca"])
    if "token" not in server_process:
        assert (
            cli_main.main(["admin", "create-token", "cli-ops", "--data-dir", str(server_process["data"])])
            == 0
        )
        server_process["token"] = capsys.readouterr().out.strip()
    monkeypatch.setenv("EDGEFLEET_TOKEN", server_process["token"])

    def invoke(*args: str) -> tuple[int, str]:
        capsys.readouterr()
        if args[0] == "device":  # cli/device.py (the daemon's module) hosts these; stand in for it here
            parser = argparse.ArgumentParser(prog="edgefleet")
            commands = (
                parser.add_subparsers(dest="command").add_parser("device").add_subparsers(required=True)
            )
            add_operator_commands(commands)
            parsed = parser.parse_args(list(args))
            try:
                code = int(parsed.func(parsed))
            except cli_main.EdgefleetError as exc:
                print(f"edgefleet: error: {exc}", file=sys.stderr)
                code = 1
        else:
            code = cli_main.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out + captured.err

    return invoke


def test_token_admin(run: Any, server_process: dict[str, Any]) -> None:
    data = str(server_process["data"])
    code, out = run("admin", "list-tokens", "--data-dir", data)
    assert code == 0 and "cli-ops" in out
    code, out = run("admin", "create-token", "cli-ops", "--data-dir", data)
    assert code == 1 and "ALREADY_EXISTS" in out
    code, out = run("admin", "create-token", "temp", "--data-dir", data)
    temp = out.splitlines()[0]
    assert run("admin", "revoke-token", "temp", "--data-dir", data)[0] == 0
    code, out = run("fleet", "list", "--token", temp)
    assert code == 1 and "UNAUTHENTICATED: API token 'temp' was revoked" in out


def test_fleet_device_model_deploy_commands(
    run: Any, server_process: dict[str, Any], signing_keys: Any, tmp_path: Path
) -> None:
    assert run("fleet", "create", "cli-fleet", "--output", "s3://bucket/cli", "--tag", "team=vision")[0] == 0
    code, out = run("fleet", "list")
    assert code == 0 and out.splitlines()[0].split() == ["NAME", "CREATED", "MODIFIED"] and "cli-fleet" in out
    code, out = run("fleet", "create", "Bad_Name", "--output", "s3://b")
    assert code == 1 and "INVALID_ARGUMENT: fleet name 'Bad_Name' is invalid" in out
    code, out = run("fleet", "update", "cli-fleet", "--description", "line 3")
    assert code == 0 and "line 3" in out

    code, out = run("device", "register", "cam-1", "cam-2", "--fleet", "cli-fleet", "--tag", "ring=canary")
    assert code == 0 and "ENROLMENT TOKEN" in out
    tokens = {line.split()[0]: line.split()[1] for line in out.splitlines()[1:]}
    assert set(tokens) == {"cam-1", "cam-2"} and all(t.startswith("efe1.") for t in tokens.values())
    devices = [enrol(server_process["api"], tokens[name], tmp_path / name) for name in ("cam-1", "cam-2")]
    code, out = run("device", "list", "--fleet", "cli-fleet", "--tag", "ring=canary")
    assert code == 0 and "cam-1" in out and "cam-2" in out
    code, out = run("device", "describe", "cam-1", "--json")
    assert code == 0 and json.loads(out)["EnrolmentTime"] is not None
    assert run("device", "update", "cam-1", "--arch", "x86_64")[0] == 0

    package = build_test_package(signing_keys.directory, tmp_path / "pkg", "cli-model", "1.0")
    code, out = run("model", "upload", str(package))
    assert code == 0 and "stored as cli-model version 1.0" in out and "linux-any-none" in out
    assert run("model", "approve", "cli-model", "1.0", "--reason", "looks good")[0] == 0
    assert run("model", "alias", "cli-model", "champion", "1.0")[0] == 0
    code, out = run("model", "versions", "cli-model")
    assert code == 0 and "Approved" in out and "cli-ops" in out
    code, out = run("model", "describe", "cli-model")
    assert "champion=1.0" in out

    code, out = run(
        "deploy",
        "create",
        "cli-plan",
        "--fleet",
        "cli-fleet",
        "--model",
        "detector=cli-model@champion",
        "--stage",
        "canary names=cam-1",
        "--stage",
        "rest percent=100 threshold=0.5",
    )
    assert code == 0 and "canary" in out and "READYTODEPLOY" in out
    code, out = run(
        "deploy", "create", "x", "--fleet", "cli-fleet", "--model", "nothing", "--stage", "s percent=1"
    )
    assert code == 1 and "must look like HANDLE=MODEL:VERSION" in out
    code, out = run("deploy", "start", "cli-plan", "canary")
    assert code == 0 and "cli-plan/canary: STARTING  0/1 deployed" in out
    body = {"DeviceName": "cam-1", "DeviceFleetName": "cli-fleet"}
    [deployment] = devices[0].http.post("/device/v1/GetDeployments", json=body).json()["Deployments"]
    result = {
        **body,
        "DeploymentResult": {"DeploymentName": deployment["DeploymentName"], "DeploymentStatus": "SUCCEEDED"},
    }
    devices[0].http.post("/device/v1/ReportDeploymentResult", json=result)
    code, out = run("deploy", "watch", "cli-plan", "canary")
    assert code == 0 and "DEPLOYED  1/1 deployed" in out
    code, out = run("deploy", "devices", "cli-plan", "canary")
    assert code == 0 and "cam-1" in out and "DEPLOYED" in out
    code, out = run("deploy", "start", "cli-plan", "rest")
    assert code == 0
    code, out = run("deploy", "stop", "cli-plan", "rest")
    assert code == 0 and "STOPPED" in out
    code, out = run("fleet", "report", "cli-fleet", "--regenerate")
    assert code == 0 and "Devices: 2 registered" in out

    assert run("device", "deregister", "cam-2")[0] == 0
    assert (
        devices[1]
        .http.post(
            "/device/v1/GetDeviceRegistration", json={"DeviceName": "cam-2", "DeviceFleetName": "cli-fleet"}
        )
        .status_code
        == 401
    )
    for device in devices:
        device.close()


def test_port_zero_binds_free_ports_and_the_port_file_says_which(server_process: dict[str, Any]) -> None:
    """``--port 0`` lets the system pick both ports at bind time (no port picked and freed first);
    ``--port-file`` reports them, written before the ready line."""
    import json
    import socket

    bound = json.loads(server_process["port_file"].read_text())
    assert bound["api_url"] == server_process["api"] == f"https://127.0.0.1:{bound['port']}"
    assert bound["device_url"] == server_process["device"] == f"https://127.0.0.1:{bound['device_port']}"
    assert bound["ca_cert"] == server_process["ca"]
    assert 0 not in (bound["port"], bound["device_port"]) and bound["port"] != bound["device_port"]
    for port in (bound["port"], bound["device_port"]):
        with socket.create_connection(("127.0.0.1", port), timeout=30):
            pass  # both listeners accept


def test_server_stops_cleanly_on_sigterm(server_process: dict[str, Any]) -> None:
    process = server_process["process"]
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0
    assert os.path.exists(server_process["ca"])
