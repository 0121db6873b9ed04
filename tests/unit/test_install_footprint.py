"""The device install stays small: no heavy dependency is required or imported by device-side code."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
HEAVY = (
    "torch",
    "tvm",
    "fastapi",
    "sqlalchemy",
    "uvicorn",
    "alembic",
    "openvino",
    "boto3",
    "onnx",
    "sklearn",
    # httpx is a base dependency (the device's HTTPS client), imported only when a command talks HTTP
    "httpx",
    "rich",
    # the 'metrics' extra, imported only when an agent is started with a metrics address
    "prometheus_client",
)


def test_base_dependencies_are_device_sized() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    names = {
        dep.split(";")[0].split("[")[0].split("<")[0].split(">")[0].split("=")[0].strip().lower()
        for dep in project["dependencies"]
    }
    assert not names & {
        "torch",
        "apache-tvm",
        "fastapi",
        "sqlalchemy",
        "uvicorn",
        "alembic",
        "openvino",
        "boto3",
    }


@pytest.mark.parametrize(
    "modules",
    [
        ["edgefleet.agent.runner", "edgefleet.cli.agent"],
        ["edgefleet.client"],
        ["edgefleet.device.daemon", "edgefleet.cli.device"],
        ["edgefleet.cli.main"],
        # building the whole parser imports every command module, and none of the extras
        ["edgefleet.cli.main", "edgefleet.cli.output"],
    ],
)
def test_device_side_imports_no_heavy_library(modules: list[str]) -> None:
    code = (
        "import importlib, json, sys\n"
        f"for m in {modules!r}: importlib.import_module(m)\n"
        "if 'edgefleet.cli.main' in sys.modules: sys.modules['edgefleet.cli.main'].build_parser()\n"
        f"print(json.dumps(sorted(h for h in {HEAVY!r} if h in sys.modules)))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('edgefleet.server'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    heavy, control_plane = (json.loads(line) for line in out.stdout.splitlines())
    assert heavy == []
    if not modules[0].startswith("edgefleet.cli.main"):  # device-side code never imports the control plane
        assert control_plane == []
