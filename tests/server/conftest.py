"""Fixtures of the control-plane tests: databases (SQLite always, PostgreSQL when reachable), a clock."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from server_testkit import FakeClock, scratch_pg_database


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (dropped at the end), migrated once."""
    from edgefleet.server.db.engine import Database

    with scratch_pg_database("edgefleet_test") as url:
        setup = Database(url)
        setup.migrate()
        setup.close()
        yield url


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file that tests copy (migrating costs ~0.5 s; copying almost nothing)."""
    from edgefleet.server.db.engine import Database

    path = tmp_path_factory.mktemp("sqlite-template") / "edgefleet.db"
    template = Database(f"sqlite:///{path}")
    template.migrate()
    template.close()  # the last connection closing checkpoints the WAL into the main file
    return path


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[object]:
    """A migrated, empty database on each backend."""
    from sqlalchemy import text

    from edgefleet.server.db.engine import Database
    from edgefleet.server.db.schema import Base

    if request.param == "sqlite":
        path = tmp_path / "edgefleet.db"
        shutil.copyfile(request.getfixturevalue("sqlite_template"), path)
        database = Database(f"sqlite:///{path}", clock=clock)
    else:
        url = request.getfixturevalue("pg_url")
        database = Database(url, clock=clock, pool_size=2)
        tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
        with database.engine.begin() as conn:
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    try:
        yield database
    finally:
        database.close()


@pytest.fixture(scope="module")
def signing_keys(tmp_path_factory: pytest.TempPathFactory) -> object:
    """A package-signing root CA and signer (the server trusts the root)."""
    from edgefleet.core import signing

    return signing.init_keys(tmp_path_factory.mktemp("keys") / "keys")


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory, signing_keys: object) -> Iterator[object]:
    """A control plane on loopback ports with real TLS (SQLite + local artifacts), on a thread."""
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.runner import start_in_thread

    config = ServerConfig(
        data_dir=tmp_path_factory.mktemp("server"),
        port=0,
        device_port=0,
        trust_dir=signing_keys.trust_dir,  # type: ignore[attr-defined]
        timing=Timing(shutdown_grace=1),
    )
    server = start_in_thread(config)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def operator_token(fleet_server: object) -> str:
    from edgefleet.server import tokens

    db = fleet_server.state.db  # type: ignore[attr-defined]
    with db.session() as session:
        return tokens.create_token(session, "ops-alice", db.now())


@pytest.fixture
def op(fleet_server: object, operator_token: str) -> Iterator[object]:
    """An operator client with a valid token."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig

    endpoints = fleet_server.endpoints  # type: ignore[attr-defined]
    client = FleetClient(ClientConfig(endpoints.api_url, operator_token, Path(endpoints.ca_cert)))
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def unmigrated(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Iterator[Any]:
    """An empty database of its own on each backend, no migration run yet (migration tests)."""
    from edgefleet.server.db.engine import Database

    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'edgefleet.db'}", clock=clock)
        try:
            yield database
        finally:
            database.close()
        return
    with scratch_pg_database("edgefleet_migration") as url:
        database = Database(url, clock=clock, pool_size=1)
        try:
            yield database
        finally:
            database.close()
