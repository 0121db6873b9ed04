"""The object-store seam: the protocol every store implements and the one rule for keys.

A key is a relative ``/``-separated name. The rule is the strict one the server's artifact store
applied (each component ``[A-Za-z0-9_][A-Za-z0-9_.+=@ -]*``), not the capture sink's looser one
(anything but ``/``, ``\\``, NUL, empty, ``.`` and ``..``): every key edgefleet writes fits it
(package keys ``models/<name>/<version>/<target>/<sha256>/<file>``, capture keys
``<prefix>/<fleet>/<model>/YYYY/MM/DD/HH/[raw-data/]<hex>...``), and it also keeps out what the
loose rule let through and stores disagree on: control characters and newlines, names starting
with ``.`` (hidden files, which a file store uses for its temporary files), ``-``/space-led
names, and characters S3 documents as needing special handling (``\\ { } ^ % ` [ ] " < > ~ # |``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

from edgefleet.core.errors import InvalidArgument

#: Bytes per chunk when streaming an object in or out.
CHUNK_SIZE = 1024 * 1024
#: S3's limit on a key's length (UTF-8 bytes); file stores keep it too, so keys move between them.
MAX_KEY_BYTES = 1024
#: The usual file-system limit on one name.
MAX_COMPONENT_BYTES = 255

_COMPONENT_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+=@ -]*")


def is_safe_component(part: str) -> bool:
    """Whether ``part`` may be one ``/``-free component of a key (or a folder named after it)."""
    return (
        _COMPONENT_RE.fullmatch(part) is not None
        and part not in (".", "..")
        and len(part.encode()) <= MAX_COMPONENT_BYTES
    )


def validate_key(key: str, what: str = "object") -> str:
    """``key`` if it is a safe relative key, else INVALID_ARGUMENT naming ``what`` the key is for."""
    if not isinstance(key, str) or not key or key.startswith("/") or "\\" in key or "\0" in key:
        raise InvalidArgument(f"{what} key {key!r} must be a non-empty relative '/'-separated name")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidArgument(f"{what} key {key[:64]!r}... is longer than {MAX_KEY_BYTES} bytes")
    for part in key.split("/"):
        if not is_safe_component(part):
            raise InvalidArgument(f"{what} key {key!r} has an unsafe component {part!r}")
    return key


def validate_prefix(prefix: str, what: str = "object") -> str:
    """``prefix`` if it can start a key: empty, or its part up to the last ``/`` is a safe key."""
    if "\0" in prefix or "\\" in prefix:
        raise InvalidArgument(f"{what} key prefix {prefix!r} must not contain NUL or '\\'")
    if "/" in prefix:
        validate_key(prefix.rsplit("/", 1)[0], what)
    return prefix


class ObjectStore(Protocol):
    """A flat key -> bytes store (a directory, a bucket, memory). Errors are ``EdgefleetError``s:
    an absent object is NOT_FOUND, a bad key INVALID_ARGUMENT, a store that cannot be reached or
    written UNAVAILABLE (RESOURCE_EXHAUSTED when full, PERMISSION_DENIED when refused).

    Writes are atomic: a reader sees the old object or the new one, never part of one.
    """

    @property
    def uri(self) -> str:
        """The store's URI (``file:///dir``, ``s3://bucket/prefix``, ``memory://name``)."""
        ...

    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key``, replacing any old object."""
        ...

    def put_stream(self, key: str, source: BinaryIO) -> None:
        """Store what ``source`` reads until EOF under ``key``, in chunks (never all in memory)."""
        ...

    def put_file(self, key: str, path: Path) -> None:
        """Store the file at ``path`` under ``key``."""
        ...

    def get_bytes(self, key: str) -> bytes:
        """The whole object."""
        ...

    def open_range(self, key: str, start: int = 0, length: int | None = None) -> Iterator[bytes]:
        """Chunks of the object from ``start``, ``length`` bytes (to the end when None).

        NOT_FOUND is raised by the call itself, not on the first iteration.
        """
        ...

    def size(self, key: str) -> int:
        """The object's size in bytes."""
        ...

    def exists(self, key: str) -> bool:
        """Whether an object is stored under ``key``."""
        ...

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as object stores do), sorted."""
        ...

    def delete(self, key: str) -> None:
        """Remove ``key``; no error if it is absent."""
        ...

    def url(self, key: str) -> str:
        """The URI naming the object (``file:///...``, ``s3://bucket/key``), e.g. for records."""
        ...
