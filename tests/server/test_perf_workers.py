"""Several worker processes behind one pair of listeners (``ServerConfig.workers``): real processes,
real TLS; a killed worker is replaced, SIGTERM stops them all."""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_testkit import enrol

from edgefleet.opclient.client import FleetClient
from edgefleet.opclient.config import ClientConfig

SERVE = """
import json, sys
from pathlib import Path
from edgefleet.server.config import ServerConfig, Timing
from edgefleet.server.runner import run
config = ServerConfig(data_dir=Path(sys.argv[1]), port=0, device_port=0, workers=2,
                      timing=Timing(shutdown_grace=1.0))
run(config, lambda e: print(json.dumps([e.api_url, e.device_url, e.ca_cert]), flush=True))
"""


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _workers(pid: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = set()
    for child in _children(pid):
        try:
            cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
        except OSError:
            continue
        if b"spawn_main" in cmdline:
            found.add(child)
    return found


def _wait_for(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def supervisor(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    process = subprocess.Popen(
        [sys.executable, "-c", SERVE, str(tmp_path / "data")], stdout=subprocess.PIPE, text=True
    )
    assert process.stdout is not None
    try:
        ready, _, _ = select.select([process.stdout], [], [], 120)
        if not ready:
            raise AssertionError("the server did not come up within 120 s")
        line = process.stdout.readline()
        assert line, f"the server exited with {process.wait(10)}"
        yield process, json.loads(line)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        process.stdout.close()


def test_workers_share_the_listeners_and_are_replaced_and_stopped(
    supervisor: tuple[subprocess.Popen[str], list[str]], tmp_path: Path
) -> None:
    process, (api_url, _device_url, ca_cert) = supervisor
    workers = _wait_for(
        lambda: _workers(process.pid) if len(_workers(process.pid)) == 2 else None, 120, "2 workers"
    )
    from edgefleet.server import tokens
    from edgefleet.server.db.engine import Database

    db = Database(f"sqlite:///{tmp_path / 'data' / 'edgefleet.db'}")
    with db.session() as s:
        token = tokens.create_token(s, "ops", db.now())
    db.close()
    with FleetClient(ClientConfig(api_url, token, Path(ca_cert))) as op:
        op.create_fleet("line-1", "s3://bucket/p")
        registered = op.register_devices("line-1", [{"DeviceName": f"cam-{i}"} for i in range(4)])
        cams = [enrol(api_url, r["EnrolmentToken"], tmp_path / r["DeviceName"]) for r in registered]
        try:
            # Each device has its own connection; whichever worker accepted it, heartbeats are stored
            # (group-committed by that worker) and visible to every worker through the database.
            for i, cam in enumerate(cams):
                assert cam.call("SendHeartbeat", {"AgentVersion": f"1.{i}"}).json() == {}
            assert sorted(d["AgentVersion"] for d in op.list_devices(fleet="line-1")) == [
                "1.0",
                "1.1",
                "1.2",
                "1.3",
            ]
            # A worker that dies is replaced; the service goes on meanwhile.
            victim = min(workers)
            os.kill(victim, signal.SIGKILL)
            _wait_for(
                lambda: len(_workers(process.pid)) == 2 and victim not in _workers(process.pid),
                120,
                "a replacement worker",
            )
            for cam in cams:  # new connections: some land on the replacement
                cam.close()
                cam.http = _device_http(cam.http.base_url, tmp_path / cam.name)
            for i, cam in enumerate(cams):
                assert cam.call("SendHeartbeat", {"AgentVersion": f"2.{i}"}).status_code == 200
            assert op.describe_device("cam-3")["AgentVersion"] == "2.3"
        finally:
            for cam in cams:
                cam.close()
    survivors = _workers(process.pid)
    process.send_signal(signal.SIGTERM)
    assert process.wait(120) == 0
    for pid in survivors:  # no orphaned worker keeps the port
        _wait_for(
            lambda pid=pid: not Path(f"/proc/{pid}").exists() or _zombie(pid), 60, f"worker {pid} to exit"
        )
    with pytest.raises(httpx.ConnectError, match=r"[Cc]onnect"):
        httpx.get(f"{api_url}/healthz", verify=False)


def _device_http(base_url: Any, workdir: Path) -> httpx.Client:
    import ssl

    context = ssl.create_default_context(cafile=str(workdir / "ca.pem"))
    context.load_cert_chain(str(workdir / "cert.pem"), str(workdir / "key.pem"))
    return httpx.Client(base_url=base_url, verify=context, timeout=30)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
