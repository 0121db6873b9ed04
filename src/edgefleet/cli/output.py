"""What the operator CLI prints: tables, key/value blocks, JSON, progress bars; and its shared flags.

Tables and progress bars are drawn by ``rich`` (part of the ``edgefleet[cli]`` extra, imported only
when something is drawn). Cells are shown for people: byte counts as human sizes, SHA-256 digests
shortened, every time as ``YYYY-MM-DDTHH:MM:SSZ``; ``--json`` prints the values untouched.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

#: a column: (header, key) or (header, key, formatter of the raw value)
Column = tuple[str, str] | tuple[str, str, Callable[[Any], str]]

#: width a table may take when stdout is not a terminal: wide enough never to wrap a row, so that
#: ``grep`` and ``awk`` see one line per record
_PIPE_WIDTH = 1000
_DIGEST_CHARS = 12
_ISO_TIME = re.compile(r"^\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:?\d{2})?$")


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


# ---------------------------------------------------------------------- how values read


def human_size(value: Any) -> str:
    """``1536`` -> ``1.5 KiB`` (binary units; values that are not byte counts pass through)."""
    if not isinstance(value, int) or isinstance(value, bool):
        return cell(value)
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{value} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def short_digest(value: Any) -> str:
    """A hex digest cut to its first 12 characters (enough to tell packages apart by eye)."""
    text = cell(value)
    return text if len(text) <= _DIGEST_CHARS + 1 else text[:_DIGEST_CHARS] + "…"


def format_time(value: datetime | str) -> str:
    """One time format everywhere: UTC, whole seconds, ``Z`` (naive datetimes are taken as UTC)."""
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    else:
        moment = value
    aware = moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def cell(value: Any) -> str:
    """How one value reads in a table or a field block."""
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, str) and _ISO_TIME.match(value):
        return format_time(value)
    if isinstance(value, dict):
        return ",".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    if isinstance(value, list):
        return ",".join(cell(v) for v in value) or "-"
    return str(value)


def _formatter(key: str) -> Callable[[Any], str]:
    """The formatter a key gets when its column names none: sizes and digests by their key names."""
    lowered = key.lower()
    if lowered == "size" or lowered.endswith(("size", "bytes")):
        return human_size
    if lowered.endswith(("sha256", "digest", "fingerprint")):
        return short_digest
    return cell


def _split(column: Column) -> tuple[str, str, Callable[[Any], str]]:
    if len(column) == 3:
        return column[0], column[1], column[2]
    return column[0], column[1], _formatter(column[1])


# ---------------------------------------------------------------------- printing


def _render(renderable: Any, out: TextIO) -> None:
    """Draw with rich into ``out``: terminal width and colour on a terminal, plain wide lines otherwise."""
    from rich.console import Console

    terminal = out.isatty()
    buffer = io.StringIO()
    console = Console(
        file=buffer,
        width=shutil.get_terminal_size().columns if terminal else _PIPE_WIDTH,
        force_terminal=terminal,
        no_color=not terminal,
        highlight=False,
        soft_wrap=False,
    )
    console.print(renderable)
    for line in buffer.getvalue().splitlines():
        out.write(line.rstrip() + "\n")


def table(rows: Iterable[dict[str, Any]], columns: Sequence[Column], out: TextIO | None = None) -> int:
    """Print ``rows`` as an aligned table of ``(header, key[, formatter])`` columns; returns the row count.

    Drawn by rich where it is installed; a device install without the ``cli`` extra (where operators
    still run ``edgefleet agent list``) gets the same cells in plain space-aligned columns.
    """
    out = out or sys.stdout
    specs = [_split(column) for column in columns]
    try:
        from rich.table import Table
        from rich.text import Text
    except ModuleNotFoundError:
        cells = [[fmt(row.get(key)) for _, key, fmt in specs] for row in rows]
        widths = [
            max([len(header)] + [len(line[i]) for line in cells]) for i, (header, _, _) in enumerate(specs)
        ]
        for line in [[header for header, _, _ in specs], *cells]:
            out.write(
                "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip() + "\n"
            )
        if not cells:
            out.write("(none)\n")
        return len(cells)
    grid = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 2, 0, 0))
    for header, _, _ in specs:
        grid.add_column(header, overflow="fold")
    count = 0
    for row in rows:
        # Text, not str: a value such as "[x]" must not be read as rich markup
        grid.add_row(*(Text(fmt(row.get(key))) for _, key, fmt in specs))
        count += 1
    _render(grid, out)
    if not count:
        out.write("(none)\n")
    return count


def fields(record: dict[str, Any], keys: Sequence[Column], out: TextIO | None = None) -> None:
    """Print selected fields of one record as ``Label  value`` lines."""
    out = out or sys.stdout
    specs = [_split(key) for key in keys]
    width = max(len(label) for label, _, _ in specs)
    for label, key, fmt in specs:
        out.write(f"{label.ljust(width)}  {fmt(record.get(key))}\n")


def emit(args: Any, value: Any, columns: Sequence[Column]) -> int:
    """``value`` as JSON under ``--json``; otherwise a list of rows as a :func:`table`, one record
    (a dict) as :func:`fields`. Returns 0, a command's exit status."""
    if getattr(args, "json", False):
        dump_json(value)
    elif isinstance(value, dict):
        fields(value, columns)
    else:
        table(value, columns)
    return 0


def dump_json(value: Any, out: TextIO | None = None) -> None:
    """Pretty JSON."""
    out = out or sys.stdout
    out.write(json.dumps(value, indent=2, sort_keys=True, default=str) + "\n")


class ProgressBar:
    """A progress bar for a transfer of known size, on stderr, drawn only when stderr is a terminal.

    Call it as ``bar(done, total)``; it closes itself when ``done`` reaches ``total`` (or on
    :meth:`close`).
    """

    def __init__(self, label: str, out: TextIO | None = None, width: int = 30) -> None:
        self.label = label
        self.out = out or sys.stderr
        self.width = width
        self.enabled = self.out.isatty()
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled or total <= 0:
            return
        if self._progress is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=self.width),
                DownloadColumn(binary_units=True),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=Console(file=self.out),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=total)
        self._progress.update(self._task, completed=done, total=total)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Stop drawing (idempotent)."""
        if self._progress is not None:
            self._progress.stop()
            self._progress = None


class StepStatus:
    """Progress of a job made of named steps (e.g. a compile): each step is printed as a line on stderr
    with the elapsed time, and on a terminal a spinner shows the step in progress."""

    def __init__(self, out: TextIO | None = None, clock: Callable[[], float] | None = None) -> None:
        import time

        self.out = out or sys.stderr
        self._clock = clock or time.monotonic
        self._start = self._clock()
        self._status: Any = None
        self._console: Any = None
        if self.out.isatty():
            from rich.console import Console

            self._console = Console(file=self.out, highlight=False)
            self._status = self._console.status("starting")
            self._status.start()

    def __call__(self, message: str) -> None:
        line = f"[{self._clock() - self._start:6.1f}s] {message}"
        if self._console is not None:
            from rich.text import Text

            self._console.print(Text(line))
            self._status.update(Text(message))
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def close(self) -> None:
        """Stop the spinner (idempotent)."""
        if self._status is not None:
            self._status.stop()
            self._status = None

    def __enter__(self) -> StepStatus:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


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
