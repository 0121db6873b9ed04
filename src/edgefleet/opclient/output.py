"""What the operator CLI prints: tables, key/value blocks, JSON, upload progress; and its shared flags."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, TextIO


def add_client_arguments(parser: argparse.ArgumentParser) -> None:
    """``--server``, ``--token``, ``--ca-cert``, ``--json`` (flags win over environment and client file)."""
    group = parser.add_argument_group(
        "connection (default: $EDGEFLEET_SERVER/_TOKEN/_CA_CERT, then the client file)"
    )
    group.add_argument("--server", help="control plane URL, e.g. https://fleet.example:8443")
    group.add_argument("--token", help="operator API token (edgefleet admin create-token)")
    group.add_argument("--ca-cert", type=Path, help="PEM file of the CA that signed the server certificate")
    parser.add_argument("--json", action="store_true", help="print the raw JSON answer")


def client_from_args(args: argparse.Namespace) -> Any:
    """A :class:`~edgefleet.opclient.client.FleetClient` for the parsed flags (httpx imported here)."""
    from edgefleet.opclient.client import FleetClient
    from edgefleet.opclient.config import load_client_config

    return FleetClient(load_client_config(args.server, args.token, args.ca_cert))


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, dict):
        return ",".join(f"{k}={v}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(_cell(v) for v in value) or "-"
    return str(value)


def table(
    rows: Iterable[dict[str, Any]], columns: Sequence[tuple[str, str]], out: TextIO | None = None
) -> int:
    """Print ``rows`` as an aligned table of ``(header, key)`` columns; returns the row count."""
    out = out or sys.stdout
    cells = [[_cell(row.get(key)) for _, key in columns] for row in rows]
    headers = [header for header, _ in columns]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    out.write("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip() + "\n")
    for row in cells:
        out.write("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() + "\n")
    if not cells:
        out.write("(none)\n")
    return len(cells)


def fields(record: dict[str, Any], keys: Sequence[tuple[str, str]], out: TextIO | None = None) -> None:
    """Print selected fields of one record as ``Label: value`` lines."""
    out = out or sys.stdout
    width = max(len(label) for label, _ in keys)
    for label, key in keys:
        out.write(f"{label.ljust(width)}  {_cell(record.get(key))}\n")


def dump_json(value: Any, out: TextIO | None = None) -> None:
    """Pretty JSON."""
    out = out or sys.stdout
    out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


class ProgressBar:
    """A one-line progress bar on stderr (only drawn when stderr is a terminal)."""

    def __init__(self, label: str, out: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.out = out or sys.stderr
        self.width = width
        self.enabled = self.out.isatty()

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        filled = int(self.width * done / total)
        bar = "#" * filled + "." * (self.width - filled)
        self.out.write(f"\r{self.label} [{bar}] {done * 100 // total:3d}% {done // 1024} KiB")
        if done >= total:
            self.out.write("\n")
        self.out.flush()


def parse_key_values(items: Sequence[str] | None, what: str) -> dict[str, str] | None:
    """``["k=v", ...]`` to a dict (None when no item was given)."""
    from edgefleet.core.errors import InvalidArgument

    if not items:
        return None
    parsed: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidArgument(f"{what} {item!r} must look like KEY=VALUE")
        parsed[key] = value
    return parsed
