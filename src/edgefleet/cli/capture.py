"""``edgefleet capture``: browse, fetch and export captured data (a client of the operator API).

``export`` downloads a fleet's capture objects of a model (version), decodes their records with
the capture record codec (:mod:`edgefleet.capture.records`) and writes, per input and output tensor,
a NumPy ``.npy`` file with the records stacked along a first axis (one file per shape and data
type when records disagree), a ``manifest.json`` saying what came from where, and, when
``pyarrow`` is installed, ``records.parquet`` with one row per record.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from edgefleet.cli.output import (
    ProgressBar,
    add_client_arguments,
    client_from_args,
    dump_json,
    emit,
    human_size,
)
from edgefleet.core.errors import EdgefleetError, FailedPrecondition, InvalidArgument
from edgefleet.core.files import atomic_writer, write_json_atomic
from edgefleet.storage.base import is_safe_component

LIST_COLUMNS = [
    ("KEY", "Key"),
    ("DEVICE", "DeviceName"),
    ("MODEL", "ModelName"),
    ("VERSION", "ModelVersion"),
    ("RECORDS", "Records"),
    ("SIZE", "Size"),
    ("FIRST INFERENCE", "FirstInferenceTime"),
]
SHOW_FIELDS = [
    ("Key", "Key"),
    ("Fleet", "DeviceFleetName"),
    ("Device", "DeviceName"),
    ("Model", "ModelName"),
    ("Version", "ModelVersion"),
    ("Records", "Records"),
    ("Size", "Size"),
    ("Raw objects", "RawObjects"),
    ("First inference", "FirstInferenceTime"),
    ("Last inference", "LastInferenceTime"),
    ("Reported", "ReportedTime"),
]
#: the manifest's format version
MANIFEST_VERSION = 1
#: what to install for Parquet output
PARQUET_HINT = "pip install pyarrow"


def add_parser(sub: Any) -> None:
    parser = sub.add_parser("capture", help="browse, fetch and export captured inference data")
    commands = parser.add_subparsers(dest="capture_command", metavar="COMMAND", required=True)

    listing = commands.add_parser("list", help="list captured objects (oldest first)")
    _add_filters(listing, required=False)
    listing.add_argument("--device", help="only objects of this device")
    listing.add_argument("--until", type=_time, metavar="TIME", help="only objects with a record before TIME")
    listing.set_defaults(func=list_captures)

    show = commands.add_parser("show", help="show one captured object's index entry")
    show.add_argument("key", help="the object's key (from capture list)")
    show.set_defaults(func=show_capture)

    fetch = commands.add_parser("fetch", help="download one captured object (JSON Lines)")
    fetch.add_argument("key", help="the object's key (from capture list)")
    fetch.add_argument("-o", "--output", type=Path, required=True, metavar="FILE", help="file to write")
    fetch.set_defaults(func=fetch_capture)

    export = commands.add_parser(
        "export", help="export a model's captured tensors as NumPy files (and Parquet) with a manifest"
    )
    _add_filters(export, required=True)
    export.add_argument("-o", "--output", type=Path, required=True, metavar="DIR", help="directory to write")
    export.add_argument(
        "--parquet",
        choices=("auto", "yes", "no"),
        default="auto",
        help="records.parquet too: auto = when pyarrow is installed (default), yes = required",
    )
    export.set_defaults(func=export_command)

    for command in (listing, show, fetch, export):
        add_client_arguments(command)


def _add_filters(parser: argparse.ArgumentParser, *, required: bool) -> None:
    parser.add_argument("--fleet", required=required, help="fleet name")
    parser.add_argument("--model", required=required, help="model name (the package's)")
    parser.add_argument("--version", help="model version")
    parser.add_argument(
        "--since", type=_time, metavar="TIME", help="only objects with a record at or after TIME"
    )


def _time(value: str) -> datetime:
    """An ISO 8601 time (``2030-01-31T09:00:00Z``; without a zone: UTC)."""
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not an ISO 8601 time like 2030-01-31T09:00:00Z"
        ) from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)


def list_captures(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        rows = list(
            client.list_captures(
                fleet=args.fleet,
                model=args.model,
                version=args.version,
                device=args.device,
                since=args.since,
                until=args.until,
            )
        )
    return emit(args, rows, LIST_COLUMNS)


def show_capture(args: argparse.Namespace) -> int:
    with client_from_args(args) as client:
        row = client.describe_capture(args.key)
    return emit(args, row, SHOW_FIELDS)


def fetch_capture(args: argparse.Namespace) -> int:
    if args.output.is_dir():
        raise InvalidArgument(f"{args.output} is a directory: give the file to write")
    with client_from_args(args) as client:
        size = client.fetch_capture(args.key, args.output)
    if args.json:
        dump_json({"Key": args.key, "Path": str(args.output), "Size": size})
    else:
        print(f"{args.key}: {human_size(size)} written to {args.output}")
    return 0


def export_command(args: argparse.Namespace) -> int:
    parquet = None if args.parquet == "auto" else args.parquet == "yes"
    with client_from_args(args) as client:
        manifest = export_captures(
            client,
            args.output,
            fleet=args.fleet,
            model=args.model,
            version=args.version,
            since=args.since,
            parquet=parquet,
            progress=ExportProgress(),
        )
    if args.json:
        dump_json(manifest)
    else:
        files = [f["File"] for t in manifest["Tensors"] for f in t["Files"]]
        print(
            f"exported {manifest['RecordCount']} records from {len(manifest['Objects'])} objects to "
            f"{args.output}: {', '.join(files) or 'no tensors'}"
            + (", records.parquet" if manifest["Parquet"] else "")
        )
    return 0


# ---------------------------------------------------------------------- export


class ExportProgress:
    """Progress of an export on stderr: a bar on a terminal, else a line per object."""

    def __init__(self, out: TextIO | None = None) -> None:
        self.out = out or sys.stderr
        self.bar = ProgressBar("exporting captures", self.out)

    def __call__(self, done: int, total: int, key: str, done_bytes: int, total_bytes: int) -> None:
        if self.bar.enabled:
            self.bar(done_bytes, total_bytes)
        else:
            self.out.write(f"export: {done}/{total} objects ({key})\n")
            self.out.flush()

    def note(self, message: str) -> None:
        self.out.write(f"export: {message}\n")
        self.out.flush()


@dataclass
class _Group:
    """The arrays of one tensor that share a shape and data type, and the records they came from."""

    shape: tuple[int, ...]
    dtype: str
    records: list[int] = field(default_factory=list)
    arrays: list[Any] = field(default_factory=list)


def export_captures(
    client: Any,
    out_dir: Path,
    *,
    fleet: str,
    model: str,
    version: str | None = None,
    since: datetime | None = None,
    parquet: bool | None = None,
    progress: ExportProgress | None = None,
) -> dict[str, Any]:
    """Export the captured records of ``model`` (``version``) in ``fleet`` into ``out_dir``; the manifest.

    ``parquet``: None = when pyarrow imports, True = required (FAILED_PRECONDITION naming the
    package when it is missing), False = never. Objects are read in the index's order (oldest
    first); a record that does not decode fails the export (INVALID_ARGUMENT naming the object).
    """
    import numpy as np

    from edgefleet.capture.records import decode_record

    pyarrow = _pyarrow(parquet)
    if pyarrow is None and parquet is None and progress is not None:
        progress.note(f"pyarrow is not installed: no records.parquet ({PARQUET_HINT} for it)")
    objects = list(client.list_captures(fleet=fleet, model=model, version=version, since=since))
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InvalidArgument(f"cannot create the directory {out_dir}: {exc}") from exc
    total_bytes = sum(int(o["Size"]) for o in objects)
    done_bytes = 0
    records: list[dict[str, Any]] = []
    tensors: dict[tuple[str, str], dict[tuple[tuple[int, ...], str], _Group]] = {}
    for position, obj in enumerate(objects, 1):
        key = obj["Key"]
        data = client.capture_bytes(key)
        fetch = _raw_fetcher(client, key)
        for line_no, line in enumerate(data.splitlines(), 1):
            if not line.strip():
                continue
            try:
                record = decode_record(line, fetch)
            except EdgefleetError as exc:
                raise type(exc)(f"{key} line {line_no}: {exc.message}") from exc
            index = len(records)
            request = record.request
            records.append(
                {
                    "Index": index,
                    "Object": key,
                    "Line": line_no,
                    "CaptureId": request.capture_id,
                    "DeviceName": record.device_name,
                    "ModelVersion": request.model_version,
                    "InferenceTime": request.inference_time.isoformat().replace("+00:00", "Z"),
                }
            )
            for section, items in (("Input", request.inputs), ("Output", request.outputs)):
                for tensor in items:
                    array = np.frombuffer(tensor.data, dtype=tensor.dtype.numpy).reshape(tensor.shape)
                    groups = tensors.setdefault((section, tensor.name), {})
                    group = groups.setdefault(
                        (tensor.shape, tensor.dtype.name), _Group(tensor.shape, tensor.dtype.name)
                    )
                    group.records.append(index)
                    group.arrays.append(array)
        done_bytes += int(obj["Size"])
        if progress is not None:
            progress(position, len(objects), key, done_bytes, total_bytes)

    described: list[dict[str, Any]] = []
    used: set[str] = set()
    for (section, name), groups in sorted(tensors.items()):
        folder = "inputs" if section == "Input" else "outputs"
        stem = _file_stem(name, used, folder)
        files = []
        for (shape, dtype), group in groups.items():
            suffix = "" if len(groups) == 1 else "." + "x".join(str(d) for d in shape) + f".{dtype.lower()}"
            relative = f"{folder}/{stem}{suffix}.npy"
            path = out_dir / relative
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_writer(path) as out:
                np.save(out, np.stack(group.arrays), allow_pickle=False)
            files.append(
                {
                    "File": relative,
                    "Shape": [len(group.arrays), *shape],
                    "DataType": dtype,
                    "Records": group.records,
                }
            )
        described.append({"Name": name, "Mode": section, "Files": files})

    parquet_written = False
    if pyarrow is not None:
        _write_parquet(pyarrow, out_dir / "records.parquet", records, tensors)
        parquet_written = True
    per_object = Counter(r["Object"] for r in records)
    manifest = {
        "ManifestVersion": MANIFEST_VERSION,
        "DeviceFleetName": fleet,
        "ModelName": model,
        "ModelVersion": version,
        "Since": since.isoformat() if since is not None else None,
        "ExportedAt": datetime.now(UTC).isoformat().replace("+00:00", "Z"),
        "RecordCount": len(records),
        "Objects": [
            {
                "Key": o["Key"],
                "DeviceName": o["DeviceName"],
                "ModelVersion": o["ModelVersion"],
                "Records": per_object[o["Key"]],
                "FirstInferenceTime": o["FirstInferenceTime"],
                "LastInferenceTime": o["LastInferenceTime"],
            }
            for o in objects
        ],
        "Tensors": described,
        "Records": records,
        "Parquet": "records.parquet" if parquet_written else None,
    }
    write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def _pyarrow(wanted: bool | None) -> Any:
    """The pyarrow module when Parquet is to be written (None: not wanted, or optional and missing)."""
    if wanted is False:
        return None
    try:
        # by name: pyarrow is optional and has no type stubs here
        pyarrow = importlib.import_module("pyarrow")
        importlib.import_module("pyarrow.parquet")
    except ImportError as exc:
        if wanted:
            raise FailedPrecondition(
                f"--parquet yes needs pyarrow, which is not installed here ({PARQUET_HINT})"
            ) from exc
        return None
    return pyarrow


def _write_parquet(
    pyarrow: Any,
    path: Path,
    records: Sequence[dict[str, Any]],
    tensors: dict[tuple[str, str], dict[tuple[tuple[int, ...], str], _Group]],
) -> None:
    """One row per record: its metadata, and per tensor its values (flattened) and its shape."""
    columns: dict[str, list[Any]] = {
        "index": [r["Index"] for r in records],
        "object": [r["Object"] for r in records],
        "capture_id": [r["CaptureId"] for r in records],
        "device": [r["DeviceName"] for r in records],
        "model_version": [r["ModelVersion"] for r in records],
        "inference_time": [r["InferenceTime"] for r in records],
    }
    for (section, name), groups in sorted(tensors.items()):
        values: list[Any] = [None] * len(records)
        shapes: list[Any] = [None] * len(records)
        for group in groups.values():
            for index, array in zip(group.records, group.arrays, strict=True):
                values[index] = array.reshape(-1).tolist()
                shapes[index] = list(group.shape)
        prefix = f"{section.lower()}.{name}"
        columns[prefix] = values
        columns[f"{prefix}.shape"] = shapes
    table = pyarrow.table(columns)
    tmp = path.with_name(path.name + ".part")
    pyarrow.parquet.write_table(table, str(tmp))
    tmp.replace(path)


def _raw_fetcher(client: Any, key: str) -> Callable[[str], bytes]:
    """Reads a record's ``data-ref`` through the server: the payload beside the object ``key``."""
    directory = key.rsplit("/", 1)[0]

    def fetch(uri: str) -> bytes:
        head, marker, name = uri.rpartition("/raw-data/")
        if not marker or "/" in name or not head.endswith(directory):
            raise InvalidArgument(f"data-ref {uri!r} of {key} is not a raw-data file beside the object")
        data: bytes = client.capture_raw(key, name)
        return data

    return fetch


def _file_stem(name: str, used: set[str], folder: str) -> str:
    """A safe, unique file name stem for a tensor called ``name`` (client-chosen) in ``folder``."""
    stem = name if is_safe_component(name) and len(name) <= 100 else "tensor"
    candidate, n = stem, 1
    while f"{folder}/{candidate}" in used:
        n += 1
        candidate = f"{stem}-{n}"
    used.add(f"{folder}/{candidate}")
    return candidate
