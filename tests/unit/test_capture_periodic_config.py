"""Disk with periodic upload: the vendor and native keys, their refusals, and the transfer queue
with a directory standing in for the cloud store (the S3 tests are in tests/integration)."""

from __future__ import annotations

import json
import logging
import sqlite3
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgefleet.agent.config import AgentConfig, CaptureSettings, load_config
from edgefleet.capture import CaptureConfig, CaptureRequest, CaptureService, CaptureStatus, CaptureTensor
from edgefleet.capture.records import rebase_data_refs
from edgefleet.capture.sinks import DiskSink, Sink
from edgefleet.capture.spool import DB_FILE
from edgefleet.core.errors import FailedPrecondition, InvalidArgument
from edgefleet.core.tensors import DataType
from edgefleet.storage.memory import MemoryStore

IDENTITY = {
    "device_cert_file": Path("/id/device.crt"),
    "device_key_file": Path("/id/device.key"),
    "ca_cert_file": Path("/id/ca.crt"),
}


def config(**capture: Any) -> AgentConfig:
    return AgentConfig(device_name="d1", fleet_name="f1", capture=CaptureSettings(**capture))


def test_the_vendor_keys_map_to_periodic_upload(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "agent.json"
    path.write_text(
        json.dumps(
            {
                "sagemaker_edge_core_device_name": "d1",
                "sagemaker_edge_core_device_fleet_name": "f1",
                "sagemaker_edge_core_capture_data_destination": "Disk",
                "sagemaker_edge_core_capture_data_periodic_upload": "true",
                "sagemaker_edge_core_capture_data_periodic_upload_period_seconds": 3,
                "sagemaker_edge_provider_s3_bucket_name": "b",
            }
        )
    )
    with caplog.at_level(logging.WARNING):
        loaded = load_config(path)
    assert loaded.capture.periodic_upload and loaded.periodic_upload
    assert loaded.capture.periodic_upload_period_seconds == 3.0
    assert loaded.capture_upload == "aws" and loaded.capture_cloud_target == "s3://b"
    assert loaded.capture_destination == str(loaded.capture_disk_path)  # Disk stays the destination
    assert caplog.records == []  # neither "unknown" nor "not available"


def test_the_native_keys_and_the_upload_modes() -> None:
    native = config(periodic_upload=True, periodic_upload_period_seconds=2, s3_bucket="b")
    assert native.periodic_upload and native.uploads_to_cloud
    # with a control plane and the certificate, presigned is the default, as for Cloud
    through = config(periodic_upload=True, control_plane_url="https://cp:8444", **IDENTITY)
    assert through.capture_upload == "presigned" and through.capture_cloud_target == "https://cp:8444"
    relay = config(periodic_upload=True, upload="relay", control_plane_url="https://cp:8444", **IDENTITY)
    assert relay.capture_upload == "relay"
    # off: Disk only, and the defaults are as before
    assert (
        not config().periodic_upload
        and config(**IDENTITY, control_plane_url="https://x").capture_upload == "aws"
    )


@pytest.mark.parametrize(
    ("capture", "match"),
    [
        ({"periodic_upload": True}, "capture destination Disk with periodic upload needs a bucket"),
        (
            {"periodic_upload": True, "upload": "presigned", "control_plane_url": "https://cp:8444"},
            r"capture.upload = presigned sends captures through the control plane over mutual TLS and "
            r"needs: capture.device_cert_file .* \(for Disk with periodic upload\)$",
        ),
        (
            {
                "periodic_upload": True,
                "folder_prefix": "pre",
                "control_plane_url": "https://cp:8444",
                **IDENTITY,
            },
            "folder_prefix must be empty",
        ),
        (
            {"periodic_upload": True, "s3_bucket": "b", "periodic_upload_period_seconds": 0},
            "must be positive",
        ),
        (
            {"upload": "relay"},
            r"applies to the Cloud destination, not Disk \(or to Disk with periodic_upload",
        ),
    ],
)
def test_bad_periodic_upload_settings_are_refused(capture: dict[str, Any], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        config(**capture)


def test_periodic_upload_with_cloud_is_warned_and_has_no_effect(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        '[device]\nname = "d1"\nfleet = "f1"\n[capture]\ndestination = "Cloud"\ns3_bucket = "b"\n'
        "periodic_upload = true\n"
    )
    with caplog.at_level(logging.WARNING):
        loaded = load_config(path)
    assert not loaded.periodic_upload
    assert "periodic upload applies to the Disk destination; with Cloud it has no effect" in caplog.text


# --- the transfer queue, a directory standing in for the cloud -----------------------------------

NOW = datetime(2026, 3, 4, 5, 6, 7, tzinfo=UTC)


def capture(big: bool = True) -> CaptureRequest:
    x = np.arange(6, dtype=np.float32)
    return CaptureRequest(
        model_name="m",
        model_version="1",
        capture_id=str(uuid.uuid4()),
        inference_time=NOW,
        inputs=(CaptureTensor("x", DataType.FLOAT32, (6,), x.tobytes()),),
        outputs=(CaptureTensor("y", DataType.FLOAT32, (1000,), np.ones(1000, np.float32).tobytes()),)
        if big
        else (),
    )


def make(tmp_path: Path, cloud: Sink | None, sink: Sink | None = None) -> CaptureService:
    return CaptureService(
        CaptureConfig(
            spool_dir=tmp_path / "spool",
            destination_root=tmp_path / "disk",
            device_name="d1",
            fleet_name="f1",
            fsync=False,
        ),
        sink if sink is not None else DiskSink(tmp_path / "disk", fsync=False),
        clock=lambda: NOW,
        start=False,
        periodic_upload=cloud,
    )


def test_periodic_upload_needs_a_disk_destination_and_transfer_now_needs_it_on(tmp_path: Path) -> None:
    with pytest.raises(InvalidArgument, match="periodic upload uploads what Disk holds"):
        make(tmp_path, DiskSink(tmp_path / "cloud"), sink=Sink(MemoryStore(f"periodic-{uuid.uuid4().hex}")))
    service = make(tmp_path, None)
    try:
        with pytest.raises(FailedPrecondition, match="periodic upload is off"):
            service.transfer_now()
        assert service.stats()["periodic_upload"] is False
    finally:
        service.close()


def test_an_object_gone_from_disk_is_given_up_and_does_not_block_the_queue(tmp_path: Path) -> None:
    cloud = DiskSink(tmp_path / "cloud", fsync=False)
    service = make(tmp_path, cloud)
    try:
        lost, kept = capture(), capture()
        service.submit(lost)
        service.flush()
        (gone,) = (tmp_path / "disk").rglob("*.jsonl")
        gone.unlink()
        service.submit(kept)
        service.flush()
        service.transfer_now()
        stats = service.stats()
        assert (
            stats["transfer_given_up"] == 1 and stats["transferred"] == 1 and stats["transfer_pending"] == 0
        )
        assert stats["transfer_last_error"].startswith("NOT_FOUND: no capture object")
        (entry,) = service.uploads().entries  # only the object the cloud has
        assert service.status(lost.capture_id) is CaptureStatus.SUCCESS  # Disk had confirmed it
    finally:
        service.close()
    assert [k for k in cloud.list("") if k.endswith(".jsonl")] == [entry.upload.key]
    body = cloud.get(entry.upload.key)
    assert json.loads(body)["eventMetadata"]["eventId"] == kept.capture_id
    ref = json.loads(body)["deviceFleetOutputs"][0]["data-ref"]
    assert (
        ref.startswith((tmp_path / "cloud").as_uri())
        and cloud.read_uri(ref) == np.ones(1000, np.float32).tobytes()
    )


def test_queued_objects_wait_while_periodic_upload_is_off(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cloud = DiskSink(tmp_path / "cloud", fsync=False)
    service = make(tmp_path, cloud)
    service.submit(capture(big=False))
    service.flush()
    service.close()
    with caplog.at_level(logging.WARNING):
        off = make(tmp_path, None)
    off.close()
    assert "1 object(s) on Disk wait for a periodic upload, which is off now" in caplog.text
    on = make(tmp_path, cloud)
    try:
        on.transfer_now()
        assert [e.upload.key for e in on.uploads().entries] == [
            k for k in cloud.list("") if k.endswith(".jsonl")
        ]
    finally:
        on.close()


def test_rebase_refuses_what_is_not_a_record() -> None:
    with pytest.raises(InvalidArgument, match="line 1 of a capture object in d is not a record"):
        rebase_data_refs(b"not json\n", "d", lambda key: key)
    line = json.dumps(
        {s: [] for s in ("deviceFleetInputs", "deviceFleetOutputs", "deviceFleetAuxiliaryInputs")}
        | {"deviceFleetAuxiliaryOutputs": [{"data-ref": "file:///elsewhere/passwd"}]}
    ).encode()
    with pytest.raises(InvalidArgument, match="is not a raw-data file"):
        rebase_data_refs(line, "d", lambda key: key)


def test_a_schema_2_spool_gains_the_transfer_queue(tmp_path: Path) -> None:
    service = make(tmp_path, None)
    request = capture(big=False)
    service.submit(request)
    service.close(flush=False)
    with sqlite3.connect(tmp_path / "spool" / DB_FILE) as db:
        db.execute("DROP TABLE transfers")
        db.execute("PRAGMA user_version = 2")
    db.close()
    cloud = DiskSink(tmp_path / "cloud", fsync=False)
    again = make(tmp_path, cloud)
    try:
        again.flush()
        again.transfer_now()
        assert again.status(request.capture_id) is CaptureStatus.SUCCESS
        assert len(again.uploads().entries) == 1
    finally:
        again.close()
