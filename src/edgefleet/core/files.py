"""Durable files: every file edgefleet persists is replaced atomically and, by default, fsynced.

A write goes to a hidden ``.<name>.<random>.tmp`` beside the target (``O_EXCL``: concurrent writers
never share one), is fsynced, renamed over the target, and the directory fsynced: after a crash or
power loss the file holds the old or the new content, never a mix; a failed write leaves the old.

:func:`fsync_dir` raises on an error (an I/O error means the rename may not be on disk; calling it
durable would hide that) and is silent only where a file system cannot sync directories at all.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from edgefleet.core.errors import EdgefleetError, FailedPrecondition

_NO_DIR_SYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


def fsync_dir(directory: Path) -> None:
    """fsync a directory so entries created or renamed in it survive power loss (OSError on failure)."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_DIR_SYNC:
            raise
    finally:
        os.close(fd)


def fsync_file(path: Path) -> None:
    """fsync the contents of the file at ``path`` (OSError on failure)."""
    with path.open("rb") as handle:
        os.fsync(handle.fileno())


def sha256_file(path: Path) -> str:
    """Lower-case hex SHA-256 of the file at ``path`` (OSError on failure)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path`` (``.<name>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int | None = 0o644, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` atomically when the ``with`` block ends without error.

    ``mode``: permission bits, set before any byte lands (None: ``0o666`` less the umask). ``fsync``
    off: still atomic against a crash, not against power loss. OSError on failure, ``path`` untouched.
    """
    tmp = temp_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666 if mode is None else 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            if mode is not None:
                os.fchmod(handle.fileno(), mode)  # exact bits, whatever the umask
            yield handle
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # the original error is the one to report
            tmp.unlink(missing_ok=True)
        raise
    if fsync:
        fsync_dir(path.parent)


def write_bytes_atomic(path: Path, data: bytes, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically and durably (parents created); EdgefleetError on failure."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_writer(path, mode=mode) as handle:
            handle.write(data)
    except OSError as exc:
        raise EdgefleetError(f"cannot write {path}: {exc}") from exc


def write_json_atomic(path: Path, value: Any, *, mode: int = 0o644) -> None:
    """Replace ``path`` with ``value`` as JSON atomically."""
    write_bytes_atomic(path, json.dumps(value, indent=1, sort_keys=True).encode("utf-8"), mode=mode)


def move_atomic(source: Path, target: Path) -> None:
    """Rename ``source`` over ``target`` (same file system) and make the rename durable."""
    try:
        os.replace(source, target)
        fsync_dir(target.parent)
    except OSError as exc:
        raise EdgefleetError(f"cannot move {source} to {target}: {exc}") from exc


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


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) with mode 0700 for the last component; return it."""
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path
