"""core.files: atomic, durable file replacement shared by the device, the server and the stores."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from edgefleet.core.errors import EdgefleetError, FailedPrecondition
from edgefleet.core.files import (
    atomic_writer,
    fsync_dir,
    move_atomic,
    read_json,
    temp_path,
    write_bytes_atomic,
    write_json_atomic,
)


def _leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir() if p.name.startswith("."))


def test_write_replaces_the_file_with_the_exact_mode(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "key.pem"
    write_bytes_atomic(target, b"old", mode=0o600)
    write_bytes_atomic(target, b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert _leftovers(target.parent) == []


def test_mode_none_follows_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        with atomic_writer(tmp_path / "obj", mode=None) as handle:
            handle.write(b"x")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "obj").stat().st_mode) == 0o640


def test_a_reader_never_sees_a_partial_file(tmp_path: Path) -> None:
    target = tmp_path / "state.bin"
    contents = [bytes([n]) * 200_000 for n in range(1, 9)]
    write_bytes_atomic(target, contents[0])
    stop = threading.Event()
    seen: set[bytes] = set()
    bad: list[int] = []

    def read() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            if data not in contents:
                bad.append(len(data))
            seen.add(data[:1])

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for _ in range(5):
            for data in contents:
                write_bytes_atomic(target, data)
    finally:
        stop.set()
        reader.join(timeout=60)
    assert bad == []
    assert seen  # the reader did read


def test_temp_names_are_unique_under_threads(tmp_path: Path) -> None:
    target = tmp_path / "shared.json"
    names: list[Path] = []
    lock = threading.Lock()
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            for i in range(25):
                with lock:
                    names.append(temp_path(target))
                write_json_atomic(target, {"writer": n, "i": i})
        except BaseException as exc:  # reported below; a thread cannot raise into the test
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert errors == []
    assert len(set(names)) == len(names) == 200
    value = read_json(target)
    assert isinstance(value, dict) and value["i"] == 24  # the last write of some writer, whole
    assert _leftovers(tmp_path) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp(tmp_path: Path) -> None:
    target = tmp_path / "config.json"
    write_json_atomic(target, {"v": 1})

    def write_half_then_fail() -> None:
        with atomic_writer(target) as handle:
            handle.write(b'{"v": 2, "trunc')
            handle.flush()
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space left"):
        write_half_then_fail()
    assert read_json(target) == {"v": 1}
    assert _leftovers(tmp_path) == []


def test_an_unwritable_target_is_an_edgefleet_error_and_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "is-a-dir"
    (target / "inside").mkdir(parents=True)
    with pytest.raises(EdgefleetError, match=r"cannot write .*is-a-dir"):
        write_bytes_atomic(target, b"data")
    assert (target / "inside").is_dir()
    assert _leftovers(tmp_path) == []


def test_move_is_atomic_and_reports_a_missing_source(tmp_path: Path) -> None:
    source, target = tmp_path / "a", tmp_path / "b"
    source.write_bytes(b"new")
    target.write_bytes(b"old")
    move_atomic(source, target)
    assert target.read_bytes() == b"new" and not source.exists()
    with pytest.raises(EdgefleetError, match="cannot move"):
        move_atomic(source, target)
    assert target.read_bytes() == b"new"


def test_read_json_missing_and_damaged(tmp_path: Path) -> None:
    assert read_json(tmp_path / "absent.json") is None
    (tmp_path / "bad.json").write_bytes(b"{not json")
    with pytest.raises(FailedPrecondition, match="damaged"):
        read_json(tmp_path / "bad.json")


def test_fsync_dir_raises_for_a_missing_directory(tmp_path: Path) -> None:
    fsync_dir(tmp_path)
    with pytest.raises(FileNotFoundError, match="No such file"):
        fsync_dir(tmp_path / "absent")
