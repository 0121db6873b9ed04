"""Durable files: every file the daemon persists is replaced atomically and fsynced.

A write goes to a temporary file in the same directory, is fsynced, renamed over the target and the
directory is fsynced, so after a crash or power loss the file holds either the old or the new
content, never a mix. Reads of a damaged file (never written by us) fail with the file's name.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

from edgefleet.core.errors import EdgefleetError, FailedPrecondition


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically (file mode ``mode``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), mode)
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise EdgefleetError(f"cannot write {path}: {exc}") from exc
    fsync_dir(path.parent)


def move_atomic(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` (same directory) and make the rename durable."""
    try:
        os.replace(source, target)
    except OSError as exc:
        raise EdgefleetError(f"cannot move {source} to {target}: {exc}") from exc
    fsync_dir(target.parent)


def write_json_atomic(path: Path, value: Any, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``value`` as JSON atomically."""
    write_bytes_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"), mode=mode)


def read_json(path: Path) -> Any | None:
    """The JSON value stored at ``path``; None when the file does not exist."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise EdgefleetError(f"cannot read {path}: {exc}") from exc
    try:
        return json.loads(data)
    except ValueError as exc:
        raise FailedPrecondition(
            f"{path} is damaged (not JSON): {exc}; move it away to start afresh"
        ) from exc


def fsync_dir(directory: Path) -> None:
    """fsync a directory so a rename or creation in it survives power loss."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return  # not every file system lets a directory be opened; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for the last component; return it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
