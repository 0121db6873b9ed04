"""Capture requests, their validation, and the Edge-Manager-compatible record format and key layout.

This module is the codec of docs/capture-format.md: it turns a validated :class:`CaptureRequest`
into one JSON Lines record (plus the raw payload files too big to embed), and reads such a record
back into arrays and bytes. It does no I/O of its own: writing is the sink's job, buffering the
spool's.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import urllib.parse
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta

import numpy as np

from edgefleet.core.errors import InvalidArgument, OutOfRange, quoted, shorten
from edgefleet.core.manifest import validate_model_name
from edgefleet.core.tensors import DataType, shape_str

#: The record format version written in ``eventVersion``.
EVENT_VERSION = "0"
#: Largest payload (raw bytes) that may be embedded as base64; the default and the maximum.
MAX_EMBED_LIMIT = 3072
#: Auxiliary data encodings (the wire ``Encoding`` enum names).
ENCODINGS = ("CSV", "JSON", "NONE", "BASE64")
#: ``encoding`` written for tensor entries: their ``data`` is base64 of raw binary bytes.
TENSOR_ENCODING = "BASE64"
#: ``observedContentType`` of auxiliary entries, by encoding.
AUX_CONTENT_TYPES: Mapping[str, str] = {
    "CSV": "text/csv",
    "JSON": "application/json",
    "NONE": "application/octet-stream",
    "BASE64": "text/plain",
}
#: Raw-data file extension by payload kind ("TENSOR" or an aux encoding).
_RAW_EXTENSIONS: Mapping[str, str] = {
    "TENSOR": ".bin",
    "CSV": ".csv",
    "JSON": ".json",
    "NONE": ".bin",
    "BASE64": ".b64",
}
#: Record sections: (JSON key, mode, raw-data file tag).
SECTIONS: tuple[tuple[str, str, str], ...] = (
    ("deviceFleetInputs", "Input", "input"),
    ("deviceFleetOutputs", "Output", "output"),
    ("deviceFleetAuxiliaryInputs", "Input", "auxinput"),
    ("deviceFleetAuxiliaryOutputs", "Output", "auxoutput"),
)

#: A raw-data file's name (see :func:`raw_key`).
_RAW_NAME_RE = re.compile(r"[0-9a-f]{32}-(input|output|auxinput|auxoutput)-[0-9]+\.(bin|csv|json|b64)")

_HEX = "[0-9a-fA-F]"
_UUID_HYPHENATED = f"{_HEX}{{8}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{4}}-{_HEX}{{12}}"
# The standard textual forms of a UUID: 8-4-4-4-12, the same in braces or as a URN, or 32 hex digits.
_CAPTURE_ID_RE = re.compile(
    rf"(?:[uU][rR][nN]:[uU][uU][iI][dD]:)?{_UUID_HYPHENATED}|\{{{_UUID_HYPHENATED}\}}|{_HEX}{{32}}"
)
_CONTENT_TYPE_RE = re.compile(r"Tensor\[([A-Z0-9]+);\s*((?:\d+(?:,\s*\d+)*)?)\s*\]")
_INFERENCE_TIME_FORMAT = "%Y-%m-%dT%H:%M:%S"


@dataclass(frozen=True)
class CaptureTensor:
    """A captured tensor (from ``input_tensors``/``output_tensors``): raw little-endian C-order bytes."""

    name: str
    dtype: DataType
    shape: tuple[int, ...]
    data: bytes


@dataclass(frozen=True)
class CaptureAux:
    """Captured auxiliary data (``AuxilaryData``): bytes in one of :data:`ENCODINGS`."""

    name: str
    encoding: str
    data: bytes


@dataclass(frozen=True)
class CaptureRequest:
    """One CaptureData call, after the agent resolved the alias and copied shared memory.

    ``model_name``/``model_version`` are the package's (not the client's alias);
    ``inference_time`` is timezone-aware.
    """

    capture_id: str
    model_name: str
    model_version: str
    inference_time: datetime
    inputs: tuple[CaptureTensor, ...] = ()
    outputs: tuple[CaptureTensor, ...] = ()
    aux_inputs: tuple[CaptureAux, ...] = ()
    aux_outputs: tuple[CaptureAux, ...] = ()

    @property
    def payload_bytes(self) -> int:
        """Total bytes of tensor and auxiliary payloads."""
        return sum(len(t.data) for t in (*self.inputs, *self.outputs)) + sum(
            len(a.data) for a in (*self.aux_inputs, *self.aux_outputs)
        )


@dataclass(frozen=True)
class CaptureRecord:
    """A record read back from a ``.jsonl`` object: the request plus the device that captured it.

    ``request.inference_time`` has whole seconds (the record's resolution) and ``capture_id`` is
    the record's ``eventId``, exactly as the client sent it.
    """

    request: CaptureRequest
    device_name: str
    fleet_name: str


@dataclass(frozen=True)
class RawPayload:
    """A payload too big to embed: written to ``key`` and referenced by URI from its entry."""

    key: str
    data: bytes


@dataclass(frozen=True)
class EncodedRecord:
    """A record ready to write: one JSON line and the raw-data files it references."""

    line: bytes
    raw: tuple[RawPayload, ...]


# --- validation -----------------------------------------------------------------------------------


def canonical_capture_id(capture_id: object) -> str:
    """The canonical (lower-case, hyphenated) form of a capture id; INVALID_ARGUMENT if not a UUID.

    Accepted: ``8-4-4-4-12`` hex in any case, the same in braces or prefixed ``urn:uuid:``, or 32
    hex digits. Duplicate detection and status look-ups use this form, so every spelling of one
    UUID names the same capture.
    """
    if not isinstance(capture_id, str) or len(capture_id) > 64 or not _CAPTURE_ID_RE.fullmatch(capture_id):
        raise InvalidArgument(
            f"capture id {quoted(capture_id)} is not a UUID string "
            "(expected 8-4-4-4-12 hexadecimal digits, e.g. 123e4567-e89b-12d3-a456-426614174000)"
        )
    return str(uuid.UUID(capture_id))


def _check_text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise InvalidArgument(f"{what} must be a string, got {type(value).__name__}")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidArgument(f"{what} {quoted(value)} is not valid Unicode text") from exc
    return value


def _check_tensor(tensor: CaptureTensor, where: str) -> CaptureTensor:
    name = _check_text(tensor.name, f"{where} name")
    label = f"{where} {quoted(name)}"
    try:
        dtype = DataType(tensor.dtype)
    except (ValueError, TypeError) as exc:
        known = ", ".join(t.name for t in DataType)
        raise InvalidArgument(f"{label}: unknown data type {tensor.dtype!r} (known: {known})") from exc
    shape = tuple(tensor.shape)
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise InvalidArgument(f"{label}: shape {shorten(str(list(shape)))} must be non-negative integers")
    if not isinstance(tensor.data, bytes):
        raise InvalidArgument(f"{label}: data must be bytes, got {type(tensor.data).__name__}")
    expected = math.prod(shape) * dtype.itemsize
    if len(tensor.data) != expected:
        raise InvalidArgument(
            f"{label}: {len(tensor.data)} bytes of data, but {dtype.name} with shape {shorten(str(list(shape)))} "
            f"needs {expected}"
        )
    return CaptureTensor(name=name, dtype=dtype, shape=shape, data=tensor.data)


def _check_aux(aux: CaptureAux, where: str) -> CaptureAux:
    name = _check_text(aux.name, f"{where} name")
    label = f"{where} {quoted(name)}"
    encoding = aux.encoding.upper() if isinstance(aux.encoding, str) else aux.encoding
    if encoding not in ENCODINGS:
        raise InvalidArgument(f"{label}: unknown encoding {aux.encoding!r} (known: {', '.join(ENCODINGS)})")
    if not isinstance(aux.data, bytes):
        raise InvalidArgument(f"{label}: data must be bytes, got {type(aux.data).__name__}")
    # Downstream readers decode by the declared encoding: refuse what they could not read now,
    # with a message, instead of writing a record that breaks them later.
    try:
        if encoding == "CSV":
            aux.data.decode("utf-8")
        elif encoding == "JSON":
            json.loads(aux.data.decode("utf-8"))
        elif encoding == "BASE64":
            base64.b64decode(b"".join(aux.data.split()), validate=True)
    except (UnicodeDecodeError, ValueError, binascii.Error) as exc:
        raise InvalidArgument(f"{label}: data is not valid {encoding}: {exc}") from exc
    return CaptureAux(name=name, encoding=str(encoding), data=aux.data)


def validate_request(request: CaptureRequest, now: datetime, *, clock_skew: timedelta) -> CaptureRequest:
    """Check everything about a request that does not depend on the spool; return it normalised.

    Normalised: ``inference_time`` in UTC, aux encodings upper-case, dtypes as :class:`DataType`,
    shapes as tuples. Raises INVALID_ARGUMENT (malformed id, names, dtypes, shapes, byte lengths,
    encodings, naive time) or OUT_OF_RANGE (inference time later than ``now + clock_skew``).
    """
    canonical_capture_id(request.capture_id)
    validate_model_name(request.model_name, "capture model name")
    version = _check_text(request.model_version, "capture model version")
    if not version:
        raise InvalidArgument("capture model version must not be empty")
    when = request.inference_time
    if not isinstance(when, datetime) or when.tzinfo is None or when.utcoffset() is None:
        raise InvalidArgument(f"inference time {when!r} must be a timezone-aware datetime")
    when = when.astimezone(UTC)
    if when > now + clock_skew:
        raise OutOfRange(
            f"inference time {when.isoformat()} is in the future (now {now.astimezone(UTC).isoformat()}, "
            f"allowed clock skew {clock_skew.total_seconds():g} s)"
        )
    return replace(
        request,
        model_version=version,
        inference_time=when,
        inputs=tuple(_check_tensor(t, "input tensor") for t in request.inputs),
        outputs=tuple(_check_tensor(t, "output tensor") for t in request.outputs),
        aux_inputs=tuple(_check_aux(a, "auxiliary input") for a in request.aux_inputs),
        aux_outputs=tuple(_check_aux(a, "auxiliary output") for a in request.aux_outputs),
    )


# --- layout ---------------------------------------------------------------------------------------


def partition_of(inference_time: datetime) -> str:
    """``YYYY/MM/DD/HH`` of the inference time's UTC hour (the folder a record is written under)."""
    return inference_time.astimezone(UTC).strftime("%Y/%m/%d/%H")


def object_dir(folder_prefix: str, fleet_name: str, model_name: str, partition: str) -> str:
    """``<folder_prefix>/<fleet>/<model_name>/YYYY/MM/DD/HH`` (an empty prefix adds no folder)."""
    return "/".join(part for part in (folder_prefix.strip("/"), fleet_name, model_name, partition) if part)


def object_key(directory: str, batch_id: str) -> str:
    """The key of a batch object: ``<directory>/<32-hex batch id>.jsonl``."""
    if not re.fullmatch(r"[0-9a-f]{32}", batch_id):
        raise InvalidArgument(f"batch id {batch_id!r} must be 32 lower-case hex digits")
    return f"{directory}/{batch_id}.jsonl"


def raw_key(directory: str, capture_id: str, tag: str, index: int, kind: str) -> str:
    """``<directory>/raw-data/<capture uuid hex>-<tag>-<index><ext>`` for one oversized payload.

    Names are built from the capture's UUID and the entry's position, never from client-chosen
    tensor names, so they are always safe path components and unique within the hour folder.
    """
    hex_id = uuid.UUID(canonical_capture_id(capture_id)).hex
    return f"{directory}/raw-data/{hex_id}-{tag}-{index}{_RAW_EXTENSIONS[kind]}"


# --- encoding -------------------------------------------------------------------------------------


def tensor_content_type(dtype: DataType, shape: Sequence[int]) -> str:
    """``Tensor[FLOAT32; 1, 64]`` (``Tensor[FLOAT32; ]`` for a scalar)."""
    return f"Tensor[{dtype.name}; {shape_str(shape)}]"


def parse_tensor_content_type(content_type: str) -> tuple[DataType, tuple[int, ...]]:
    """Inverse of :func:`tensor_content_type`; INVALID_ARGUMENT for anything else."""
    match = _CONTENT_TYPE_RE.fullmatch(content_type)
    if match is None:
        raise InvalidArgument(f"observedContentType {content_type!r} is not Tensor[<dtype>; <dims>]")
    dims = match.group(2)
    shape = tuple(int(d) for d in dims.split(",")) if dims else ()
    return DataType.from_name(match.group(1)), shape


def encode_record(
    request: CaptureRequest,
    *,
    device_name: str,
    fleet_name: str,
    directory: str,
    embed_limit: int,
    uri: Callable[[str], str],
) -> EncodedRecord:
    """Encode a validated request as one record line (``\\n``-terminated) plus its raw-data files.

    ``directory`` is the hour folder the batch object goes to; payloads longer than
    ``embed_limit`` bytes go to files under ``<directory>/raw-data/`` and their entries carry
    ``data-ref: uri(key)``. The output depends only on the arguments, so re-encoding a batch after
    a crash produces the same bytes and the same file names.
    """
    raw: list[RawPayload] = []

    def entry(
        name: str, encoding: str, mode: str, content_type: str, data: bytes, tag: str, index: int, kind: str
    ) -> dict[str, str]:
        item = {"name": name, "encoding": encoding, "mode": mode, "observedContentType": content_type}
        if len(data) <= embed_limit:
            item["data"] = base64.b64encode(data).decode("ascii")
        else:
            key = raw_key(directory, request.capture_id, tag, index, kind)
            raw.append(RawPayload(key=key, data=data))
            item["data-ref"] = uri(key)
        return item

    def tensors(section: int, items: tuple[CaptureTensor, ...]) -> list[dict[str, str]]:
        _, mode, tag = SECTIONS[section]
        return [
            entry(
                t.name, TENSOR_ENCODING, mode, tensor_content_type(t.dtype, t.shape), t.data, tag, i, "TENSOR"
            )
            for i, t in enumerate(items)
        ]

    def auxes(section: int, items: tuple[CaptureAux, ...]) -> list[dict[str, str]]:
        _, mode, tag = SECTIONS[section]
        return [
            entry(a.name, a.encoding, mode, AUX_CONTENT_TYPES[a.encoding], a.data, tag, i, a.encoding)
            for i, a in enumerate(items)
        ]

    record = {
        "eventVersion": EVENT_VERSION,
        "eventMetadata": {
            "eventId": request.capture_id,
            "deviceId": device_name,
            "deviceFleetName": fleet_name,
            "modelName": request.model_name,
            "modelVersion": request.model_version,
            "inferenceTime": request.inference_time.astimezone(UTC).strftime(_INFERENCE_TIME_FORMAT),
        },
        SECTIONS[0][0]: tensors(0, request.inputs),
        SECTIONS[1][0]: tensors(1, request.outputs),
        SECTIONS[2][0]: auxes(2, request.aux_inputs),
        SECTIONS[3][0]: auxes(3, request.aux_outputs),
    }
    line = json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n"
    return EncodedRecord(line=line.encode("utf-8"), raw=tuple(raw))


def rebase_data_refs(body: bytes, directory: str, uri: Callable[[str], str]) -> tuple[bytes, list[str]]:
    """A batch object's bytes with every ``data-ref`` pointing at ``uri(key)`` instead, and the keys.

    ``body`` is a ``.jsonl`` object written to ``directory`` (its hour folder) by
    :func:`encode_record` with another sink's URIs (Disk's ``file://``); each ``data-ref`` names a
    file ``<directory>/raw-data/<name>``, whose key is rebuilt from the layout (not from the old
    URI, so a Disk root that moved since does not matter). The lines are encoded again as
    :func:`encode_record` encodes them, so the result is byte for byte what a sink of ``uri``
    would have written. The raw-data keys are returned in the order the records name them.
    INVALID_ARGUMENT when a line is not a record or a ``data-ref`` is not a raw-data file name.
    """
    lines: list[bytes] = []
    keys: list[str] = []
    for number, line in enumerate(body.splitlines(), 1):
        try:
            record = json.loads(line)
            entries = [entry for section, _, _ in SECTIONS for entry in record[section]]
        except (ValueError, KeyError, TypeError) as exc:
            raise InvalidArgument(
                f"line {number} of a capture object in {directory} is not a record"
            ) from exc
        for entry in entries:
            ref = entry.get("data-ref") if isinstance(entry, dict) else None
            if ref is None:
                continue
            name = urllib.parse.unquote(str(ref).rsplit("/", 1)[-1])
            if not _RAW_NAME_RE.fullmatch(name) or not str(ref).endswith(f"/raw-data/{name}"):
                raise InvalidArgument(f"data-ref {quoted(str(ref))} in {directory} is not a raw-data file")
            key = f"{directory}/raw-data/{name}"
            keys.append(key)
            entry["data-ref"] = uri(key)
        lines.append((json.dumps(record, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8"))
    return b"".join(lines), keys


# --- decoding -------------------------------------------------------------------------------------


def _field(obj: Mapping[str, object], key: str, what: str) -> str:
    value = obj.get(key)
    if not isinstance(value, str):
        raise InvalidArgument(f"{what}: {key!r} must be a string")
    return value


def entry_bytes(entry: Mapping[str, object], fetch: Callable[[str], bytes]) -> bytes:
    """The raw payload of an entry: base64-decoded ``data``, or ``fetch(data-ref)``."""
    has_data, has_ref = "data" in entry, "data-ref" in entry
    if has_data == has_ref:
        raise InvalidArgument("a capture entry must carry exactly one of 'data' and 'data-ref'")
    if has_ref:
        return fetch(_field(entry, "data-ref", "capture entry"))
    try:
        return base64.b64decode(_field(entry, "data", "capture entry"), validate=True)
    except binascii.Error as exc:
        raise InvalidArgument(f"capture entry data is not base64: {exc}") from exc


def entry_array(entry: Mapping[str, object], fetch: Callable[[str], bytes]) -> np.ndarray:
    """Rebuild a tensor entry's array from the entry alone (and its raw-data file, if any)."""
    dtype, shape = parse_tensor_content_type(_field(entry, "observedContentType", "tensor entry"))
    data = entry_bytes(entry, fetch)
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise InvalidArgument(f"tensor entry has {len(data)} bytes, which does not fit {dtype.name} {shape}")
    return np.frombuffer(data, dtype=dtype.numpy).reshape(shape)


def decode_record(line: bytes | str, fetch: Callable[[str], bytes]) -> CaptureRecord:
    """Parse one record line back into the request it was made from (INVALID_ARGUMENT if malformed).

    ``fetch`` reads the payload behind a ``data-ref`` URI (for the Disk sink,
    :meth:`edgefleet.capture.sinks.DiskSink.read_uri`).
    """
    try:
        record = json.loads(line)
    except ValueError as exc:
        raise InvalidArgument(f"capture record is not JSON: {exc}") from exc
    if not isinstance(record, dict) or record.get("eventVersion") != EVENT_VERSION:
        raise InvalidArgument(f"capture record is not an object with eventVersion {EVENT_VERSION!r}")
    meta = record.get("eventMetadata")
    if not isinstance(meta, dict):
        raise InvalidArgument("capture record has no eventMetadata object")
    try:
        when = datetime.strptime(_field(meta, "inferenceTime", "eventMetadata"), _INFERENCE_TIME_FORMAT)
    except ValueError as exc:
        raise InvalidArgument(f"capture record inferenceTime is malformed: {exc}") from exc

    sections: list[list[dict[str, object]]] = []
    for key, mode, _ in SECTIONS:
        entries = record.get(key)
        if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
            raise InvalidArgument(f"capture record {key!r} must be a list of objects")
        for e in entries:
            if e.get("mode") != mode:
                raise InvalidArgument(
                    f"capture record {key!r} entry has mode {e.get('mode')!r}, not {mode!r}"
                )
        sections.append(entries)

    def tensor(e: Mapping[str, object]) -> CaptureTensor:
        array = entry_array(e, fetch)
        return CaptureTensor(
            name=_field(e, "name", "tensor entry"),
            dtype=DataType.from_numpy(array.dtype),
            shape=tuple(array.shape),
            data=array.tobytes(),
        )

    def aux(e: Mapping[str, object]) -> CaptureAux:
        return CaptureAux(
            name=_field(e, "name", "auxiliary entry"),
            encoding=_field(e, "encoding", "auxiliary entry"),
            data=entry_bytes(e, fetch),
        )

    request = CaptureRequest(
        capture_id=_field(meta, "eventId", "eventMetadata"),
        model_name=_field(meta, "modelName", "eventMetadata"),
        model_version=_field(meta, "modelVersion", "eventMetadata"),
        inference_time=when.replace(tzinfo=UTC),
        inputs=tuple(tensor(e) for e in sections[0]),
        outputs=tuple(tensor(e) for e in sections[1]),
        aux_inputs=tuple(aux(e) for e in sections[2]),
        aux_outputs=tuple(aux(e) for e in sections[3]),
    )
    return CaptureRecord(
        request=request,
        device_name=_field(meta, "deviceId", "eventMetadata"),
        fleet_name=_field(meta, "deviceFleetName", "eventMetadata"),
    )
