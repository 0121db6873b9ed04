"""Moved to :mod:`edgefleet.cli.output` (it is the CLI's printing, not client library); these names stay
importable from here for callers written against the old place."""

from __future__ import annotations

from edgefleet.cli.output import (
    ProgressBar,
    add_client_arguments,
    client_from_args,
    dump_json,
    fields,
    parse_key_values,
    table,
)

__all__ = [
    "ProgressBar",
    "add_client_arguments",
    "client_from_args",
    "dump_json",
    "fields",
    "parse_key_values",
    "table",
]
