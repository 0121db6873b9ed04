"""The artifact store seam: the local directory store and the S3 store against a real S3-protocol server."""

from __future__ import annotations

import hashlib
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from server_testkit import build_test_package, enrol

from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.server.artifacts import ArtifactStore, open_artifact_store


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ArtifactStore]:
    if request.param == "file":
        yield open_artifact_store((tmp_path / "artifacts").as_uri())
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        yield open_artifact_store(f"s3://edgefleet-test/{uuid.uuid4().hex}", s3_endpoint_url=endpoint)


def test_put_get_list_range_delete(store: ArtifactStore, tmp_path: Path) -> None:
    data = bytes(range(256)) * 5000  # > one chunk
    source = tmp_path / "blob.bin"
    source.write_bytes(data)
    store.put_file("models/m/1/blob.bin", source)
    store.put_bytes("models/m/2/small.bin", b"hello")
    assert store.list() == ["models/m/1/blob.bin", "models/m/2/small.bin"]
    assert store.list("models/m/2") == ["models/m/2/small.bin"]
    assert store.size("models/m/1/blob.bin") == len(data)
    assert store.get_bytes("models/m/2/small.bin") == b"hello"
    assert b"".join(store.open_range("models/m/1/blob.bin")) == data
    assert b"".join(store.open_range("models/m/1/blob.bin", 1000, 70000)) == data[1000:71000]
    assert b"".join(store.open_range("models/m/1/blob.bin", len(data) - 10)) == data[-10:]
    assert store.url("models/m/2/small.bin").endswith("models/m/2/small.bin")
    store.delete("models/m/2/small.bin")
    store.delete("models/m/2/small.bin")  # deleting twice is fine
    assert store.list() == ["models/m/1/blob.bin"]
    with pytest.raises(NotFound, match=r"artifact 'models/m/2/small\.bin' does not exist"):
        store.get_bytes("models/m/2/small.bin")
    with pytest.raises(NotFound, match="does not exist"):
        store.size("nope")
    with pytest.raises(InvalidArgument, match=r"unsafe component '\.\.'"):
        store.put_bytes("models/../../etc/passwd", b"x")


def test_unknown_scheme_lists_the_known_ones() -> None:
    with pytest.raises(InvalidArgument, match=r"scheme 'gs' is not supported \(known: file, s3\)"):
        open_artifact_store("gs://bucket/prefix")
    with pytest.raises(InvalidArgument, match="must look like s3://bucket/prefix"):
        open_artifact_store("s3:///no-bucket")


def test_server_at_scale_configuration_postgresql_and_s3(
    pg_url: str, s3_endpoint: str, signing_keys: Any, tmp_path: Path
) -> None:
    """The scale-out set-up end to end: PostgreSQL database, S3 artifacts, two replicas sharing them."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import ClientConfig
    from edgefleet.server import tokens
    from edgefleet.server.config import ServerConfig, Timing
    from edgefleet.server.db.engine import Database
    from edgefleet.server.db.schema import Base
    from edgefleet.server.runner import start_in_thread

    cleaner = Database(pg_url)
    with cleaner.engine.begin() as conn:
        conn.exec_driver_sql(
            "TRUNCATE " + ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables) + " CASCADE"
        )
    cleaner.close()
    prefix = f"s3://edgefleet-test/{uuid.uuid4().hex}"

    def replica(name: str) -> Any:
        config = ServerConfig(
            data_dir=tmp_path / name,
            database_url=pg_url,
            artifacts_uri=prefix,
            s3_endpoint_url=s3_endpoint,
            trust_dir=signing_keys.trust_dir,
            port=0,
            device_port=0,
            timing=Timing(shutdown_grace=1),
        )
        return start_in_thread(config)

    first, second = replica("a"), replica("b")
    try:
        assert first.state.ca.fingerprint == second.state.ca.fingerprint  # one fleet CA through the database
        with first.state.db.session() as session:
            token = tokens.create_token(session, "scale-ops", first.state.db.now())
        ops = [
            FleetClient(ClientConfig(r.endpoints.api_url, token, Path(r.endpoints.ca_cert)))
            for r in (first, second)
        ]
        package = build_test_package(signing_keys.directory, tmp_path / "pkg", "scaled", "1")
        ops[0].upload_package(package)
        ops[1].set_approval("scaled", "1", "Approved")
        ops[0].create_fleet("scale", "s3://edgefleet-test/captures")
        [reg] = ops[1].register_devices("scale", [{"DeviceName": "node-1"}])
        device = enrol(first.endpoints.api_url, reg["EnrolmentToken"], tmp_path / "node-1")
        ops[0].create_plan(
            {
                "EdgeDeploymentPlanName": "scaled-1",
                "DeviceFleetName": "scale",
                "ModelConfigs": [{"ModelHandle": "scaled", "ModelName": "scaled", "ModelVersion": "1"}],
                "Stages": [
                    {
                        "StageName": "all",
                        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 100},
                    }
                ],
            }
        )
        ops[1].start_stage("scaled-1", "all")
        # The device talks to the other replica: stateless replicas share everything.
        context = ssl.create_default_context(cafile=second.endpoints.ca_cert)
        context.load_cert_chain(str(tmp_path / "node-1" / "cert.pem"), str(tmp_path / "node-1" / "key.pem"))
        with httpx.Client(base_url=second.endpoints.device_url, verify=context) as http:
            body = {"DeviceName": "node-1", "DeviceFleetName": "scale"}
            [deployment] = http.post("/device/v1/GetDeployments", json=body).json()["Deployments"]
            [definition] = deployment["Definitions"]
            assert definition["S3Url"].startswith(prefix)
            blob = http.get(definition["PackageUrl"]).content
            assert (
                hashlib.sha256(blob).hexdigest()
                == definition["Sha256"]
                == hashlib.sha256(package.read_bytes()).hexdigest()
            )
            result = {
                **body,
                "DeploymentResult": {"DeploymentName": "scaled-1.all", "DeploymentStatus": "SUCCEEDED"},
            }
            assert (
                http.post("/device/v1/ReportDeploymentResult", json=result).json()["DeviceDeploymentStatus"]
                == "DEPLOYED"
            )
        assert ops[0].describe_plan("scaled-1")["Stages"][0]["DeploymentStatus"]["StageStatus"] == "DEPLOYED"
        device.close()
        for client in ops:
            client.close()
    finally:
        first.stop()
        second.stop()
