"""Durable files: every file edgefleet persists is replaced atomically and, by default, fsynced.

A write goes to a hidden temporary file beside the target (``.<name>.<random>.tmp``, created with
``O_EXCL``, so concurrent writers never share one), is fsynced, renamed over the target, and the
directory is fsynced: after a crash or power loss the file holds either the old or the new content,
never a mix, and a reader never sees a partial file. A failed write removes its temporary file and
leaves the old file as it was.

:func:`fsync_dir` raises when the file system reports an error (an I/O error means the rename may
not be on disk, and claiming it durable would hide that), and is silent only where the file system
cannot fsync a directory at all (``EINVAL``/``ENOTSUP``): the rename is still atomic there and there
is nothing more to do.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from edgefleet.core.errors import EdgefleetError, FailedPrecondition

# errnos meaning "this file system does not sync directories", not "the sync failed"
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


def temp_path(path: Path) -> Path:
    """A fresh hidden temporary name beside ``path`` (``.<name>.<random>.tmp``)."""
    return path.with_name(f".{path.name}.{secrets.token_hex(8)}.tmp")


@contextlib.contextmanager
def atomic_writer(path: Path, *, mode: int | None = 0o644, fsync: bool = True) -> Iterator[IO[bytes]]:
    """A binary file that replaces ``path`` atomically when the ``with`` block ends without error.

    ``mode``: the file's permission bits, set before any byte is written (None: ``0o666`` less the
    umask, like ``open``). ``fsync``: sync the file and its directory before returning (off: still
    atomic against a crash of this process, not against power loss). Raises OSError; on any error
    the temporary file is removed and ``path`` is untouched.
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
