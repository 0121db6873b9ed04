"""The capture record codec and key layout (docs/capture-format.md), without any I/O."""

from __future__ import annotations

import base64
import json
import math
import uuid
from datetime import UTC, datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.capture.records import (
    AUX_CONTENT_TYPES,
    SECTIONS,
    CaptureAux,
    CaptureRequest,
    CaptureTensor,
    canonical_capture_id,
    decode_record,
    encode_record,
    entry_array,
    object_dir,
    object_key,
    parse_tensor_content_type,
    partition_of,
    raw_key,
    tensor_content_type,
    validate_request,
)
from edgefleet.core.errors import Code, InvalidArgument, OutOfRange
from edgefleet.core.tensors import DataType

NOW = datetime(2030, 1, 1, tzinfo=UTC)
SKEW = timedelta(seconds=5)
DIRECTORY = "pre/fleet/model/2024/05/06/07"


def mem_uri(key: str) -> str:
    return f"mem://{key}"


def encode(request: CaptureRequest, embed_limit: int = 3072) -> tuple[bytes, dict[str, bytes]]:
    """Encode a request; return its line and its raw files keyed by URI."""
    encoded = encode_record(
        validate_request(request, NOW, clock_skew=SKEW),
        device_name="dev-1",
        fleet_name="fleet",
        directory=DIRECTORY,
        embed_limit=embed_limit,
        uri=mem_uri,
    )
    return encoded.line, {mem_uri(raw.key): raw.data for raw in encoded.raw}


def request(**changes: object) -> CaptureRequest:
    base: dict[str, object] = {
        "capture_id": "123e4567-e89b-12d3-a456-426614174000",
        "model_name": "digits",
        "model_version": "1.0",
        "inference_time": datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC),
        "inputs": (CaptureTensor("x", DataType.FLOAT32, (1, 64), bytes(256)),),
        "outputs": (CaptureTensor("y", DataType.INT64, (1,), bytes(8)),),
    }
    base.update(changes)
    return CaptureRequest(**base)  # type: ignore[arg-type]


# --- property test: encode then decode gives the request back ------------------------------------


@st.composite
def tensors(draw: st.DrawFn) -> CaptureTensor:
    dtype = draw(st.sampled_from(list(DataType)))
    shape = tuple(draw(st.lists(st.integers(0, 6), max_size=3)))
    data = draw(
        st.binary(min_size=math.prod(shape) * dtype.itemsize, max_size=math.prod(shape) * dtype.itemsize)
    )
    name = draw(st.text(st.characters(blacklist_categories=["Cs"]), max_size=12))
    return CaptureTensor(name=name, dtype=dtype, shape=shape, data=data)


@st.composite
def auxes(draw: st.DrawFn) -> CaptureAux:
    encoding = draw(st.sampled_from(["CSV", "JSON", "NONE", "BASE64"]))
    if encoding == "CSV":
        data = draw(st.text(max_size=40)).encode("utf-8")
    elif encoding == "JSON":
        value = draw(
            st.recursive(
                st.none() | st.booleans() | st.integers() | st.text(max_size=5),
                lambda c: st.lists(c, max_size=3),
                max_leaves=5,
            )
        )
        data = json.dumps(value).encode("utf-8")
    elif encoding == "BASE64":
        data = base64.b64encode(draw(st.binary(max_size=50)))
    else:
        data = draw(st.binary(max_size=4000))
    return CaptureAux(name=draw(st.text(max_size=8)), encoding=encoding, data=data)


def spellings(value: uuid.UUID) -> st.SearchStrategy[str]:
    text = str(value)
    return st.sampled_from([text, text.upper(), "{" + text + "}", "urn:uuid:" + text, value.hex])


@settings(max_examples=150, deadline=None)
@given(
    capture_id=st.uuids().flatmap(spellings),
    inputs=st.lists(tensors(), max_size=3),
    outputs=st.lists(tensors(), max_size=3),
    aux_in=st.lists(auxes(), max_size=2),
    aux_out=st.lists(auxes(), max_size=2),
    when=st.datetimes(
        min_value=datetime(1971, 1, 1), max_value=datetime(2029, 12, 31), timezones=st.just(UTC)
    ),
    embed_limit=st.integers(0, 3072),
)
def test_record_round_trip(
    capture_id: str,
    inputs: list[CaptureTensor],
    outputs: list[CaptureTensor],
    aux_in: list[CaptureAux],
    aux_out: list[CaptureAux],
    when: datetime,
    embed_limit: int,
) -> None:
    original = CaptureRequest(
        capture_id=capture_id,
        model_name="m-1",
        model_version="2.0 beta",
        inference_time=when,
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        aux_inputs=tuple(aux_in),
        aux_outputs=tuple(aux_out),
    )
    line, files = encode(original, embed_limit)
    assert line.endswith(b"\n")
    assert line.count(b"\n") == 1

    decoded = decode_record(line, files.__getitem__)
    assert decoded.device_name == "dev-1"
    assert decoded.fleet_name == "fleet"
    assert decoded.request == CaptureRequest(
        capture_id=capture_id,  # the eventId is the id exactly as the client sent it
        model_name="m-1",
        model_version="2.0 beta",
        inference_time=when.replace(microsecond=0),
        inputs=tuple(inputs),
        outputs=tuple(outputs),
        aux_inputs=tuple(aux_in),
        aux_outputs=tuple(aux_out),
    )

    record = json.loads(line)
    for section, items in (("deviceFleetInputs", inputs), ("deviceFleetOutputs", outputs)):
        for entry, tensor in zip(record[section], items, strict=True):
            # each entry alone (plus its raw file) rebuilds the array
            array = entry_array(entry, files.__getitem__)
            expected = np.frombuffer(tensor.data, dtype=tensor.dtype.numpy).reshape(tensor.shape)
            assert array.dtype == expected.dtype
            assert array.shape == expected.shape
            assert array.tobytes() == expected.tobytes()
            assert entry["encoding"] == "BASE64"
    for key, mode, _ in SECTIONS:
        for entry in record[key]:
            assert entry["mode"] == mode
            assert ("data" in entry) != ("data-ref" in entry)
    sizes = [len(t.data) for t in (*inputs, *outputs)] + [len(a.data) for a in (*aux_in, *aux_out)]
    assert len(files) == sum(1 for size in sizes if size > embed_limit)


# --- the record's exact shape ----------------------------------------------------------------------


def test_record_has_the_documented_fields() -> None:
    line, files = encode(
        request(
            aux_inputs=(CaptureAux("meta", "json", b'{"k": 1}'),),
            aux_outputs=(CaptureAux("note", "CSV", b"a,b\n1,2\n"),),
        )
    )
    record = json.loads(line)
    assert list(record) == [
        "eventVersion",
        "eventMetadata",
        "deviceFleetInputs",
        "deviceFleetOutputs",
        "deviceFleetAuxiliaryInputs",
        "deviceFleetAuxiliaryOutputs",
    ]
    assert record["eventVersion"] == "0"
    assert record["eventMetadata"] == {
        "eventId": "123e4567-e89b-12d3-a456-426614174000",
        "deviceId": "dev-1",
        "deviceFleetName": "fleet",
        "modelName": "digits",
        "modelVersion": "1.0",
        "inferenceTime": "2024-05-06T07:08:09",
    }
    assert record["deviceFleetInputs"] == [
        {
            "name": "x",
            "encoding": "BASE64",
            "mode": "Input",
            "observedContentType": "Tensor[FLOAT32; 1, 64]",
            "data": base64.b64encode(bytes(256)).decode(),
        }
    ]
    assert record["deviceFleetOutputs"][0]["mode"] == "Output"
    assert record["deviceFleetOutputs"][0]["observedContentType"] == "Tensor[INT64; 1]"
    assert record["deviceFleetAuxiliaryInputs"] == [
        {
            "name": "meta",
            "encoding": "JSON",  # normalised to the enum name
            "mode": "Input",
            "observedContentType": AUX_CONTENT_TYPES["JSON"],
            "data": base64.b64encode(b'{"k": 1}').decode(),
        }
    ]
    assert record["deviceFleetAuxiliaryOutputs"][0]["encoding"] == "CSV"
    assert record["deviceFleetAuxiliaryOutputs"][0]["mode"] == "Output"
    assert files == {}


def test_inference_time_is_written_in_utc() -> None:
    local = datetime(2024, 5, 6, 9, 8, 9, tzinfo=timezone(timedelta(hours=2)))
    line, _ = encode(request(inference_time=local))
    assert json.loads(line)["eventMetadata"]["inferenceTime"] == "2024-05-06T07:08:09"


@pytest.mark.parametrize(
    ("size", "embedded"),
    [(0, True), (3071, True), (3072, True), (3073, False), (10_000, False)],
)
def test_embed_limit_boundary(size: int, embedded: bool) -> None:
    line, files = encode(
        request(
            inputs=(
                CaptureTensor(
                    "img", DataType.UINT8, (size,), bytes(range(256)) * (size // 256) + bytes(size % 256)
                ),
            ),
            aux_outputs=(CaptureAux("blob", "NONE", b"\x01" * size),),
        )
    )
    record = json.loads(line)
    for entry in (record["deviceFleetInputs"][0], record["deviceFleetAuxiliaryOutputs"][0]):
        assert ("data" in entry) is embedded
        assert ("data-ref" in entry) is not embedded
    if not embedded:
        capture_hex = "123e4567e89b12d3a456426614174000"
        assert record["deviceFleetInputs"][0]["data-ref"] == (
            f"mem://{DIRECTORY}/raw-data/{capture_hex}-input-0.bin"
        )
        assert record["deviceFleetAuxiliaryOutputs"][0]["data-ref"] == (
            f"mem://{DIRECTORY}/raw-data/{capture_hex}-auxoutput-0.bin"
        )
        assert sorted(len(data) for data in files.values()) == [size, size]


def test_encoding_is_deterministic() -> None:
    big = request(inputs=(CaptureTensor("x", DataType.UINT8, (5000,), bytes(5000)),))
    assert encode(big) == encode(big)


# --- content types and layout ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dtype", "shape", "text"),
    [
        (DataType.FLOAT32, (1, 64), "Tensor[FLOAT32; 1, 64]"),
        (DataType.UINT8, (1, 3, 224, 224), "Tensor[UINT8; 1, 3, 224, 224]"),
        (DataType.FLOAT16, (0,), "Tensor[FLOAT16; 0]"),
        (DataType.INT32, (), "Tensor[INT32; ]"),
    ],
)
def test_tensor_content_type(dtype: DataType, shape: tuple[int, ...], text: str) -> None:
    assert tensor_content_type(dtype, shape) == text
    assert parse_tensor_content_type(text) == (dtype, shape)


@pytest.mark.parametrize("text", ["Tensor[FLOAT32]", "float32[1,2]", "Tensor[FLOAT32; -1]", "text/csv"])
def test_bad_content_type(text: str) -> None:
    with pytest.raises(InvalidArgument, match="observedContentType"):
        parse_tensor_content_type(text)


def test_layout_keys() -> None:
    when = datetime(2024, 1, 31, 23, 59, 59, tzinfo=timezone(timedelta(hours=-3)))
    assert partition_of(when) == "2024/02/01/02"  # the UTC hour
    assert object_dir("", "fleet", "m", "2024/02/01/02") == "fleet/m/2024/02/01/02"
    assert object_dir("/a/b/", "fleet", "m", "2024/02/01/02") == "a/b/fleet/m/2024/02/01/02"
    batch = "0123456789abcdef0123456789abcdef"
    assert object_key("fleet/m/2024/02/01/02", batch) == f"fleet/m/2024/02/01/02/{batch}.jsonl"
    with pytest.raises(InvalidArgument, match="32 lower-case hex"):
        object_key("d", "not-hex")
    assert raw_key("d", "{123E4567-E89B-12D3-A456-426614174000}", "output", 2, "JSON") == (
        "d/raw-data/123e4567e89b12d3a456426614174000-output-2.json"
    )


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "123e4567-e89b-12d3-a456-426614174000",
        "123E4567-E89B-12D3-A456-426614174000",
        "{123e4567-e89b-12d3-a456-426614174000}",
        "urn:uuid:123e4567-e89b-12d3-a456-426614174000",
        "123e4567e89b12d3a456426614174000",
    ],
)
def test_capture_id_spellings(text: str) -> None:
    assert canonical_capture_id(text) == "123e4567-e89b-12d3-a456-426614174000"


def test_any_uuid_version_is_accepted() -> None:
    nil = "00000000-0000-0000-0000-000000000000"
    assert canonical_capture_id(nil) == nil
    assert canonical_capture_id(str(uuid.uuid1())) != canonical_capture_id(str(uuid.uuid4()))


@pytest.mark.parametrize(
    "text",
    [
        "",
        "capture-1",
        "123e4567-e89b-12d3-a456-42661417400",
        "123e4567-e89b-12d3-a456-4266141740000",
        "123e4567-e89b-12d3-a456-42661417400g",
        " 123e4567-e89b-12d3-a456-426614174000",
        "123e4567e89b-12d3-a456-426614174000",
        "{123e4567-e89b-12d3-a456-426614174000",
        "1" * 1000,
    ],
)
def test_malformed_capture_id(text: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a UUID string") as info:
        canonical_capture_id(text)
    assert info.value.code is Code.INVALID_ARGUMENT


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"model_name": "../etc"}, "capture model name"),
        ({"model_version": ""}, "model version must not be empty"),
        ({"inference_time": datetime(2024, 1, 1)}, "must be a timezone-aware datetime"),
        (
            {"inputs": (CaptureTensor("x", DataType.FLOAT32, (1, 64), bytes(255)),)},
            "255 bytes of data, but FLOAT32",
        ),
        ({"outputs": (CaptureTensor("y", DataType.INT16, (2, -1), b""),)}, "must be non-negative integers"),
        ({"inputs": (CaptureTensor("x", 9, (1,), b"\0"),)}, "unknown data type 9"),  # type: ignore[arg-type]
        ({"inputs": (CaptureTensor("x", DataType.UINT8, (1,), bytearray(1)),)}, "data must be bytes"),  # type: ignore[arg-type]
        ({"inputs": (CaptureTensor("\udc80", DataType.UINT8, (1,), b"\0"),)}, "not valid Unicode"),
        ({"aux_inputs": (CaptureAux("a", "XML", b"<a/>"),)}, "unknown encoding 'XML'"),
        ({"aux_inputs": (CaptureAux("a", "JSON", b"{nope"),)}, "not valid JSON"),
        ({"aux_outputs": (CaptureAux("a", "CSV", b"\xff\xfe"),)}, "not valid CSV"),
        ({"aux_outputs": (CaptureAux("a", "BASE64", b"abc"),)}, "not valid BASE64"),
    ],
)
def test_invalid_requests(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_request(request(**changes), NOW, clock_skew=SKEW)


def test_future_inference_time_beyond_skew() -> None:
    validate_request(request(inference_time=NOW + SKEW), NOW, clock_skew=SKEW)
    with pytest.raises(OutOfRange, match="is in the future") as info:
        validate_request(request(inference_time=NOW + SKEW + timedelta(microseconds=1)), NOW, clock_skew=SKEW)
    assert info.value.code is Code.OUT_OF_RANGE


def test_validation_normalises() -> None:
    local = datetime(2024, 1, 1, 12, tzinfo=timezone(timedelta(hours=1)))
    valid = validate_request(
        request(
            inference_time=local,
            inputs=(CaptureTensor("x", 5, [2], bytes(8)),),  # type: ignore[arg-type]
            aux_inputs=(CaptureAux("b", "base64", b"YWJj\n"),),
        ),
        NOW,
        clock_skew=SKEW,
    )
    assert valid.inference_time == datetime(2024, 1, 1, 11, tzinfo=UTC)
    assert valid.inference_time.tzinfo is UTC
    assert valid.inputs[0].dtype is DataType.FLOAT32
    assert valid.inputs[0].shape == (2,)
    assert valid.aux_inputs[0].encoding == "BASE64"


def test_decode_rejects_malformed_records() -> None:
    with pytest.raises(InvalidArgument, match="not JSON"):
        decode_record(b"{", lambda uri: b"")
    with pytest.raises(InvalidArgument, match="eventVersion"):
        decode_record(b'{"eventVersion": "1"}', lambda uri: b"")
    line, _ = encode(request())
    record = json.loads(line)
    record["deviceFleetInputs"][0]["data-ref"] = "mem://x"
    with pytest.raises(InvalidArgument, match="exactly one of 'data' and 'data-ref'"):
        decode_record(json.dumps(record), lambda uri: b"")
    record = json.loads(line)
    record["deviceFleetOutputs"][0]["mode"] = "Input"
    with pytest.raises(InvalidArgument, match="has mode 'Input', not 'Output'"):
        decode_record(json.dumps(record), lambda uri: b"")
