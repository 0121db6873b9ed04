"""Fixtures of the device-daemon tests that need a real control plane (TLS on loopback, in a thread)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from device_testkit import FLEET, LoopbackServer, null_package


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[LoopbackServer]:
    pytest.importorskip("fastapi", reason="these tests need the server extra")
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("server"),
        port=0,
        device_port=0,
        trust_dir=keys / "trust",
        timing=Timing(shutdown_grace=1),
    )
    running = start_in_thread(config)
    db = running.state.db
    with db.session() as session:
        token = tokens.create_token(session, "device-tests", db.now())
    op = FleetClient(ClientConfig(running.endpoints.api_url, token, Path(running.endpoints.ca_cert)))
    op.request(
        "POST",
        "/api/v1/fleets",
        json={
            "DeviceFleetName": FLEET,
            "OutputConfig": {"S3OutputLocation": tmp_path_factory.mktemp("outputs").as_uri()},
        },
    )
    out = tmp_path_factory.mktemp("packages")
    packages = {}
    for version, extra in (("1.0", {}), ("2.0", {"fail": True}), ("3.0", {})):
        packages[version] = null_package(keys, out, version, **extra)
        op.upload_package(packages[version])
        op.set_approval("det", version, "Approved")
    try:
        yield LoopbackServer(running, op, packages)
    finally:
        op.close()
        running.stop()
