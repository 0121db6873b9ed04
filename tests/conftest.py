"""Fixtures shared by every test tier."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import support
from hypothesis import HealthCheck, settings

# Property tests on a busy machine: no per-example deadline and no "too slow" health check (both
# measure wall time, which another job on the cores can stretch). Loaded here, before any test
# module builds its @settings, so those inherit it.
settings.register_profile("edgefleet", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("edgefleet")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--browser-artifacts",
        default="test-artifacts/browser",
        help="where the browser tests (tests/browser) save screenshots and logs; relative to the "
        "repository (default: test-artifacts/browser)",
    )


@pytest.fixture(scope="session", autouse=True)
def _scratch_root(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Helpers in support.py make their scratch directories under pytest's base temporary dir."""
    support.use_scratch_root(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A signing key directory (root CA + signer); ``keys / "trust"`` is the trust store."""
    from edgefleet.core.signing import init_keys

    directory = tmp_path_factory.mktemp("keys")
    init_keys(directory)
    return directory


@pytest.fixture(scope="session")
def trust(keys: Path) -> Path:
    return keys / "trust"


@pytest.fixture(scope="session")
def s3_endpoint() -> Iterator[str]:
    """A real S3-protocol HTTP server (moto's server mode) on a loopback port, with a bucket."""
    pytest.importorskip("moto")
    pytest.importorskip("boto3")
    import boto3
    from moto.server import ThreadedMotoServer

    with pytest.MonkeyPatch.context() as patch:
        for name, value in (
            ("AWS_ACCESS_KEY_ID", "edgefleet-test"),
            ("AWS_SECRET_ACCESS_KEY", "edgefleet-test"),
            ("AWS_DEFAULT_REGION", "us-east-1"),
        ):
            patch.setenv(name, value)
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        host, port = server.get_host_and_port()
        url = f"http://{host}:{port}"
        boto3.client("s3", endpoint_url=url).create_bucket(Bucket="edgefleet-test")
        try:
            yield url
        finally:
            server.stop()
