"""Where capture objects go: a sink (put / get / list / uri) over an object store.

A key is a relative ``/``-separated name such as ``prefix/fleet/model/2024/01/31/09/<32hex>.jsonl``
(the rule is :func:`edgefleet.storage.validate_key`); the sink stores it in an
:class:`~edgefleet.storage.ObjectStore` and names the object with a URI, which capture records
use as ``data-ref``. Sinks are chosen by URI scheme with :func:`open_sink`.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit
from urllib.request import url2pathname

from edgefleet.core.errors import FailedPrecondition, InvalidArgument, NotFound
from edgefleet.storage import ObjectStore, StoreOptions, open_store, validate_key
from edgefleet.storage.file import FileStore
from edgefleet.storage.presigned import ControlPlaneStore, DeviceEndpoint, UploadMode

#: Destination schemes capture writes to: a directory (Disk) or an S3-protocol bucket (Cloud).
SCHEMES = ("file", "s3")


class Sink:
    """A destination for capture objects: an object store, with capture's names for its errors."""

    def __init__(self, store: ObjectStore) -> None:
        self.store = store

    def put(self, key: str, data: bytes) -> str:
        """Store ``data`` under ``key`` atomically (all or nothing, replacing any old one); return its URI."""
        self.store.put_bytes(validate_key(key, "sink"), data)
        return self.store.url(key)

    def get(self, key: str) -> bytes:
        """The object stored under ``key`` (NOT_FOUND if there is none)."""
        try:
            return self.store.get_bytes(validate_key(key, "sink"))
        except NotFound as exc:
            raise NotFound(f"no capture object {key!r} in {self.store.uri}") from exc

    def list(self, prefix: str = "") -> list[str]:
        """Keys starting with ``prefix`` (a plain string prefix, as object stores do), sorted."""
        return self.store.list(prefix)

    def uri(self, key: str) -> str:
        """The URI naming ``key`` in this sink (what a record's ``data-ref`` holds)."""
        return self.store.url(validate_key(key, "sink"))

    def check(self) -> None:
        """Fail now, with the store's error, if writing would fail (see ObjectStore.check)."""
        self.store.check()

    def __repr__(self) -> str:
        return f"Sink({self.store.uri!r})"


class DiskSink(Sink):
    """Objects as files under ``root`` (the Disk capture destination); URIs are ``file://`` URIs.

    ``put`` is atomic and, with ``fsync``, durable when it returns (see :mod:`edgefleet.storage.file`).
    """

    def __init__(self, root: Path | str, *, fsync: bool = True) -> None:
        self.root = Path(root).absolute()
        super().__init__(FileStore(self.root, StoreOptions(what="capture object", fsync=fsync)))

    def __repr__(self) -> str:
        return f"DiskSink({str(self.root)!r})"

    def read_uri(self, uri: str) -> bytes:
        """Read a ``file://`` URI this sink produced (e.g. a record's ``data-ref``)."""
        parts = urlsplit(uri)
        if parts.scheme != "file" or parts.netloc not in ("", "localhost"):
            raise InvalidArgument(f"{uri!r} is not a local file:// URI")
        try:
            key = Path(url2pathname(parts.path)).relative_to(self.root).as_posix()
        except ValueError as exc:
            raise InvalidArgument(f"{uri!r} is not under this sink's root {self.root}") from exc
        return self.get(key)


def open_sink(
    target: str | Path,
    *,
    fsync: bool = True,
    s3_endpoint_url: str | None = None,
    upload: UploadMode | str = UploadMode.AWS,
    control_plane: DeviceEndpoint | None = None,
) -> Sink:
    """The sink for ``target``: a ``file://`` URI or a plain path gives a :class:`DiskSink`,
    ``s3://bucket[/prefix]`` a sink over an S3-protocol store (``s3_endpoint_url``: MinIO, Ceph ...;
    None = AWS; credentials from the standard AWS chain).

    ``upload`` ``presigned`` or ``relay`` instead sends the objects through the control plane at
    ``control_plane`` (:mod:`edgefleet.storage.presigned`): no store credentials on the device, and
    ``target`` is not used (the control plane's capture store is the destination).

    Unknown schemes or upload modes fail with INVALID_ARGUMENT listing the known ones.
    """
    options = StoreOptions(what="capture object", fsync=fsync, s3_endpoint_url=s3_endpoint_url)
    try:
        mode = UploadMode(upload)
    except ValueError as exc:
        known = ", ".join(m.value for m in UploadMode)
        raise InvalidArgument(f"capture upload mode {upload!r} is unknown (known: {known})") from exc
    if mode is not UploadMode.AWS:
        if control_plane is None:
            raise FailedPrecondition(
                f"capture upload mode {mode.value} needs the control plane's device URL and this device's "
                "certificate, key and CA"
            )
        return Sink(ControlPlaneStore(control_plane, mode, options))
    store = open_store(target, options, schemes=SCHEMES, purpose="capture destination")
    return DiskSink(store.root, fsync=fsync) if isinstance(store, FileStore) else Sink(store)
