"""Fixtures of the twin-fleet tests: a real control plane (TLS on loopback, in a thread) and an
operator client of it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from twin_testkit import Plane


@pytest.fixture(scope="module")
def plane(tmp_path_factory: pytest.TempPathFactory, keys: Path) -> Iterator[Plane]:
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
        token = tokens.create_token(session, "twin-tests", db.now())
    ca = Path(running.endpoints.ca_cert)
    op = FleetClient(ClientConfig(running.endpoints.api_url, token, ca))
    try:
        yield Plane(running, running.endpoints.api_url, token, ca, op)
    finally:
        op.close()
        running.stop()
