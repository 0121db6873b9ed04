"""The object-store contract, run over file://, memory:// and s3:// (a real S3-protocol HTTP server)."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edgefleet.capture.records import object_dir, object_key, partition_of, raw_key
from edgefleet.core.errors import Code, EdgefleetError, InvalidArgument, NotFound, Unavailable
from edgefleet.core.manifest import MODEL_NAME_RE, VERSION_RE
from edgefleet.storage import STORES, ObjectStore, StoreOptions, open_store, validate_key
from edgefleet.storage.base import CHUNK_SIZE
from edgefleet.storage.file import FileStore
from edgefleet.storage.memory import MemoryStore

HOSTILE_KEYS = [
    "",
    "..",
    "a/../b",
    "../escape",
    "./a",
    "/etc/passwd",
    "a\0b",
    "a\\b",
    "a//b",
    "a/",
    "/",
    ".hidden",
    "a/.tmp",
    "line\nbreak",
    "trailing\n",
    "-dash",
    " space",
    "a/b:c",
    "é",
    "x" * 1025,
]


@pytest.fixture(params=["file", "memory", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[ObjectStore]:
    name = uuid.uuid4().hex
    if request.param == "file":
        yield open_store((tmp_path / "store").as_uri())
    elif request.param == "memory":
        yield open_store(f"memory://{name}")
        MemoryStore.forget(name)
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        yield open_store(f"s3://edgefleet-test/{name}", StoreOptions(s3_endpoint_url=endpoint))


def test_put_get_size_exists_url(store: ObjectStore) -> None:
    assert not store.exists("a/b.bin")
    store.put_bytes("a/b.bin", b"hello")
    assert store.exists("a/b.bin")
    assert store.get_bytes("a/b.bin") == b"hello"
    assert store.size("a/b.bin") == 5
    store.put_bytes("a/b.bin", b"replaced")
    assert store.get_bytes("a/b.bin") == b"replaced"
    store.put_bytes("a/empty", b"")
    assert store.get_bytes("a/empty") == b""
    assert store.size("a/empty") == 0
    assert store.url("a/b.bin").endswith("/a/b.bin")
    assert store.url("a/b.bin").split("://", 1)[0] == store.uri.split("://", 1)[0]


def test_put_file(store: ObjectStore, tmp_path: Path) -> None:
    source = tmp_path / "src.bin"
    source.write_bytes(b"\x00\x01" * 1000)
    store.put_file("f/src.bin", source)
    assert store.get_bytes("f/src.bin") == source.read_bytes()


def test_streaming_a_multi_mib_object(store: ObjectStore) -> None:
    data = os.urandom(CHUNK_SIZE * 5 + 12345)  # several chunks and S3 multipart parts

    class CountingReader(io.BytesIO):
        def __init__(self, payload: bytes) -> None:
            super().__init__(payload)
            self.largest = 0

        def read(self, size: int | None = -1) -> bytes:
            chunk = super().read(size)
            self.largest = max(self.largest, len(chunk))
            return chunk

    source = CountingReader(data)
    store.put_stream("big/blob.bin", source)
    assert source.largest < len(data)  # read in pieces, never all at once
    assert store.size("big/blob.bin") == len(data)
    chunks = list(store.open_range("big/blob.bin"))
    assert len(chunks) > 1
    assert all(len(chunk) <= CHUNK_SIZE for chunk in chunks)
    assert b"".join(chunks) == data
    start, length = CHUNK_SIZE - 7, CHUNK_SIZE * 2 + 100
    assert b"".join(store.open_range("big/blob.bin", start, length)) == data[start : start + length]
    assert b"".join(store.open_range("big/blob.bin", len(data) - 10)) == data[-10:]
    assert b"".join(store.open_range("big/blob.bin", len(data))) == b""
    assert b"".join(store.open_range("big/blob.bin", 0, 0)) == b""


def test_list_by_prefix_and_delete(store: ObjectStore) -> None:
    for key in ("p/2024/01/a.jsonl", "p/2024/01/raw-data/x.bin", "p/2024/02/b.jsonl", "q/c.jsonl", "pz"):
        store.put_bytes(key, key.encode())
    assert store.list() == [
        "p/2024/01/a.jsonl",
        "p/2024/01/raw-data/x.bin",
        "p/2024/02/b.jsonl",
        "pz",
        "q/c.jsonl",
    ]
    assert store.list("p/") == ["p/2024/01/a.jsonl", "p/2024/01/raw-data/x.bin", "p/2024/02/b.jsonl"]
    assert store.list("p") == [*store.list("p/"), "pz"]
    assert store.list("p/2024/01/") == ["p/2024/01/a.jsonl", "p/2024/01/raw-data/x.bin"]
    assert store.list("p/2024/01/a") == ["p/2024/01/a.jsonl"]
    assert store.list("nothing/") == []
    store.delete("p/2024/01/a.jsonl")
    store.delete("p/2024/01/a.jsonl")  # absent: no error
    store.delete("never/was")
    assert not store.exists("p/2024/01/a.jsonl")
    assert store.list("p/2024/01/") == ["p/2024/01/raw-data/x.bin"]


def test_missing_objects_are_not_found(store: ObjectStore) -> None:
    with pytest.raises(NotFound, match=r"object 'no/such\.bin' does not exist in ") as info:
        store.get_bytes("no/such.bin")
    assert info.value.code is Code.NOT_FOUND
    with pytest.raises(NotFound, match="does not exist"):
        store.size("no/such.bin")
    with pytest.raises(NotFound, match="does not exist"):
        store.open_range("no/such.bin")  # raised by the call, before iterating


@pytest.mark.parametrize("key", HOSTILE_KEYS)
def test_hostile_keys_are_refused_everywhere_and_nothing_is_written(
    store: ObjectStore, tmp_path: Path, key: str
) -> None:
    source = tmp_path / "payload"
    source.write_bytes(b"x")
    operations = [
        lambda: store.put_bytes(key, b"x"),
        lambda: store.put_stream(key, io.BytesIO(b"x")),
        lambda: store.put_file(key, source),
        lambda: store.get_bytes(key),
        lambda: store.open_range(key),
        lambda: store.size(key),
        lambda: store.exists(key),
        lambda: store.delete(key),
        lambda: store.url(key),
    ]
    for operation in operations:
        with pytest.raises(
            InvalidArgument, match=r"object key .*(unsafe component|non-empty relative|longer than)"
        ) as info:
            operation()
        assert info.value.code is Code.INVALID_ARGUMENT
    assert store.list() == []
    if isinstance(store, FileStore):
        assert not store.root.exists() or list(store.root.iterdir()) == []


@pytest.mark.parametrize("prefix", ["../", "a/../", "/abs/", "a\0", "a\\b", "a//"])
def test_hostile_list_prefixes_are_refused(store: ObjectStore, prefix: str) -> None:
    with pytest.raises(InvalidArgument, match="object key") as info:
        store.list(prefix)
    assert info.value.code is Code.INVALID_ARGUMENT


def test_file_store_layout_temporary_files_and_os_errors(tmp_path: Path) -> None:
    store = FileStore(tmp_path, StoreOptions(what="capture object"))
    store.put_bytes("k/obj.jsonl", b"x")
    assert (tmp_path / "k" / "obj.jsonl").read_bytes() == b"x"  # a key is a path under the root
    assert store.url("k/obj.jsonl") == (tmp_path / "k" / "obj.jsonl").as_uri()
    (tmp_path / "k" / ".obj.jsonl.0123456789ab.tmp").write_bytes(b"partial")  # left by a crash
    (tmp_path / "k" / ".upload-abc").write_bytes(b"partial")
    assert store.list() == ["k/obj.jsonl"]
    (tmp_path / "blocker").write_bytes(b"a file where a folder is needed")
    with pytest.raises(Unavailable, match=r"cannot write capture object 'blocker/o' under ") as info:
        store.put_bytes("blocker/o", b"x")
    assert isinstance(info.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker", "k"]


def test_s3_errors_are_translated(s3_endpoint: str) -> None:
    store = open_store(
        "s3://no-such-bucket-here/p", StoreOptions(what="artifact", s3_endpoint_url=s3_endpoint)
    )
    with pytest.raises(EdgefleetError, match="no-such-bucket-here") as info:
        store.put_bytes("k", b"x")
    assert info.value.code is Code.UNAVAILABLE
    assert type(info.value.__cause__).__module__.startswith("botocore")
    with pytest.raises(InvalidArgument, match="must look like s3://bucket/prefix"):
        open_store("s3:///no-bucket")


def test_s3_keys_are_prefix_slash_key(s3_endpoint: str) -> None:
    import boto3

    prefix = uuid.uuid4().hex
    store = open_store(f"s3://edgefleet-test/{prefix}/", StoreOptions(s3_endpoint_url=s3_endpoint))
    store.put_bytes("models/m/1/x.tar.gz", b"x")
    listed = boto3.client("s3", endpoint_url=s3_endpoint).list_objects_v2(
        Bucket="edgefleet-test", Prefix=prefix
    )
    assert [o["Key"] for o in listed["Contents"]] == [f"{prefix}/models/m/1/x.tar.gz"]
    assert store.url("models/m/1/x.tar.gz") == f"s3://edgefleet-test/{prefix}/models/m/1/x.tar.gz"


def test_registry_by_scheme(tmp_path: Path) -> None:
    assert sorted(STORES) == ["file", "memory", "s3"]
    for target in (tmp_path, str(tmp_path), tmp_path.as_uri()):
        chosen = open_store(target)
        assert isinstance(chosen, FileStore)
        assert chosen.root == tmp_path
    with pytest.raises(
        InvalidArgument,
        match=r"unknown object store scheme 'gs' is not supported \(known: file, memory, s3\)",
    ) as info:
        open_store("gs://bucket/prefix")
    assert info.value.code is Code.INVALID_ARGUMENT
    with pytest.raises(
        InvalidArgument, match=r"unknown capture destination scheme 's3' is not supported \(known: file\)"
    ):
        open_store("s3://b/p", schemes=("file",), purpose="capture destination")
    with pytest.raises(InvalidArgument, match="must not name a host"):
        open_store("file://otherhost/x")


def test_memory_stores_of_one_name_share_objects() -> None:
    name = uuid.uuid4().hex
    open_store(f"memory://{name}").put_bytes("k", b"v")
    assert open_store(f"memory://{name}").get_bytes("k") == b"v"
    assert open_store(f"memory://{uuid.uuid4().hex}").list() == []
    MemoryStore.forget(name)
    assert open_store(f"memory://{name}").list() == []


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False
    )


def test_storage_imports_only_core_and_boto3_lazily() -> None:
    result = _run(
        "import sys; import edgefleet.storage, edgefleet.storage.file, edgefleet.storage.memory, edgefleet.storage.s3\n"
        "from edgefleet.storage import open_store\n"
        "open_store('memory://x').put_bytes('k', b'v')\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('edgefleet.') or m.split('.')[0] in ('boto3', 'botocore'))\n"
        "print(' '.join(loaded))"
    )
    assert result.returncode == 0, result.stderr
    loaded = result.stdout.split()
    assert "edgefleet.storage.s3" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("boto3", "botocore")], loaded
    assert all(m.split(".")[1] in ("core", "storage") for m in loaded), loaded


def test_missing_boto3_names_the_extra() -> None:
    result = _run(
        "import sys; sys.modules['boto3'] = None\n"  # what an install without the extra looks like
        "from edgefleet.core.errors import FailedPrecondition\n"
        "from edgefleet.storage import open_store\n"
        "try:\n    open_store('s3://bucket/p')\nexcept FailedPrecondition as exc:\n"
        "    print(exc.code.name, exc, type(exc.__cause__).__name__)\n"
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("FAILED_PRECONDITION ")
    assert "pip install 'edgefleet[s3]'" in result.stdout
    assert result.stdout.rstrip().endswith("ModuleNotFoundError")


# --- the one key rule -------------------------------------------------------------------------------


@given(st.text(max_size=40))
def test_accepted_keys_stay_under_the_root(key: str) -> None:
    try:
        validate_key(key)
    except InvalidArgument:
        return  # refused keys: the hostile-key tests pin the code
    root = Path("/srv/store")
    parts = key.split("/")
    assert all(part and part not in (".", "..") and not part.startswith(".") for part in parts)
    assert key.isascii() and key.isprintable()
    assert os.path.normpath(root / key) == str(root / key)
    assert (root / key).is_relative_to(root)


_names = st.from_regex(MODEL_NAME_RE, fullmatch=True).filter(lambda s: len(s) <= 63)
_times = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2099, 12, 31), timezones=st.just(UTC)
)


@given(
    prefix=st.lists(_names, max_size=3).map("/".join),
    fleet=_names,
    model=_names,
    when=_times,
    batch=st.uuids().map(lambda u: u.hex),
    capture=st.uuids().map(str),
    tag=st.sampled_from(["input", "output", "auxinput", "auxoutput"]),
    index=st.integers(0, 1000),
    kind=st.sampled_from(["TENSOR", "CSV", "JSON", "NONE"]),
)
def test_every_capture_key_is_accepted(
    prefix: str,
    fleet: str,
    model: str,
    when: datetime,
    batch: str,
    capture: str,
    tag: str,
    index: int,
    kind: str,
) -> None:
    directory = object_dir(prefix, fleet, model, partition_of(when))
    assert validate_key(object_key(directory, batch))
    assert validate_key(raw_key(directory, capture, tag, index, kind))


@given(
    name=_names,
    version=st.from_regex(VERSION_RE, fullmatch=True).filter(
        lambda v: len(v) <= 63 and not v.startswith(".")
    ),
    target=st.sampled_from(["onnxruntime-x86_64", "tvm-aarch64", "litert-armv7l"]),
    digest=st.binary(min_size=32, max_size=32).map(bytes.hex),
)
def test_every_package_key_is_accepted(name: str, version: str, target: str, digest: str) -> None:
    safe_version = version.replace(" ", "_")
    assert validate_key(f"models/{name}/{safe_version}/{target}/{digest}/{name}-{safe_version}.tar.gz")


@pytest.mark.parametrize(
    ("knobs", "message"),
    [
        (
            {"folder_prefix": "pre/.hidden"},
            r"folder prefix 'pre/\.hidden': component '\.hidden' cannot be used",
        ),
        ({"folder_prefix": "a\nb"}, "folder prefix"),
        ({"fleet_name": "fleet:1"}, "capture fleet name 'fleet:1' cannot be used as a folder name"),
    ],
)
def test_capture_config_refuses_what_the_key_rule_refuses(
    tmp_path: Path, knobs: dict[str, str], message: str
) -> None:
    """Capture folders follow the key rule, so a configuration is refused up front, not at every write."""
    from edgefleet.capture import CaptureConfig

    base: dict[str, object] = {
        "spool_dir": tmp_path,
        "destination_root": tmp_path,
        "device_name": "d",
        "fleet_name": "f",
    }
    with pytest.raises(InvalidArgument, match=message) as info:
        CaptureConfig(**{**base, **knobs})
    assert info.value.code is Code.INVALID_ARGUMENT
    assert list(tmp_path.iterdir()) == []
