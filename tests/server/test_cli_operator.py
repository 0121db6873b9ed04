"""The operator CLI against a real control plane (TLS, SQLite): downloads, JSON output of every
command that offers it, quiet logs, closed pipes, TLS failures and tables people can read."""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_testkit import build_test_package, enrol
from support import assert_quiet_on_closed_pipe

from edgefleet.cli import main as cli_main

TARGET = "linux-any-none"


@pytest.fixture
def env(
    fleet_server: Any, operator_token: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, str]:
    """The environment of an operator whose client settings point at the test server."""
    endpoints = fleet_server.endpoints
    values = {
        "EDGEFLEET_CLIENT_CONFIG": str(tmp_path / "client.json"),
        "EDGEFLEET_SERVER": endpoints.api_url,
        "EDGEFLEET_CA_CERT": str(endpoints.ca_cert),
        "EDGEFLEET_TOKEN": operator_token,
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    return {**os.environ, **values}


@pytest.fixture
def run(env: dict[str, str], capsys: pytest.CaptureFixture[str]) -> Any:
    """``edgefleet ARGS`` in-process; returns (exit code, stdout, stderr)."""

    def invoke(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        code = cli_main.main(list(args))
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return invoke


@pytest.fixture(scope="module")
def package(signing_keys: Any, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # big enough that a partial file and a resumed download are more than one chunk
    payload = json.dumps({"weights": list(range(200_000))}).encode()
    return build_test_package(
        signing_keys.directory, tmp_path_factory.mktemp("pkg"), "dl-model", "1", payload=payload
    )


@pytest.fixture(scope="module")
def uploaded(fleet_server: Any, operator_token: str, package: Path) -> Path:
    """``package`` in the registry (uploaded once for the module)."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    endpoints = fleet_server.endpoints
    with FleetClient(ClientConfig(endpoints.api_url, operator_token, Path(endpoints.ca_cert))) as client:
        client.upload_package(package)
    return package


# ---------------------------------------------------------------------- model download


def test_download_writes_into_the_output_directory_and_checks_sha256(
    run: Any, uploaded: Path, tmp_path: Path
) -> None:
    expected = uploaded.read_bytes()
    sha = hashlib.sha256(expected).hexdigest()
    name = f"dl-model-1-{TARGET}.tar.gz"

    existing = tmp_path / "existing"
    existing.mkdir()
    code, out, err = run("model", "download", "dl-model", "1", TARGET, "-o", str(existing))
    assert code == 0, err
    assert (existing / name).read_bytes() == expected
    assert f"saved {existing / name}" in out and sha in out and "verified" in out
    assert sorted(p.name for p in existing.iterdir()) == [name]  # no .part left

    code, out, err = run("model", "download", "dl-model", "1", TARGET, "-o", f"{tmp_path / 'fresh'}/")
    assert code == 0, err
    assert (tmp_path / "fresh" / name).read_bytes() == expected

    # again: already there and verified, nothing is fetched twice or damaged
    code, out, _ = run("model", "download", "dl-model", "1", TARGET, "-o", str(existing))
    assert code == 0 and (existing / name).read_bytes() == expected

    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"keep me")
    code, _, err = run("model", "download", "dl-model", "1", TARGET, "-o", str(a_file))
    assert code == 1 and "INVALID_ARGUMENT" in err and "is a file" in err
    assert a_file.read_bytes() == b"keep me"

    code, _, err = run("model", "download", "dl-model", "1", "linux-riscv64-none", "-o", str(tmp_path / "x"))
    assert code == 1 and "NOT_FOUND" in err and TARGET in err


def test_download_resumes_a_real_partial_file_and_restarts_a_false_one(
    env: dict[str, str], uploaded: Path, tmp_path: Path
) -> None:
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import load_client_config

    expected = uploaded.read_bytes()
    final = tmp_path / f"dl-model-1-{TARGET}.tar.gz"
    part = final.with_name(final.name + ".part")
    calls: list[tuple[int, int]] = []
    with FleetClient(load_client_config()) as client:
        part.write_bytes(expected[: len(expected) // 2])
        assert (
            client.download_package(
                "dl-model", "1", TARGET, tmp_path, progress=lambda d, t: calls.append((d, t))
            )
            == final
        )
        assert final.read_bytes() == expected and not part.exists()
        # resumed: progress started past the half already on disk
        assert calls[0][0] > len(expected) // 2 and calls[-1] == (len(expected), len(expected))

        final.unlink()
        part.write_bytes(bytes(len(expected) // 2))  # same length as a partial, other bytes
        assert client.download_package("dl-model", "1", TARGET, tmp_path) == final
        assert final.read_bytes() == expected and not part.exists()

        final.unlink()
        part.write_bytes(expected + b"more than the package")  # longer: not a partial of it
        assert client.download_package("dl-model", "1", TARGET, tmp_path) == final
        assert final.read_bytes() == expected

        final.write_bytes(b"damaged")  # a file of that name that is not the package is replaced
        assert client.download_package("dl-model", "1", TARGET, tmp_path) == final
        assert final.read_bytes() == expected


# ---------------------------------------------------------------------- --json everywhere


def _json_commands() -> set[tuple[str, ...]]:
    """Every command path whose parser offers --json."""
    found: set[tuple[str, ...]] = set()

    def walk(parser: argparse.ArgumentParser, path: tuple[str, ...]) -> None:
        for action in parser._actions:
            if "--json" in action.option_strings:
                found.add(path)
            if isinstance(action, argparse._SubParsersAction):
                for name, child in action.choices.items():
                    walk(child, (*path, name))

    walk(cli_main.build_parser(), ())
    return found


# Commands with --json that need more than a control plane; their JSON is tested where they are.
JSON_TESTED_ELSEWHERE = {
    ("compile",): "tests/compiler/test_compiler_cli.py",
    ("device", "status"): "tests/device/test_device_daemon.py",
    **{
        cmd: "tests/server/test_drift.py"
        for cmd in (("baseline", "create"), ("baseline", "show"), ("drift", "report"))
    },
    **{("capture", sub): "tests/server/test_cli_capture.py" for sub in ("list", "show", "fetch", "export")},
    # the agent's operator subcommands talk to a running agent, not to the server
    **{
        ("agent", sub): "tests/integration/test_agent_cli.py"
        for sub in ("list", "describe", "load", "unload", "predict", "stats")
    },
    # shadow pairs live in a running agent too (stats --json; load/unload/promote print the pair)
    **{
        ("agent", "shadow", sub): "tests/integration/test_agent_shadow.py"
        for sub in ("load", "unload", "promote", "stats")
    },
    ("fleet", "shadows"): "tests/server/test_shadow_reports.py",
    **{("job", sub): "tests/server/test_jobs.py" for sub in ("compile", "list", "show", "logs", "cancel")},
    **{
        ("pipeline", sub): "tests/pipeline/test_pipeline_e2e.py"
        for sub in ("create", "list", "show", "logs", "runs")
    },
    # not yet checked with --json (they start or decide runs; their plain output is tested there)
    **{("pipeline", sub): "tests/pipeline/test_pipeline_e2e.py" for sub in ("run", "approve", "reject")},
    # twins run on this machine, not in the server
    **{("twin", sub): "tests/twin/test_twin_fleet.py" for sub in ("up", "status")},
}


def _report_success_when_deployed(device: Any, stop: threading.Event) -> None:
    """Act as the device: once a deployment is there for it, report it SUCCEEDED."""
    ref = {"DeviceName": device.name, "DeviceFleetName": device.fleet}
    while not stop.wait(0.1):
        deployments = device.http.post("/device/v1/GetDeployments", json=ref).json()["Deployments"]
        for deployment in deployments:
            result = {"DeploymentName": deployment["DeploymentName"], "DeploymentStatus": "SUCCEEDED"}
            device.http.post("/device/v1/ReportDeploymentResult", json={**ref, "DeploymentResult": result})
            return


def test_every_json_option_prints_json(
    run: Any, uploaded: Path, tmp_path: Path, fleet_server: Any, signing_keys: Any
) -> None:
    model, target = "json-model", TARGET
    own = build_test_package(signing_keys.directory, tmp_path / "pkg", model, "1")
    outputs: dict[str, Any] = {}
    devices: list[Any] = []
    stop = threading.Event()
    reporters: list[threading.Thread] = []

    def enrol_json_devices() -> None:
        for entry in outputs["device register json-1"]:
            name = entry["DeviceName"]
            device = enrol(fleet_server.endpoints.api_url, entry["EnrolmentToken"], tmp_path / name)
            devices.append(device)
            thread = threading.Thread(target=_report_success_when_deployed, args=(device, stop), daemon=True)
            thread.start()
            reporters.append(thread)

    stages = ["--stage", "one names=json-1", "--stage", "two names=json-3", "--stage", "three names=json-2"]
    script: list[list[str] | Any] = [
        ["fleet", "create", "json-fleet", "--output", "s3://bucket/json", "--tag", "a=b"],
        ["fleet", "create", "json-empty", "--output", "s3://bucket/empty"],
        ["fleet", "update", "json-fleet", "--description", "for --json"],
        ["fleet", "list"],
        ["fleet", "describe", "json-fleet"],
        ["fleet", "report", "json-fleet", "--regenerate"],
        ["device", "register", "json-1", "json-3", "--fleet", "json-fleet"],
        enrol_json_devices,
        ["device", "register", "json-2", "--fleet", "json-fleet"],  # never enrolled
        ["device", "update", "json-1", "--arch", "x86_64"],
        ["device", "describe", "json-1"],
        ["device", "list", "--fleet", "json-fleet"],
        ["device", "new-token", "json-2"],
        ["model", "upload", str(own)],
        ["model", "create", "json-empty-model"],
        ["model", "list"],
        ["model", "versions", model],
        ["model", "describe", model],
        ["alert", "set", "--model", model, "--name", "json-rule", "--max-psi", "0.3"],
        ["alert", "list", "--model", model],
        ["alert", "events", "--model", model],
        ["alert", "delete", "--model", model, "--name", "json-rule"],
        ["model", "reject", model, "1", "--reason", "r"],
        ["model", "unapprove", model, "1"],
        ["model", "approve", model, "1"],
        ["model", "alias", model, "json-alias", "1"],
        ["model", "unalias", model, "json-alias"],
        ["model", "download", model, "1", target, "-o", str(tmp_path / "dl")],
        ["deploy", "create", "json-plan", "--fleet", "json-fleet", "--model", f"{model}:1", *stages],
        ["deploy", "list"],
        ["deploy", "describe", "json-plan"],
        ["deploy", "start", "json-plan", "one"],
        ["deploy", "watch", "json-plan", "one", "--poll", "0.2"],
        ["deploy", "devices", "json-plan", "one"],
        ["deploy", "start", "json-plan", "two", "--wait", "--poll", "0.2"],
        ["deploy", "start", "json-plan", "three"],
        ["deploy", "stop", "json-plan", "three"],
        ["deploy", "delete", "json-plan"],
        ["device", "deregister", "json-2"],
        ["model", "delete", "json-empty-model"],
        ["fleet", "delete", "json-empty"],
        ["package", "inspect", str(uploaded)],
    ]
    commands = [argv for argv in script if isinstance(argv, list)]
    covered = {tuple(argv[:2]) if argv[0] != "compile" else ("compile",) for argv in commands}
    assert _json_commands() - covered == set(JSON_TESTED_ELSEWHERE)
    try:
        for argv in script:
            if not isinstance(argv, list):
                argv()
                continue
            code, out, err = run(*argv, "--json")
            assert code == 0, f"{argv}: {err}"
            try:
                outputs[" ".join(argv[:3])] = json.loads(out)
            except json.JSONDecodeError as exc:
                pytest.fail(f"edgefleet {' '.join(argv)} --json printed no JSON ({exc}): {out!r}")
    finally:
        stop.set()
        for thread in reporters:
            thread.join(timeout=30)
        for device in devices:
            device.close()
    stage_status = {
        stage["StageName"]: stage["DeploymentStatus"]["StageStatus"]
        for stage in outputs["deploy watch json-plan"]["Stages"]
    }
    assert stage_status["one"] == "DEPLOYED"  # watch --json printed the plan once the stage finished
    two = outputs["deploy start json-plan"]["Stages"]  # the last start: "three"
    assert {s["StageName"]: s["DeploymentStatus"]["StageStatus"] for s in two}["two"] == "DEPLOYED"


# ---------------------------------------------------------------------- logs, pipes, TLS, tables


def _edgefleet(*args: str) -> list[str]:
    return [sys.executable, "-m", "edgefleet", *args]


def test_operator_commands_print_the_answer_and_no_http_logs(env: dict[str, str], uploaded: Path) -> None:
    for args in (["fleet", "list"], ["model", "list"], ["model", "describe", "dl-model", "1"]):
        result = subprocess.run(_edgefleet(*args), capture_output=True, text=True, env=env, timeout=120)
        assert result.returncode == 0, result.stderr
        assert result.stderr == ""  # no "INFO httpx: HTTP Request: ..." lines
        assert result.stdout.strip()
    verbose = subprocess.run(
        _edgefleet("-vv", "model", "list"), capture_output=True, text=True, env=env, timeout=120
    )
    assert verbose.returncode == 0 and "HTTP Request: GET" in verbose.stderr


def test_a_closed_pipe_ends_an_operator_command_quietly(env: dict[str, str], uploaded: Path) -> None:
    assert_quiet_on_closed_pipe(_edgefleet("model", "list"), env)
    assert_quiet_on_closed_pipe(_edgefleet("model", "versions", "dl-model", "--json"), env)


def test_a_tls_failure_names_the_ca_file_and_how_to_give_another(
    run: Any, signing_keys: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong_ca = Path(signing_keys.trust_dir) / "root-ca.pem"  # a CA, but not the one of this server
    monkeypatch.setenv("EDGEFLEET_CA_CERT", str(wrong_ca))
    code, _, err = run("fleet", "list")
    assert code == 1 and "UNAVAILABLE" in err
    assert f"the CA file {wrong_ca} (from $EDGEFLEET_CA_CERT)" in err
    assert "--ca-cert FILE" in err and "EDGEFLEET_CA_CERT=FILE" in err and "DATA/tls/ca.pem" in err
    monkeypatch.delenv("EDGEFLEET_CA_CERT")
    code, _, err = run("fleet", "list", "--ca-cert", str(wrong_ca))
    assert code == 1 and f"the CA file {wrong_ca} (from --ca-cert)" in err


def test_tables_fit_and_times_read_the_same_everywhere(run: Any, uploaded: Path, fleet_server: Any) -> None:
    digest = hashlib.sha256(uploaded.read_bytes()).hexdigest()
    code, out, _ = run("model", "describe", "dl-model", "1")
    assert code == 0
    assert digest not in out and digest[:12] + "…" in out
    assert re.search(r"\d+\.\d (KiB|MiB)", out)
    assert max(len(line) for line in out.splitlines()) < 120
    stamp = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")
    assert stamp.search(out)

    data_dir = Path(fleet_server.endpoints.ca_cert).parent.parent  # DATA/tls/ca.pem
    code, out, _ = run("admin", "list-tokens", "--data-dir", str(data_dir))
    assert code == 0
    assert stamp.search(out) and "+00:00" not in out
    assert not re.search(r"\d\d:\d\d:\d\d\.\d", out)


@pytest.fixture(autouse=True)
def _no_stray_output(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    yield
    capsys.readouterr()
