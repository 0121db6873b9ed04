"""Shared-memory tensor transport on real System V segments and POSIX objects.

Agent side: :class:`edgefleet.agent.shm.SharedMemoryReader`; client side:
:mod:`edgefleet.client.shm` (segments the client owns).
"""

from __future__ import annotations

import mmap
import os
import shutil
import subprocess
import sys
import textwrap
import threading
import uuid
from collections.abc import Callable, Iterator

import numpy as np
import posix_ipc
import pytest
import sysv_ipc

from edgefleet.agent.shm import SharedMemoryReader, ShmReaderConfig
from edgefleet.client.shm import MIN_SEGMENT_BYTES, OwnedSegment, SegmentPool, size_class
from edgefleet.core.errors import FailedPrecondition, InvalidArgument, Unavailable
from edgefleet.core.tensors import DataType

U64 = (1 << 64) - 1


class FakeClock:
    """Monotonic seconds the test advances by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _cleanup(shm: sysv_ipc.SharedMemory) -> None:
    try:
        shm.remove()
    except sysv_ipc.ExistentialError:
        pass
    try:
        shm.detach()
    except sysv_ipc.Error:
        pass


MakeSegment = Callable[..., sysv_ipc.SharedMemory]


@pytest.fixture
def make_segment() -> Iterator[MakeSegment]:
    """Create System V segments holding given bytes (the owner stays attached unless told otherwise)."""
    created: list[sysv_ipc.SharedMemory] = []

    def make(data: bytes, size: int | None = None, mode: int = 0o600) -> sysv_ipc.SharedMemory:
        shm = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=size or len(data))
        created.append(shm)
        shm.write(data)
        shm.mode = mode
        return shm

    yield make
    for shm in created:
        _cleanup(shm)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def reader(clock: FakeClock) -> Iterator[SharedMemoryReader]:
    r = SharedMemoryReader(ShmReaderConfig(sweep_interval=10.0), clock=clock)
    yield r
    r.close()


def _gone(segment_id: int) -> bool:
    """True when the kernel has freed segment ``segment_id``."""
    try:
        shm = sysv_ipc.attach(segment_id, None, sysv_ipc.SHM_RDONLY)
    except (sysv_ipc.ExistentialError, ValueError):  # shmat: EIDRM / EINVAL
        return True
    shm.detach()
    return False


def _maps_perms(key: int) -> list[str]:
    """Permissions of this process's mappings of the System V segment with ``key``."""
    tag = f"SYSV{key & 0xFFFFFFFF:08x}"
    with open("/proc/self/maps") as maps:
        return [line.split()[1] for line in maps if tag in line]


def _payload(n: int, seed: int = 0) -> bytes:
    return np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8).tobytes()


# -- System V: reads --------------------------------------------------------------------------------
class TestSysvRead:
    def test_reads_the_whole_segment_zero_copy(
        self, reader: SharedMemoryReader, make_segment: MakeSegment
    ) -> None:
        data = np.arange(1024, dtype="<f4").tobytes()
        seg = make_segment(data, mode=0o444)  # vendor clients make the segment read-only
        view = reader.read_sysv(seg.id, 0, 0)
        assert bytes(view) == data
        arr = np.frombuffer(view, dtype="<f4")
        seg.write(np.float32(42).tobytes(), 8)  # the owner's later writes show through: no copy was made
        assert arr[2] == 42

    def test_offset_and_size(self, reader: SharedMemoryReader, make_segment: MakeSegment) -> None:
        data = _payload(10_000)
        seg = make_segment(data)
        assert bytes(reader.read_sysv(seg.id, 100, 50)) == data[100:150]
        assert bytes(reader.read_sysv(seg.id, 0, 10_000)) == data
        assert bytes(reader.read_sysv(seg.id, 9_999, 1)) == data[9_999:]

    def test_size_zero_means_rest_of_segment(
        self, reader: SharedMemoryReader, make_segment: MakeSegment
    ) -> None:
        data = _payload(5000)
        seg = make_segment(data)
        assert bytes(reader.read_sysv(seg.id, 1234, 0)) == data[1234:]
        assert bytes(reader.read_sysv(seg.id, 4999, 0)) == data[4999:]

    def test_attaches_read_only(self, reader: SharedMemoryReader, make_segment: MakeSegment) -> None:
        seg = make_segment(_payload(8192), mode=0o400)
        seg.detach()  # leave only the reader's attachment in this process's maps
        view = reader.read_sysv(seg.id, 0, 0)
        assert view.readonly
        arr = np.frombuffer(view, dtype=np.uint8)
        assert not arr.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1
        assert _maps_perms(seg.key) == ["r--s"]

    def test_repeated_reads_reuse_one_attachment(
        self, reader: SharedMemoryReader, make_segment: MakeSegment
    ) -> None:
        seg = make_segment(_payload(4096))
        for _ in range(5):
            assert len(reader.read_sysv(seg.id, 0, 0)) == 4096
        info = reader.cache_info()
        assert (info.misses, info.hits, info.segments, info.leases) == (1, 4, 1, 0)
        assert seg.number_attached == 2  # owner + reader


# -- System V: bad handles --------------------------------------------------------------------------
class TestSysvBadHandles:
    def test_unknown_id(self, reader: SharedMemoryReader, make_segment: MakeSegment) -> None:
        seg = make_segment(b"x" * 100)
        dead = seg.id
        seg.remove()
        seg.detach()
        assert _gone(dead)
        with pytest.raises(InvalidArgument, match=rf"segment {dead} does not exist"):
            reader.read_sysv(dead, 0, 0)
        assert reader.cache_info().segments == 0

    @pytest.mark.parametrize(
        ("segment_id", "match"),
        [
            (2**31, r"segment_id 2147483648 is not a System V segment id"),
            (2**63 + 12345, r"is not a System V segment id"),
            (U64, r"is not a System V segment id"),
            (2**64, r"segment_id 18446744073709551616 is not a uint64"),
            (-1, r"segment_id -1 is not a uint64"),
        ],
    )
    def test_ids_outside_the_shmid_range(
        self, reader: SharedMemoryReader, segment_id: int, match: str
    ) -> None:
        with pytest.raises(InvalidArgument, match=match):
            reader.read_sysv(segment_id, 0, 0)

    @pytest.mark.parametrize(
        ("offset", "size", "match"),
        [
            (4096, 0, r"offset 4096 is out of range \(the object has 4096 bytes\)"),
            (5000, 1, r"offset 5000 is out of range"),
            (0, 4097, r"offset 0 \+ size 4097 = 4097 exceeds the object's 4096 bytes"),
            (4000, 97, r"offset 4000 \+ size 97 = 4097 exceeds"),
            (U64, 0, r"offset 18446744073709551615 is out of range"),
            (1, U64, r"size 18446744073709551615 = 18446744073709551616 exceeds"),  # wraps to 0 in uint64
            (U64, U64, r"offset 18446744073709551615 is out of range"),
            (2**64, 0, r"offset 18446744073709551616 is not a uint64"),
            (0, 2**64 + 1, r"size 18446744073709551617 is not a uint64"),
            (-5, 0, r"offset -5 is not a uint64"),
        ],
    )
    def test_ranges_outside_the_segment(
        self, reader: SharedMemoryReader, make_segment: MakeSegment, offset: int, size: int, match: str
    ) -> None:
        seg = make_segment(_payload(4096))
        with pytest.raises(InvalidArgument, match=match):
            reader.read_sysv(seg.id, offset, size)
        # nothing was leaked or left broken: the segment still reads fine
        assert reader.cache_info().leases == 0
        assert len(reader.read_sysv(seg.id, 0, 0)) == 4096

    def test_segment_the_agent_may_not_read(self, make_segment: MakeSegment) -> None:
        """A segment the agent's user has no read permission on (the reader drops root to nobody)."""
        if os.geteuid() != 0:
            pytest.skip("needs root to drop to another user")
        seg = make_segment(b"secret" * 100, mode=0o600)
        script = textwrap.dedent(
            f"""
            import os
            from edgefleet.agent.shm import SharedMemoryReader
            from edgefleet.core.errors import InvalidArgument
            reader = SharedMemoryReader()
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                reader.read_sysv({seg.id}, 0, 0)
            except InvalidArgument as exc:
                print(exc)
            """
        )
        result = subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
        )
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == (
            f"INVALID_ARGUMENT: shared memory segment {seg.id} is not readable by the agent (permission denied)"
        )

    def test_non_integer_values(self, reader: SharedMemoryReader) -> None:
        with pytest.raises(InvalidArgument, match="offset must be an integer, got float"):
            reader.read_sysv(1, 0.5, 0)  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="segment_id must be an integer, got bool"):
            reader.read_sysv(True, 0, 0)


# -- System V: cache safety ---------------------------------------------------------------------------
class TestSysvCacheSafety:
    def test_removed_segment_is_refused_and_freed(
        self, reader: SharedMemoryReader, make_segment: MakeSegment
    ) -> None:
        seg = make_segment(_payload(4096))
        sid = seg.id
        assert len(reader.read_sysv(sid, 0, 0)) == 4096  # now cached
        seg.remove()
        seg.detach()
        assert not _gone(sid)  # only the reader's cached attachment keeps it alive
        with pytest.raises(InvalidArgument, match=rf"segment {sid} has been removed"):
            reader.read_sysv(sid, 0, 0)
        assert reader.cache_info().segments == 0
        assert _gone(sid)  # the reader let go, the kernel freed it

    def test_removed_segment_still_attached_by_its_owner_is_readable(
        self, reader: SharedMemoryReader, make_segment: MakeSegment
    ) -> None:
        """Linux lets processes attach a removed segment while anyone is attached (clients use it)."""
        data = _payload(4096)
        seg = make_segment(data)
        seg.remove()  # owner still attached
        assert bytes(reader.read_sysv(seg.id, 0, 0)) == data
        assert bytes(reader.read_sysv(seg.id, 0, 0)) == data  # and from the cache
        seg.detach()
        with pytest.raises(InvalidArgument, match="has been removed"):
            reader.read_sysv(seg.id, 0, 0)

    def test_live_view_survives_removal_and_close(
        self, reader: SharedMemoryReader, make_segment: MakeSegment
    ) -> None:
        """The use-after-unmap hazard: no detach while a view is alive, detach when it goes."""
        data = np.arange(2048, dtype="<i4").tobytes()
        seg = make_segment(data)
        sid = seg.id
        arr = np.frombuffer(reader.read_sysv(sid, 0, 0), dtype="<i4")[10:]  # a view of a view
        seg.remove()
        seg.detach()
        assert reader.sweep() == 1  # retired, but leased
        reader.close()
        info = reader.cache_info()
        assert (info.segments, info.retired_attached, info.leases) == (0, 1, 1)
        assert int(arr.sum()) == sum(range(10, 2048))  # memory still mapped
        del arr
        info = reader.cache_info()
        assert (info.retired_attached, info.leases) == (0, 0)
        assert _gone(sid)

    def test_sweep_frees_removed_segments_without_further_reads_of_them(
        self, reader: SharedMemoryReader, make_segment: MakeSegment, clock: FakeClock
    ) -> None:
        a = make_segment(_payload(4096, 1))
        b = make_segment(_payload(4096, 2))
        reader.read_sysv(a.id, 0, 0)
        reader.read_sysv(b.id, 0, 0)
        a.remove()
        a.detach()
        reader.read_sysv(b.id, 0, 0)  # before the sweep interval: a is still held
        assert not _gone(a.id)
        clock.now += 10.0
        reader.read_sysv(b.id, 0, 0)  # a read of another segment runs the due sweep
        assert _gone(a.id)
        assert reader.cache_info().segments == 1

    def test_lru_eviction_detaches_least_recently_used(
        self, clock: FakeClock, make_segment: MakeSegment
    ) -> None:
        segs = [make_segment(_payload(4096, i)) for i in range(3)]
        with SharedMemoryReader(ShmReaderConfig(max_segments=2), clock=clock) as reader:
            reader.read_sysv(segs[0].id, 0, 0)
            reader.read_sysv(segs[1].id, 0, 0)
            reader.read_sysv(segs[0].id, 0, 0)  # 1 is now least recently used
            held = reader.read_sysv(segs[2].id, 0, 0)
            assert [s.number_attached for s in segs] == [2, 1, 2]
            assert reader.cache_info().segments == 2
        assert [s.number_attached for s in segs] == [1, 1, 2]  # closed; the leased one stays mapped
        assert bytes(held) == _payload(4096, 2)
        del held
        assert segs[2].number_attached == 1

    def test_byte_bound_eviction(self, clock: FakeClock, make_segment: MakeSegment) -> None:
        segs = [make_segment(_payload(8192, i)) for i in range(3)]
        with SharedMemoryReader(ShmReaderConfig(max_cached_bytes=16384), clock=clock) as reader:
            for seg in segs:
                reader.read_sysv(seg.id, 0, 0)
            info = reader.cache_info()
            assert (info.segments, info.cached_bytes) == (2, 16384)
            assert segs[0].number_attached == 1

    def test_closed_reader_refuses_reads(self, make_segment: MakeSegment) -> None:
        seg = make_segment(b"abc" * 100)
        reader = SharedMemoryReader()
        reader.read_sysv(seg.id, 0, 0)
        reader.close()
        reader.close()
        assert seg.number_attached == 1
        with pytest.raises(Unavailable, match="reader is closed"):
            reader.read_sysv(seg.id, 0, 0)
        with pytest.raises(Unavailable, match="reader is closed"):
            reader.read_posix("/whatever", 0, 0)

    def test_bad_config(self) -> None:
        with pytest.raises(InvalidArgument, match="max_segments must be >= 1"):
            ShmReaderConfig(max_segments=0)

    def test_concurrent_reads_with_eviction_churn(self, clock: FakeClock, make_segment: MakeSegment) -> None:
        payloads = [np.full(16384, i, dtype="<f4") for i in range(5)]
        segs = [make_segment(p.tobytes()) for p in payloads]
        errors: list[BaseException] = []
        start = threading.Barrier(6)
        reader = SharedMemoryReader(ShmReaderConfig(max_segments=2, sweep_interval=0.0), clock=clock)

        def work(worker: int) -> None:
            try:
                start.wait(timeout=30)
                for i in range(150):
                    k = (worker + i) % len(segs)
                    arr = np.frombuffer(reader.read_sysv(segs[k].id, 0, 0), dtype="<f4")
                    if not (arr[0] == k and arr[-1] == k and arr.size == 16384):
                        raise AssertionError(f"worker {worker} read wrong data from segment {k}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors
        info = reader.cache_info()
        assert info.leases == 0
        assert info.retired_attached == 0
        assert info.hits + info.misses == 6 * 150
        reader.close()
        assert [s.number_attached for s in segs] == [1] * 5

    def test_id_reused_after_removal_reads_the_new_segment(self) -> None:
        """Force the kernel to reuse an id (kernel.shm_next_id) inside a private IPC namespace."""
        if shutil.which("unshare") is None:
            pytest.skip("needs unshare(1) to get a private IPC namespace")
        script = textwrap.dedent(
            """
            import sysv_ipc
            from edgefleet.agent.shm import SharedMemoryReader
            from edgefleet.core.errors import InvalidArgument

            reader = SharedMemoryReader()
            old = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
            old.write(b"old" * 10)
            sid = old.id
            assert bytes(reader.read_sysv(sid, 0, 3)) == b"old"
            old.remove()
            old.detach()
            try:
                reader.read_sysv(sid, 0, 3)
                raise SystemExit("a removed segment was read")
            except InvalidArgument:
                pass
            with open("/proc/sys/kernel/shm_next_id", "w") as f:
                f.write(str(sid))
            new = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=8192)
            assert new.id == sid, (new.id, sid)
            new.write(b"new" * 10)
            assert bytes(reader.read_sysv(sid, 0, 3)) == b"new"
            assert len(reader.read_sysv(sid, 0, 0)) == 8192
            reader.close()
            new.remove()
            new.detach()
            print("ok")
            """
        )
        probe = subprocess.run(["unshare", "--ipc", "true"], capture_output=True, text=True, check=False)
        if probe.returncode != 0:
            pytest.skip(f"cannot create an IPC namespace here: {probe.stderr.strip()}")
        result = subprocess.run(
            ["unshare", "--ipc", sys.executable, "-c", script],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if "shm_next_id" in result.stderr and (
            "Permission denied" in result.stderr or "Read-only" in result.stderr
        ):
            pytest.skip("kernel.shm_next_id is not writable here")
        assert result.returncode == 0, result.stderr
        assert result.stdout.strip() == "ok"


# -- POSIX -------------------------------------------------------------------------------------------
MakePosix = Callable[..., str]


@pytest.fixture
def make_posix() -> Iterator[MakePosix]:
    names: list[str] = []

    def make(data: bytes, name: str | None = None) -> str:
        name = name or f"/edgefleet-test-{uuid.uuid4().hex[:12]}"
        mem = posix_ipc.SharedMemory(name, posix_ipc.O_CREX, mode=0o600, size=len(data))
        names.append(name)
        with mmap.mmap(mem.fd, len(data)) as m:
            m.write(data)
        mem.close_fd()
        return name

    yield make
    for name in names:
        try:
            posix_ipc.unlink_shared_memory(name)
        except posix_ipc.ExistentialError:
            pass


class TestPosix:
    def test_reads_offset_size_and_rest(self, reader: SharedMemoryReader, make_posix: MakePosix) -> None:
        data = _payload(10_000)
        name = make_posix(data)
        assert bytes(reader.read_posix(name, 0, 0)) == data
        assert bytes(reader.read_posix(name, 100, 50)) == data[100:150]
        assert bytes(reader.read_posix(name, 9_000, 0)) == data[9_000:]
        assert bytes(reader.read_posix(name.lstrip("/"), 0, 10)) == data[:10]  # leading slash optional

    def test_result_is_read_only(self, reader: SharedMemoryReader, make_posix: MakePosix) -> None:
        name = make_posix(np.arange(10, dtype="<f8").tobytes())
        view = reader.read_posix(name, 0, 0)
        assert view.readonly
        arr = np.frombuffer(view, dtype="<f8")
        assert arr.tolist() == list(range(10))
        with pytest.raises(ValueError, match="read-only"):
            arr[0] = 1

    def test_unlinked_and_recreated_name_reads_the_new_object(
        self, reader: SharedMemoryReader, make_posix: MakePosix
    ) -> None:
        name = make_posix(b"old" * 100)
        assert bytes(reader.read_posix(name, 0, 3)) == b"old"
        posix_ipc.unlink_shared_memory(name)
        with pytest.raises(InvalidArgument, match=rf"POSIX shared memory object '{name}' does not exist"):
            reader.read_posix(name, 0, 3)
        make_posix(b"new" * 200, name)
        assert bytes(reader.read_posix(name, 0, 3)) == b"new"
        assert len(reader.read_posix(name, 0, 0)) == 600

    @pytest.mark.parametrize(
        ("offset", "size", "match"),
        [
            (4096, 0, r"offset 4096 is out of range \(the object has 4096 bytes\)"),
            (0, 4097, r"offset 0 \+ size 4097 = 4097 exceeds the object's 4096 bytes"),
            (1, U64, r"exceeds the object's 4096 bytes"),
            (U64, U64, r"out of range"),
            (2**64, 0, r"offset 18446744073709551616 is not a uint64"),
            (0, -1, r"size -1 is not a uint64"),
        ],
    )
    def test_ranges_outside_the_object(
        self, reader: SharedMemoryReader, make_posix: MakePosix, offset: int, size: int, match: str
    ) -> None:
        name = make_posix(_payload(4096))
        with pytest.raises(InvalidArgument, match=match):
            reader.read_posix(name, offset, size)

    @pytest.mark.parametrize(
        ("name", "match"),
        [
            ("/edgefleet-test-does-not-exist-1", r"'/edgefleet-test-does-not-exist-1' does not exist"),
            ("", r"name '' is invalid"),
            ("/", r"name '/' is invalid"),
            ("/a/b", r"name '/a/b' is invalid"),
            ("/..", r"name '/..' is invalid"),
            ("/x" * 200, r"is invalid"),
            ("/nul\x00byte", r"is invalid"),
        ],
    )
    def test_bad_names(self, reader: SharedMemoryReader, name: str, match: str) -> None:
        with pytest.raises(InvalidArgument, match=match):
            reader.read_posix(name, 0, 0)

    def test_concurrent_reads(self, reader: SharedMemoryReader, make_posix: MakePosix) -> None:
        names = [make_posix(np.full(4096, i, dtype="<i4").tobytes()) for i in range(3)]
        errors: list[BaseException] = []

        def work(worker: int) -> None:
            try:
                for i in range(100):
                    k = (worker + i) % 3
                    arr = np.frombuffer(reader.read_posix(names[k], 0, 0), dtype="<i4")
                    if not (arr.size == 4096 and arr[0] == k and arr[-1] == k):
                        raise AssertionError(f"wrong data from {names[k]}")
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(w,)) for w in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert not errors


# -- client side: owned segments -----------------------------------------------------------------------
class TestClientSegments:
    def test_size_classes(self) -> None:
        assert size_class(0) == MIN_SEGMENT_BYTES
        assert size_class(MIN_SEGMENT_BYTES + 1) == 2 * MIN_SEGMENT_BYTES
        assert size_class(602_112) == 1 << 20
        assert size_class(1 << 20) == 1 << 20
        with pytest.raises(InvalidArgument, match="negative size -1"):
            size_class(-1)

    def test_owned_segment_is_read_only_for_others_and_freed_on_close(
        self, reader: SharedMemoryReader
    ) -> None:
        seg = OwnedSegment(size_class(1000), 0o444)
        x = np.arange(250, dtype=">f4")  # big-endian input: written little-endian
        assert seg.write(x, DataType.FLOAT32) == 1000
        probe = sysv_ipc.attach(seg.id, None, sysv_ipc.SHM_RDONLY)
        try:
            assert probe.mode & 0o777 == 0o444
            assert probe.mode & 0o1000  # marked removed: the kernel frees it when everyone detaches
        finally:
            probe.detach()
        got = np.frombuffer(reader.read_sysv(seg.id, 0, 1000), dtype="<f4")
        np.testing.assert_array_equal(got, x)
        del got
        seg.close()
        seg.close()
        reader.sweep()
        assert _gone(seg.id)

    def test_write_handles_non_contiguous_arrays_and_checks_capacity(
        self, reader: SharedMemoryReader
    ) -> None:
        seg = OwnedSegment(MIN_SEGMENT_BYTES, 0o444)
        try:
            x = np.arange(64, dtype="<i8").reshape(8, 8)[:, ::2]
            n = seg.write(x, DataType.INT64)
            assert n == 32 * 8
            got = np.frombuffer(reader.read_sysv(seg.id, 0, n), dtype="<i8")
            np.testing.assert_array_equal(got, x.ravel())
            with pytest.raises(InvalidArgument, match=r"do not fit segment \d+ of 65536 bytes"):
                seg.write(np.zeros(MIN_SEGMENT_BYTES + 1, dtype=np.uint8), DataType.UINT8)
        finally:
            seg.close()

    def test_pool_reuses_segments_and_never_shares_one_between_holders(self) -> None:
        pool = SegmentPool(max_idle_per_class=2)
        try:
            a = pool.checkout(300_000)
            b = pool.checkout(300_000)
            assert a.id != b.id
            assert a.capacity == b.capacity == 1 << 19
            pool.checkin(a)
            c = pool.checkout(400_000)  # same size class: a is reused
            assert c is a
            with pool.lease(10) as small:
                assert small.capacity == MIN_SEGMENT_BYTES
            pool.checkin(b, reuse=False)  # the agent may still read it: closed, not reused
            assert _gone(b.id)
            pool.checkin(c)
            assert pool.idle_segments() == 2
        finally:
            pool.close()
        assert pool.idle_segments() == 0
        assert _gone(a.id)

    def test_lease_discards_the_segment_when_the_block_fails(self) -> None:
        pool = SegmentPool()
        try:
            with pytest.raises(RuntimeError, match="boom"), pool.lease(100) as seg:
                raise RuntimeError("boom")
            assert _gone(seg.id)
            assert pool.idle_segments() == 0
        finally:
            pool.close()

    def test_bad_mode(self) -> None:
        with pytest.raises(InvalidArgument, match="is not a permission mask"):
            SegmentPool(mode=0o1777)

    def test_closed_pool_refuses_checkout(self) -> None:
        pool = SegmentPool()
        pool.close()
        with pytest.raises(FailedPrecondition, match="pool is closed"):
            pool.checkout(10)
