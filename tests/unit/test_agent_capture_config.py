"""The agent's capture settings: Cloud destination, byte bound, full policy (native and vendor keys)."""

from __future__ import annotations

import json
from pathlib import Path

import psutil
import pytest

from edgefleet.agent.config import AgentConfig, CaptureSettings, load_config
from edgefleet.core.errors import InvalidArgument


def test_vendor_cloud_keys_choose_the_bucket(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(
        json.dumps(
            {
                "sagemaker_edge_core_device_name": "d1",
                "sagemaker_edge_core_device_fleet_name": "f1",
                "sagemaker_edge_core_capture_data_destination": "Cloud",
                "sagemaker_edge_provider_s3_bucket_name": "my-captures",
            }
        )
    )
    config = load_config(path)
    assert config.capture.destination == "Cloud"
    assert config.capture_destination == "s3://my-captures"


def test_native_capture_knobs(tmp_path: Path) -> None:
    path = tmp_path / "agent.json"
    path.write_text(
        json.dumps(
            {
                "device": {"name": "d1", "fleet": "f1"},
                "capture": {
                    "destination": "Cloud",
                    "s3_bucket": "b",
                    "s3_endpoint_url": "http://127.0.0.1:9000",
                    "buffer_bytes": 1234,
                    "full_policy": "drop-oldest",
                },
            }
        )
    )
    config = load_config(path)
    assert (config.capture.s3_endpoint_url, config.capture_buffer_bytes()) == ("http://127.0.0.1:9000", 1234)
    assert config.capture.full_policy == "drop-oldest"


def test_the_default_byte_bound_is_a_tenth_of_the_free_disk(tmp_path: Path) -> None:
    config = AgentConfig(device_name="d1", fleet_name="f1", data_dir=tmp_path / "not-made-yet")
    expected = psutil.disk_usage(str(tmp_path)).free // 10
    assert config.capture_buffer_bytes() == pytest.approx(expected, rel=0.05)
    assert config.capture_destination == str(tmp_path / "not-made-yet" / "capture")


@pytest.mark.parametrize(
    ("capture", "match"),
    [
        ({"destination": "Cloud"}, "capture destination Cloud needs a bucket"),
        ({"destination": "Tape"}, r"capture destination 'Tape' unknown \(known: Disk, Cloud\)"),
        ({"full_policy": "drop-newest"}, r"full policy 'drop-newest' unknown \(known: reject, drop-oldest\)"),
        ({"buffer_bytes": -1}, "buffer_bytes must be >= 0"),
    ],
)
def test_bad_capture_settings_are_refused(capture: dict[str, object], match: str) -> None:
    with pytest.raises(InvalidArgument, match=match):
        AgentConfig(device_name="d1", fleet_name="f1", capture=CaptureSettings(**capture))  # type: ignore[arg-type]
