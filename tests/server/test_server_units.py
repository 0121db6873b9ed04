"""Small pure pieces of the control plane and its CLI: range parsing, CLI stage/model syntax, page tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.cli.deploy import parse_model, parse_stage
from edgefleet.core.errors import InvalidArgument, OutOfRange
from edgefleet.server.api.ranges import parse_range
from edgefleet.server.validation import (
    decode_page_token,
    encode_page_token,
    parse_tag_filters,
    validate_output_location,
)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 900)),
        ("bytes=-10", (990, 10)),
        ("bytes=-5000", (0, 1000)),
        ("bytes=900-5000", (900, 100)),
        ("bytes=0-1,5-6", None),  # multi-range: the whole object
        ("items=0-1", None),
    ],
)
def test_parse_range(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5-2", "bytes=-0"])
def test_unsatisfiable_ranges(header: str) -> None:
    with pytest.raises(OutOfRange, match="range"):
        parse_range(header, 1000)


def test_cli_stage_and_model_syntax() -> None:
    assert parse_stage("canary percent=10 threshold=0.2 policy=DO_NOTHING") == {
        "StageName": "canary",
        "DeviceSelectionConfig": {"DeviceSubsetType": "PERCENTAGE", "Percentage": 10},
        "DeploymentConfig": {"FailureHandlingPolicy": "DO_NOTHING", "FailureThreshold": 0.2},
    }
    assert parse_stage("lab names=a,b")["DeviceSelectionConfig"] == {
        "DeviceSubsetType": "SELECTION",
        "DeviceNames": ["a", "b"],
    }
    assert parse_stage("ring tags=ring:canary,site:x")["DeviceSelectionConfig"]["DeviceTags"] == {
        "ring": "canary",
        "site": "x",
    }
    assert parse_stage("cams contains=cam")["DeviceSelectionConfig"]["DeviceNameContains"] == "cam"
    with pytest.raises(InvalidArgument, match="needs exactly one of"):
        parse_stage("s percent=1 names=a")
    with pytest.raises(InvalidArgument, match="unknown option"):
        parse_stage("s percent=1 colour=red")
    with pytest.raises(InvalidArgument, match="invalid literal"):
        parse_stage("s percent=ten")
    assert parse_model("det=detector:7") == {
        "ModelHandle": "det",
        "ModelName": "detector",
        "ModelVersion": "7",
    }
    assert parse_model("detector@champion") == {
        "ModelHandle": "detector",
        "ModelName": "detector",
        "ModelAlias": "champion",
    }
    with pytest.raises(InvalidArgument, match="must look like"):
        parse_model("detector")


def test_page_tokens_and_filters() -> None:
    assert decode_page_token(encode_page_token(150)) == 150
    assert decode_page_token(None) == 0
    with pytest.raises(InvalidArgument, match="not a token this server issued"):
        decode_page_token(encode_page_token(1)[:-2] + "!!")
    assert parse_tag_filters(["a=1", "b="]) == {"a": "1", "b": ""}
    with pytest.raises(InvalidArgument, match="must look like KEY=VALUE"):
        parse_tag_filters(["novalue"])
    with pytest.raises(InvalidArgument, match="names no bucket"):
        validate_output_location("s3:///prefix")


def test_listening_sockets_say_tcp_so_responses_are_not_delayed() -> None:
    """asyncio sets TCP_NODELAY only on accepted sockets whose proto is TCP (else ~40 ms per response)."""
    import socket

    from edgefleet.server.runner import _bind

    sock = _bind("127.0.0.1", 0)
    try:
        assert sock.proto == socket.IPPROTO_TCP
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        sock.close()


def test_unusable_operator_tls_files_are_refused_up_front(tmp_path: Path) -> None:
    from edgefleet.core.errors import FailedPrecondition
    from edgefleet.server.tls import check_pair

    bad = tmp_path / "bad.pem"
    bad.write_text("not a certificate")
    with pytest.raises(FailedPrecondition, match=r"cannot use .* as the server certificate and key"):
        check_pair(bad, bad)
