"""The second half of ``edgefleet demo``: compile the model, run a fleet, roll versions out.

Compiles the digits model for this machine's target class (report printed), signs the result as
version 2.0, starts the control plane on the embedded default (SQLite and a local artifact
directory), registers and enrols two devices whose daemons each run their own agent, checks the
fleet report, rolls 1.0 out in two stages, serves an application through the stable handle
``digits``, then rolls the compiled 2.0 out while the application keeps predicting (a hot swap with
no failed call), and stops everything. All real processes on loopback; nothing leaves the machine.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgefleet.demo.device import Say, edgefleet_process, stop_process

FLEET = "demo-fleet"
DEVICES = ("camera-1", "camera-2")
HANDLE = "digits"


def _wait(condition: Callable[[], Any], what: str, timeout: float = 120.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.2)


class _App(threading.Thread):
    """An application predicting through the handle in a loop (counts calls and failures)."""

    def __init__(self, address: str, inputs: dict[str, np.ndarray]) -> None:
        super().__init__(daemon=True)
        self.address, self.inputs = address, inputs
        self.ok = 0
        self.errors: list[str] = []
        self._stop_event = threading.Event()

    def run(self) -> None:
        from edgefleet.client import AgentClient

        with AgentClient(self.address, timeout=30) as client:
            while not self._stop_event.is_set():
                try:
                    client.predict(HANDLE, self.inputs)
                    self.ok += 1
                except Exception as exc:  # counted and shown: the demo's point is that there are none
                    self.errors.append(str(exc))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(30)


def compile_model(
    workdir: Path, model_path: Path, x: np.ndarray, y: np.ndarray, say: Say
) -> tuple[Path, str]:
    """Compile ``model_path`` for this host's target class; returns (output dir, selected candidate)."""
    from edgefleet.compiler.job import CompileJob, CompileRequest
    from edgefleet.core.platform import host_arch

    calibration, validation = workdir / "calibration.npz", workdir / "validation.npz"
    # a single-input model takes any one array; labels go under "labels"
    np.savez(calibration, samples=x[:200])
    np.savez(validation, samples=x, labels=y)
    out = workdir / "compiled"
    shutil.rmtree(out, ignore_errors=True)
    request = CompileRequest(
        model=model_path,
        framework="onnx",
        target=f"linux-{host_arch()}",
        output_dir=out,
        calibration=calibration,
        validation=validation,
        benchmark_seconds=0.5,
    )
    job = CompileJob(request, on_log=lambda line: say(f"    {line}"))
    compiler_log = logging.getLogger("edgefleet.compiler")
    level = compiler_log.level
    compiler_log.setLevel(logging.WARNING)  # its progress is printed here once, not also by the logger
    try:
        result = job.run()
    finally:
        compiler_log.setLevel(level)
    say(result.report.render_table())
    return result.output_dir, result.report.selected


def run_fleet_demo(
    workdir: Path,
    say: Say,
    *,
    model_path: Path,
    x_test: np.ndarray,
    y_test: np.ndarray,
    keys: Path,
    package_v1: Path,
    first_step: int,
) -> bool:
    """The fleet half of the demo; True when every check held."""
    step = iter(range(first_step, first_step + 20))
    http_log = logging.getLogger("httpx")  # one INFO line per operator request: noise in a demo
    http_level = http_log.level
    http_log.setLevel(logging.WARNING)
    try:
        return _run(workdir, say, step, model_path, x_test, y_test, keys, package_v1)
    finally:
        http_log.setLevel(http_level)


def _run(
    workdir: Path,
    say: Say,
    step: Iterator[int],
    model_path: Path,
    x_test: np.ndarray,
    y_test: np.ndarray,
    keys: Path,
    package_v1: Path,
) -> bool:
    from edgefleet.compiler.output import build_package_from_output
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    def heading(text: str) -> None:
        say(f"\n[{next(step)}] {text}")

    heading("Compile the model for this machine's device class (candidates measured, best kept)")
    compiled, selected = compile_model(workdir, model_path, x_test, y_test, say)
    package_v2 = build_package_from_output(
        compiled, name="digits", version="2.0", key_dir=keys, out_dir=workdir / "packages"
    )
    say(f"    kept {selected}; signed as {package_v2}")

    fleet_dir = workdir / "fleet"
    shutil.rmtree(fleet_dir, ignore_errors=True)  # a fresh control plane and devices on every run
    fleet_dir.mkdir(parents=True)
    sockets = Path(tempfile.mkdtemp(prefix="ef-demo-", dir="/tmp"))  # Unix socket paths must be short
    trust = keys / "trust"
    server: subprocess.Popen[bytes] | None = None
    daemons: list[subprocess.Popen[bytes]] = []
    op: Any = None
    ok = True
    try:
        heading("Start the control plane (embedded default: SQLite and a local artifact directory)")
        server_dir, server_log = fleet_dir / "server", fleet_dir / "server.log"
        port_file = fleet_dir / "server-ports.json"
        # port 0: the server binds free ports itself and says which in the port file (a port picked
        # here and freed before the server binds it could be taken meanwhile)
        server = edgefleet_process(
            ["server", "--port", "0", "--port-file", str(port_file), "--data-dir",
             str(server_dir), "--trust", str(trust), "--connected-window", "60"],
            server_log,
        )  # fmt: skip

        def ready() -> bool:
            assert server is not None
            if server.poll() is not None:
                raise RuntimeError(f"the server exited; see {server_log}")
            return port_file.exists()  # written once both listeners accept

        _wait(ready, "the control plane")
        url = json.loads(port_file.read_text())["api_url"]
        token_run = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgefleet",
                "admin",
                "create-token",
                "demo",
                "--data-dir",
                str(server_dir),
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        token = re.search(r"eft_\S+", token_run.stdout + token_run.stderr)
        if token is None:
            raise RuntimeError(f"no operator token in: {token_run.stdout}{token_run.stderr}")
        op = FleetClient(ClientConfig(url, token.group(0), server_dir / "tls" / "ca.pem"))
        say(f"    operator API {url}/api/v1 (OpenAPI at {url}/openapi.json); log {server_log}")

        heading("Create a fleet, upload both signed packages, approve them")
        op.create_fleet(FLEET, f"file://{fleet_dir / 'captures'}")
        for package in (package_v1, package_v2):
            uploaded = op.upload_package(package)
            op.set_approval("digits", uploaded["ModelVersion"], "Approved")
            say(f"    digits {uploaded['ModelVersion']}: uploaded (signature checked), Approved")

        heading("Register two devices; each daemon enrols (own key, CSR, mTLS certificate) and runs an agent")
        registered = op.register_devices(FLEET, [{"DeviceName": n} for n in DEVICES])
        addresses: dict[str, str] = {}
        for entry in registered:
            name = entry["DeviceName"]
            state = fleet_dir / name
            config = fleet_dir / f"{name}.toml"
            addresses[name] = f"unix://{sockets / (name + '.sock')}"
            config.write_text(
                f'[daemon]\ntrust_dir = "{trust}"\nstate_dir = "{state}"\n'
                f'[agent]\nspawn = true\naddress = "{addresses[name]}"\n'
                "[timing]\nheartbeat_interval_seconds = 1\npoll_interval_seconds = 1\n"
                "health_interval_seconds = 1\n"
            )
            log = fleet_dir / f"{name}.log"
            enrol = edgefleet_process(
                [
                    "device",
                    "enroll",
                    "--server",
                    url,
                    "--token",
                    entry["EnrolmentToken"],
                    "--config",
                    str(config),
                ],
                log,
            )
            if enrol.wait(120) != 0:
                raise RuntimeError(f"{name} could not enrol; see {log}")
            daemons.append(edgefleet_process(["device", "run", "--config", str(config)], log))
            say(f"    {name}: enrolled, daemon running (state {state}, log {log})")

        def connected() -> dict[str, Any] | None:
            report: dict[str, Any] = op.fleet_report(FLEET, regenerate=True)
            return report if report["DeviceStats"].get("ConnectedDeviceCount") == len(DEVICES) else None

        report = _wait(connected, "heartbeats from both devices")
        say(f"    fleet report: {report['DeviceStats']}")

        def roll_out(plan: str, version: str, stages: list[tuple[str, int]]) -> None:
            op.create_plan(
                {
                    "EdgeDeploymentPlanName": plan,
                    "DeviceFleetName": FLEET,
                    "ModelConfigs": [{"ModelHandle": HANDLE, "ModelName": "digits", "ModelVersion": version}],
                    "Stages": [
                        {
                            "StageName": s,
                            "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": p},
                        }
                        for s, p in stages
                    ],
                }
            )
            for stage, percentage in stages:
                started = time.monotonic()
                op.start_stage(plan, stage)

                def settled(stage: str = stage) -> str | None:
                    (found,) = [s for s in op.describe_plan(plan)["Stages"] if s["StageName"] == stage]
                    status = str(found["DeploymentStatus"]["StageStatus"])
                    return status if status in ("DEPLOYED", "FAILED") else None

                status = _wait(settled, f"stage {plan}/{stage}")
                say(f"    stage {stage} ({percentage} %): {status} in {time.monotonic() - started:.1f} s")
                if status != "DEPLOYED":
                    raise RuntimeError(f"stage {plan}/{stage} {status}")

        heading(f"Roll digits 1.0 out in two stages (half the fleet, then the rest) under handle {HANDLE!r}")
        roll_out("digits-v1", "1.0", [("canary", 50), ("everyone", 100)])

        heading(f"An application on {DEVICES[0]} predicts through the handle (it never names a version)")
        from edgefleet.client import AgentClient

        with AgentClient(addresses[DEVICES[0]], timeout=30) as app:
            input_name = app.describe(app.handles()[HANDLE]).inputs[0].name
            labels = [int(app.predict(HANDLE, {input_name: row[None, :]})["label"][0]) for row in x_test]
        accuracy = float(np.mean(np.array(labels) == y_test))
        say(f"    accuracy {accuracy:.1%} on {len(y_test)} held-out digits")
        ok &= accuracy > 0.9

        heading("Roll the compiled 2.0 out to every device while the application keeps predicting")
        hammer = _App(addresses[DEVICES[0]], {input_name: x_test[:1]})
        hammer.start()
        try:
            roll_out("digits-v2", "2.0", [("all", 100)])
            time.sleep(1.0)  # a little traffic on the new version too
        finally:
            hammer.stop()
        say(f"    the application made {hammer.ok} calls during the swap, {len(hammer.errors)} failed")
        ok &= not hammer.errors and hammer.ok > 0
        for name in DEVICES:
            models = [(m["ModelName"], m["ModelVersion"]) for m in op.describe_device(name)["Models"]]
            say(f"    {name} reports {models}")

        def on_v2() -> dict[str, Any] | None:
            report: dict[str, Any] = op.fleet_report(FLEET, regenerate=True)
            versions = {m.get("ModelVersion"): m for m in report.get("ModelStats", [])}
            active = versions.get("2.0", {})
            return report if active.get("ConnectedDeviceCount") == len(DEVICES) else None

        report = _wait(on_v2, "the fleet report to show 2.0 on both devices")
        say(f"    fleet report (generated {report.get('ReportGenerated', '?')}):")
        for model in report.get("ModelStats", []):
            say(f"      {model}")
    except Exception as exc:  # the demo reports what went wrong and still stops everything
        say(f"    FAILED: {exc}")
        ok = False
    finally:
        heading("Stop the device daemons (their agents stop with them) and the control plane")
        codes = [stop_process(d) for d in daemons]
        if op is not None:
            op.close()
        server_code = stop_process(server)
        shutil.rmtree(sockets, ignore_errors=True)
        say(f"    daemons exited with {codes}, the server with {server_code}; files in {fleet_dir}")
        ok &= all(c == 0 for c in codes) and server_code == 0
    return ok
