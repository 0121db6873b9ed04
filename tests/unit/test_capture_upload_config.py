"""capture.upload: how Cloud captures reach the store (aws, presigned, relay), its default and its refusals."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from edgefleet.agent.config import AgentConfig, CaptureSettings, load_config
from edgefleet.capture.sinks import open_sink
from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.storage.presigned import ControlPlaneStore, DeviceEndpoint, UploadMode

IDENTITY = {
    "device_cert_file": Path("/id/device.crt"),
    "device_key_file": Path("/id/device.key"),
    "ca_cert_file": Path("/id/ca.crt"),
}


def config(**capture: Any) -> AgentConfig:
    return AgentConfig(device_name="d1", fleet_name="f1", capture=CaptureSettings(**capture))


def test_presigned_is_the_default_with_a_control_plane_and_a_certificate() -> None:
    cloud = config(destination="Cloud", control_plane_url="https://cp:8444", **IDENTITY)
    assert cloud.capture_upload == "presigned"
    assert cloud.capture_destination == "https://cp:8444"
    assert (
        config(
            destination="Cloud", upload="relay", control_plane_url="https://cp:8444", **IDENTITY
        ).capture_upload
        == "relay"
    )
    # without a control plane (every vendor file: it has no such key) it is the AWS chain, as before
    assert config(destination="Cloud", s3_bucket="b", **IDENTITY).capture_upload == "aws"
    assert config(destination="Disk", control_plane_url="https://cp:8444", **IDENTITY).capture_upload == "aws"
    explicit = config(
        destination="Cloud", upload="aws", s3_bucket="b", control_plane_url="https://cp:8444", **IDENTITY
    )
    assert explicit.capture_upload == "aws" and explicit.capture_destination == "s3://b"


def test_vendor_certificate_keys_are_the_device_identity(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(
        json.dumps(
            {
                "sagemaker_edge_core_device_name": "d1",
                "sagemaker_edge_core_device_fleet_name": "f1",
                "sagemaker_edge_core_capture_data_destination": "Cloud",
                "sagemaker_edge_provider_s3_bucket_name": "b",
                "sagemaker_edge_provider_aws_cert_file": "/certs/device.pem.crt",
                "sagemaker_edge_provider_aws_cert_pk_file": "/certs/private.pem.key",
                "sagemaker_edge_provider_aws_ca_cert_file": "/certs/ca.pem",
            }
        )
    )
    loaded = load_config(path)
    assert loaded.capture.device_cert_file == Path("/certs/device.pem.crt")
    assert loaded.capture.device_key_file == Path("/certs/private.pem.key")
    assert loaded.capture.ca_cert_file == Path("/certs/ca.pem")
    assert loaded.capture_upload == "aws"


@pytest.mark.parametrize(
    ("capture", "match"),
    [
        (
            {"destination": "Cloud", "upload": "ftp"},
            r"capture.upload 'ftp' is unknown \(known: aws, presigned, relay\)",
        ),
        ({"destination": "Disk", "upload": "relay"}, "applies to the Cloud destination, not Disk"),
        (
            {"destination": "Cloud", "upload": "presigned", "control_plane_url": "https://cp"},
            r"needs: capture.device_cert_file \(sagemaker_edge_provider_aws_cert_file\), capture.device_key_file",
        ),
        ({"destination": "Cloud", "upload": "relay", **IDENTITY}, "needs: capture.control_plane_url$"),
        (
            {"destination": "Cloud", "control_plane_url": "https://cp", "folder_prefix": "pre", **IDENTITY},
            "folder_prefix must be empty, not 'pre'",
        ),
        ({"destination": "Cloud", "upload": "aws"}, "capture destination Cloud needs a bucket"),
    ],
)
def test_bad_upload_settings_are_refused(capture: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        config(**capture)


def test_open_sink_by_upload_mode(tmp_path: Path) -> None:
    endpoint = DeviceEndpoint("https://cp:8444", "d1", "f1", tmp_path / "c", tmp_path / "k", tmp_path / "ca")
    sink = open_sink("ignored", upload="relay", control_plane=endpoint)
    assert isinstance(sink.store, ControlPlaneStore) and sink.store.mode is UploadMode.RELAY
    with pytest.raises(
        InvalidArgument, match=r"capture upload mode 'ftp' is unknown \(known: aws, presigned, relay\)"
    ):
        open_sink("ignored", upload="ftp")
    with pytest.raises(
        FailedPrecondition, match="needs the control plane's device URL and this device's certificate"
    ):
        open_sink("ignored", upload="presigned")
    with pytest.raises(FailedPrecondition, match=r"need the device certificate .*/c: no such file"):
        sink.check()
    with pytest.raises(InvalidArgument, match="must be https://host"):
        ControlPlaneStore(DeviceEndpoint("http://cp", "d1", "f1", tmp_path, tmp_path, tmp_path))
    with pytest.raises(FailedPrecondition, match="cannot be read, listed or deleted from the device"):
        sink.get("f1/m/x.jsonl")
