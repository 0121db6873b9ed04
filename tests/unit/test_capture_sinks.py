"""The sink seam and the Disk sink, on a real directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgefleet.capture.sinks import DiskSink, open_sink
from edgefleet.core.errors import Code, InvalidArgument, NotFound, Unavailable


def test_put_get_list_uri(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path / "out")
    uri = sink.put("a/b/c.jsonl", b"one\n")
    assert uri == (tmp_path / "out" / "a" / "b" / "c.jsonl").as_uri()
    assert uri.startswith("file:///")
    assert sink.uri("a/b/c.jsonl") == uri
    assert sink.get("a/b/c.jsonl") == b"one\n"
    assert (tmp_path / "out" / "a" / "b" / "c.jsonl").read_bytes() == b"one\n"
    sink.put("a/b/raw-data/x.bin", b"\0" * 10)
    sink.put("a/z.jsonl", b"")
    assert sink.list() == ["a/b/c.jsonl", "a/b/raw-data/x.bin", "a/z.jsonl"]
    assert sink.list("a/b/") == ["a/b/c.jsonl", "a/b/raw-data/x.bin"]
    assert sink.list("a/b/c") == ["a/b/c.jsonl"]
    assert sink.list("nothing/") == []
    assert sink.read_uri(uri) == b"one\n"


def test_put_replaces_atomically_and_leaves_no_temporary_files(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path, fsync=True)
    sink.put("k/obj.jsonl", b"old")
    sink.put("k/obj.jsonl", b"new")
    assert sink.get("k/obj.jsonl") == b"new"
    assert sorted(p.name for p in (tmp_path / "k").iterdir()) == ["obj.jsonl"]


def test_list_ignores_stray_temporary_files(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path)
    sink.put("k/obj.jsonl", b"x")
    (tmp_path / "k" / ".obj.jsonl.0123456789ab.tmp").write_bytes(b"partial")  # left by a crash
    assert sink.list() == ["k/obj.jsonl"]


def test_uri_is_percent_encoded_and_readable(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path / "with space")
    uri = sink.put("f/a b.bin", b"data")
    assert "%20" in uri
    assert sink.read_uri(uri) == b"data"


@pytest.mark.parametrize("key", ["", "/abs", "a//b", "a/../b", "./a", "a\\b", "a/\0"])
def test_unsafe_keys_are_refused(tmp_path: Path, key: str) -> None:
    sink = DiskSink(tmp_path)
    with pytest.raises(InvalidArgument, match="sink key") as info:
        sink.put(key, b"x")
    assert info.value.code is Code.INVALID_ARGUMENT
    assert list(tmp_path.iterdir()) == []


def test_missing_object(tmp_path: Path) -> None:
    with pytest.raises(NotFound, match="no capture object 'nope'"):
        DiskSink(tmp_path).get("nope")


def test_read_uri_outside_root(tmp_path: Path) -> None:
    sink = DiskSink(tmp_path / "root")
    with pytest.raises(InvalidArgument, match="not under this sink's root"):
        sink.read_uri((tmp_path / "elsewhere").as_uri())
    with pytest.raises(InvalidArgument, match="not a local file:// URI"):
        sink.read_uri("s3://bucket/key")


def test_write_failure_is_translated_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "blocker").write_bytes(b"a file where a folder is needed")
    sink = DiskSink(tmp_path)
    with pytest.raises(Unavailable, match=r"cannot write capture object 'blocker/obj\.jsonl'") as info:
        sink.put("blocker/obj.jsonl", b"x")
    assert isinstance(info.value.__cause__, OSError)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["blocker"]


def test_open_sink_by_uri_scheme(tmp_path: Path) -> None:
    for target in (tmp_path, str(tmp_path), tmp_path.as_uri()):
        sink = open_sink(target)
        assert isinstance(sink, DiskSink)
        assert sink.root == tmp_path
    with pytest.raises(
        InvalidArgument, match=r"unknown capture destination scheme 'gs'.*\(known: file, s3\)"
    ):
        open_sink("gs://bucket/prefix")
    with pytest.raises(InvalidArgument, match="must not name a host"):
        open_sink("file://otherhost/x")
