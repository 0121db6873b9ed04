"""Reading tensors that clients hand over through shared memory (agent side).

Two kinds of handle arrive on the wire:

* **System V segments** (the Edge Manager contract): the client ``shmget``s a segment, writes the
  tensor, usually makes the segment read-only, and sends its ``segment_id`` with an ``offset``
  (usually 0) and a ``size`` (0 = the rest of the segment). :meth:`SharedMemoryReader.read_sysv`
  attaches the segment read-only (``SHM_RDONLY``), checks the range against the segment's size and
  returns a **zero-copy**, read-only ``memoryview`` of the bytes. Attachments are cached, because
  attaching costs a system call plus page faults on every first touch, and the Predict hot path
  (ResNet-18 at 224x224 float32, 600 KiB per call) must stay within a few percent of in-process
  inference.
* **POSIX named shared memory** (our ``posix-shm`` extension): :meth:`SharedMemoryReader.read_posix`
  copies the range out with ``pread`` from a freshly opened read-only descriptor. See that method for
  why POSIX objects are copied rather than mapped.

Every bad handle (unknown or removed id, unreadable segment, range outside the segment, values that
do not fit the wire's ``uint64``) raises :class:`InvalidArgument` with a message saying what was
wrong; nothing a client sends can crash the agent.

Safety of the System V attachment cache
---------------------------------------
The hazards are (1) unmapping memory that a numpy array still points at (a use-after-unmap crash),
(2) serving bytes of a segment the client has removed, or of a *different* segment that reuses the
id, and (3) keeping removed segments alive forever by staying attached to them.

1. **Leases.** Each returned ``memoryview`` is exported by a small per-read numpy array (the *lease*)
   that is a view of the cached attachment. Everything built from the ``memoryview`` (slices,
   ``np.frombuffer`` arrays and their views) keeps the lease alive through CPython's buffer
   protocol references, and a ``weakref.finalize`` on the lease decrements the attachment's lease
   count when the last of them is gone. An attachment is detached only when it has been retired
   (evicted, found removed, closed) **and** its lease count is zero, so memory is never unmapped
   under a live view. (``sysv_ipc`` itself would happily detach under a live view, and does not
   detach on garbage collection: detaching is always explicit here.)
2. **Identity.** While we are attached to a segment the kernel cannot reuse its id: ``IPC_RMID`` on
   an attached segment only marks it ``SHM_DEST`` and the id stays allocated until the last detach.
   So a cached attachment always is the segment its id names; what can change is its state. Every
   read re-checks it with ``IPC_STAT`` (about 1 microsecond per field): a segment marked removed
   and attached by nobody but us is treated as gone (INVALID_ARGUMENT, and the attachment is
   retired), exactly as if we had never cached it (the kernel would then refuse the attach). A
   changed ``ctime`` (permissions changed with ``IPC_SET``) makes us re-attach, so the kernel
   re-checks the permissions. A removed segment that *another* process still has attached stays
   readable, as Linux allows attaching such segments (clients may mark their segments removed at
   creation so the kernel frees them if the client crashes; :mod:`edgefleet.client` does).
3. **Bounded and swept.** The cache holds at most ``max_segments`` attachments and
   ``max_cached_bytes`` of mapped segments, detaching the least recently used beyond that. Every
   ``sweep_interval`` seconds (checked on each read, and by :meth:`SharedMemoryReader.sweep`, which
   the agent may call from a housekeeping timer) attachments whose segments were removed by their
   owners are retired, so we do not keep freed memory alive.

The reader is thread-safe: one lock guards the cache. It is an ``RLock`` because a lease finaliser
may run on whatever thread drops the last reference, including one inside the lock (cyclic garbage
collection); the finaliser only touches the attachment's counters, never the cache's order.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import posix_ipc
import sysv_ipc

from edgefleet.core.errors import InvalidArgument, Unavailable, quoted

log = logging.getLogger(__name__)

_UINT64_MAX = (1 << 64) - 1
_SHMID_MAX = (1 << 31) - 1  # shmid is a C int
_SHM_DEST = 0o1000  # shm_perm.mode bit: segment marked for removal (Linux)
_NAME_MAX = 255


@dataclass(frozen=True)
class ShmReaderConfig:
    """Limits of the System V attachment cache."""

    #: most segments kept attached between reads (least recently used are detached beyond this)
    max_segments: int = 64
    #: most bytes of segments kept attached between reads (address space, not resident memory)
    max_cached_bytes: int = 1 << 30
    #: seconds between checks that cached segments have not been removed by their owners
    sweep_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.max_segments < 1:
            raise InvalidArgument(f"max_segments must be >= 1, got {self.max_segments}")
        if self.max_cached_bytes < 0:
            raise InvalidArgument(f"max_cached_bytes must be >= 0, got {self.max_cached_bytes}")
        if self.sweep_interval < 0:
            raise InvalidArgument(f"sweep_interval must be >= 0, got {self.sweep_interval}")


@dataclass(frozen=True)
class ShmCacheInfo:
    """A snapshot of the System V attachment cache (for metrics and tests)."""

    #: segments in the cache
    segments: int
    #: bytes of the cached segments
    cached_bytes: int
    #: attachments retired from the cache but still held by live leases
    retired_attached: int
    #: live leases (views handed out and not yet released)
    leases: int
    #: reads served from a cached attachment
    hits: int
    #: reads that had to attach
    misses: int


class _Attachment:
    """One read-only attachment of a System V segment, with its lease count."""

    __slots__ = ("base", "ctime", "leases", "retired", "segment_id", "shm", "size")

    def __init__(self, segment_id: int, shm: sysv_ipc.SharedMemory, base: np.ndarray, ctime: int) -> None:
        self.segment_id = segment_id
        self.shm = shm
        self.base: np.ndarray | None = base
        self.size = int(base.nbytes)
        self.ctime = ctime
        self.leases = 0
        self.retired = False


def _check_u64(what: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidArgument(f"{what} must be an integer, got {type(value).__name__}")
    if not 0 <= value <= _UINT64_MAX:
        raise InvalidArgument(f"{what} {value} is not a uint64 (0..{_UINT64_MAX})")
    return value


def _resolve_range(what: str, offset: int, size: int, total: int) -> tuple[int, int]:
    """``(start, stop)`` of the bytes ``offset``/``size`` name in an object of ``total`` bytes."""
    if offset >= total:
        raise InvalidArgument(f"{what}: offset {offset} is out of range (the object has {total} bytes)")
    if size == 0:
        return offset, total
    if size > total - offset:
        raise InvalidArgument(
            f"{what}: range offset {offset} + size {size} = {offset + size} "
            f"exceeds the object's {total} bytes"
        )
    return offset, offset + size


class SharedMemoryReader:
    """Reads tensor bytes from System V segments (cached, zero-copy) and POSIX shm objects.

    See the module docstring for the cache's safety reasoning. ``clock`` (monotonic seconds) is
    injectable so tests can drive the sweep.
    """

    def __init__(
        self, config: ShmReaderConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._config = config or ShmReaderConfig()
        self._clock = clock
        self._lock = threading.RLock()
        self._cache: OrderedDict[int, _Attachment] = OrderedDict()
        self._cached_bytes = 0
        # Our attachments per segment id, cached or retired-but-leased: a removed segment is
        # "gone" when nobody else is attached, i.e. shm_nattch <= this count.
        self._ours: dict[int, int] = {}
        self._retired: set[_Attachment] = set()  # retired from the cache, detached when unleased
        self._leases = 0
        self._hits = 0
        self._misses = 0
        self._last_sweep = clock()
        self._closed = False

    # -- System V -------------------------------------------------------------------------------
    def read_sysv(self, segment_id: int, offset: int, size: int) -> memoryview:
        """A read-only, zero-copy view of ``size`` bytes at ``offset`` in System V segment ``segment_id``.

        ``size`` 0 means "the rest of the segment". The view (and anything built from it, such as
        ``np.frombuffer``) holds a lease that keeps the segment attached; drop it when done.
        INVALID_ARGUMENT for a bad or removed id, an unreadable segment, or a range outside it.
        """
        _check_u64("segment_id", segment_id)
        _check_u64("offset", offset)
        _check_u64("size", size)
        if segment_id > _SHMID_MAX:
            raise InvalidArgument(
                f"shared memory segment_id {segment_id} is not a System V segment id (0..{_SHMID_MAX})"
            )
        with self._lock:
            if self._closed:
                raise Unavailable("the shared memory reader is closed (the agent is shutting down)")
            now = self._clock()
            if now - self._last_sweep >= self._config.sweep_interval:
                self._sweep_locked(now)
            entry = self._cache.get(segment_id)
            if entry is not None:
                problem = self._problem(entry)
                if problem is None:
                    self._hits += 1
                    self._cache.move_to_end(segment_id)
                else:
                    self._retire(entry)
                    entry = None
                    if problem == "removed":
                        raise InvalidArgument(f"shared memory segment {segment_id} has been removed")
            if entry is None:
                entry = self._attach(segment_id)
                self._misses += 1
                self._cache[segment_id] = entry
                self._cached_bytes += entry.size
                self._evict()
            start, stop = _resolve_range(f"shared memory segment {segment_id}", offset, size, entry.size)
            return self._lease(entry, start, stop)

    def _attach(self, segment_id: int) -> _Attachment:
        what = f"shared memory segment {segment_id}"
        try:
            shm = sysv_ipc.attach(segment_id, None, sysv_ipc.SHM_RDONLY)
        except (sysv_ipc.ExistentialError, ValueError) as exc:
            # shmat's EINVAL (sysv_ipc: ValueError) with our valid address and flags means a bad id
            raise InvalidArgument(f"{what} does not exist (unknown id, or removed)") from exc
        except sysv_ipc.PermissionsError as exc:
            raise InvalidArgument(f"{what} is not readable by the agent (permission denied)") from exc
        except (sysv_ipc.Error, OverflowError, OSError) as exc:
            raise InvalidArgument(f"{what} cannot be attached: {exc}") from exc
        self._ours[segment_id] = self._ours.get(segment_id, 0) + 1
        try:
            mode, nattch, ctime = shm.mode, shm.number_attached, shm.last_change_time
            if mode & _SHM_DEST and nattch <= self._ours[segment_id]:
                raise InvalidArgument(f"{what} has been removed")
            base = np.frombuffer(memoryview(shm).toreadonly(), dtype=np.uint8)
            if base.nbytes == 0:
                raise InvalidArgument(f"{what} is empty")
        except sysv_ipc.ExistentialError as exc:
            self._detach_raw(segment_id, shm)
            raise InvalidArgument(f"{what} does not exist (unknown id, or removed)") from exc
        except sysv_ipc.PermissionsError as exc:  # IPC_STAT needs read permission too
            self._detach_raw(segment_id, shm)
            raise InvalidArgument(f"{what} is not readable by the agent (permission denied)") from exc
        except sysv_ipc.Error as exc:
            self._detach_raw(segment_id, shm)
            raise InvalidArgument(f"{what} cannot be inspected: {exc}") from exc
        except BaseException:
            self._detach_raw(segment_id, shm)
            raise
        return _Attachment(segment_id, shm, base, ctime)

    def _problem(self, entry: _Attachment) -> str | None:
        """Why a cached attachment may not serve reads any more ("removed", "changed"), or None."""
        try:
            mode, nattch, ctime = entry.shm.mode, entry.shm.number_attached, entry.shm.last_change_time
        except sysv_ipc.ExistentialError:
            return "removed"  # cannot happen while attached; treat as gone
        except sysv_ipc.Error:
            return "changed"  # e.g. permissions revoked: re-attaching lets the kernel decide
        if mode & _SHM_DEST and nattch <= self._ours.get(entry.segment_id, 0):
            return "removed"
        if ctime != entry.ctime:
            return "changed"
        return None

    def _lease(self, entry: _Attachment, start: int, stop: int) -> memoryview:
        assert entry.base is not None  # a cached entry is attached
        lease = entry.base[start:stop]
        entry.leases += 1
        self._leases += 1
        weakref.finalize(lease, self._release, entry)
        return lease.data  # a memoryview whose exporter is ``lease``

    def _release(self, entry: _Attachment) -> None:
        with self._lock:
            entry.leases -= 1
            self._leases -= 1
            if entry.retired and entry.leases == 0:
                self._detach(entry)

    def _retire(self, entry: _Attachment) -> None:
        """Take ``entry`` out of the cache; detach now, or when its last lease goes."""
        if self._cache.get(entry.segment_id) is entry:
            del self._cache[entry.segment_id]
            self._cached_bytes -= entry.size
        entry.retired = True
        if entry.leases == 0:
            self._detach(entry)
        else:
            self._retired.add(entry)

    def _detach(self, entry: _Attachment) -> None:
        if entry.base is None:
            return
        entry.base = None
        self._retired.discard(entry)
        self._detach_raw(entry.segment_id, entry.shm)

    def _detach_raw(self, segment_id: int, shm: sysv_ipc.SharedMemory) -> None:
        try:
            shm.detach()
        except sysv_ipc.Error as exc:  # already detached: nothing is mapped any more
            log.warning("detaching shared memory segment %d failed: %s", segment_id, exc)
        left = self._ours.get(segment_id, 0) - 1
        if left > 0:
            self._ours[segment_id] = left
        else:
            self._ours.pop(segment_id, None)

    def _evict(self) -> None:
        config = self._config
        while len(self._cache) > 1 and (
            len(self._cache) > config.max_segments or self._cached_bytes > config.max_cached_bytes
        ):
            _, oldest = next(iter(self._cache.items()))
            self._retire(oldest)

    def sweep(self) -> int:
        """Detach cached segments whose owners removed them; returns how many were retired."""
        with self._lock:
            return self._sweep_locked(self._clock())

    def _sweep_locked(self, now: float) -> int:
        self._last_sweep = now
        stale = [entry for entry in self._cache.values() if self._problem(entry) is not None]
        for entry in stale:
            self._retire(entry)
        return len(stale)

    def cache_info(self) -> ShmCacheInfo:
        """A snapshot of the attachment cache."""
        with self._lock:
            return ShmCacheInfo(
                segments=len(self._cache),
                cached_bytes=self._cached_bytes,
                retired_attached=len(self._retired),
                leases=self._leases,
                hits=self._hits,
                misses=self._misses,
            )

    # -- POSIX ----------------------------------------------------------------------------------
    def read_posix(self, name: str, offset: int, size: int) -> memoryview:
        """A read-only copy of ``size`` bytes at ``offset`` in POSIX shared memory object ``name``.

        ``name`` is as passed to ``shm_open`` (``/edgefleet-abc``; the leading slash may be left
        out); ``size`` 0 means "the rest of the object".

        POSIX objects are *copied* (one ``pread``, about 20 microseconds for 600 KiB) rather than
        mapped: their owner can shrink them with ``ftruncate`` at any moment, and touching a mapped
        page beyond the new end raises SIGBUS, which would kill the agent. ``pread`` is bounds-checked
        by the kernel instead. Opening the name afresh on every read (a few microseconds) is also
        what makes an unlinked-and-recreated name read the new object, so there is nothing to cache.
        """
        path = self._posix_name(name)
        _check_u64("offset", offset)
        _check_u64("size", size)
        what = f"POSIX shared memory object {quoted(path)}"
        if self._closed:
            raise Unavailable("the shared memory reader is closed (the agent is shutting down)")
        try:
            mem = posix_ipc.SharedMemory(path, 0, read_only=True)
        except posix_ipc.ExistentialError as exc:
            raise InvalidArgument(f"{what} does not exist") from exc
        except posix_ipc.PermissionsError as exc:
            raise InvalidArgument(f"{what} is not readable by the agent (permission denied)") from exc
        except (posix_ipc.Error, ValueError, OSError) as exc:
            raise InvalidArgument(f"{what} cannot be opened: {exc}") from exc
        try:
            fd = mem.fd
            total = os.fstat(fd).st_size
            start, stop = _resolve_range(what, offset, size, total)
            buf = np.empty(stop - start, dtype=np.uint8)
            view = buf.data
            got = 0
            while got < len(view):
                n = os.preadv(fd, [view[got:]], start + got)
                if n == 0:
                    raise InvalidArgument(f"{what} shrank to {start + got} bytes while being read")
                got += n
        except OSError as exc:
            raise InvalidArgument(f"{what} cannot be read: {exc}") from exc
        finally:
            mem.close_fd()
        buf.flags.writeable = False
        return buf.data

    @staticmethod
    def _posix_name(name: str) -> str:
        if not isinstance(name, str):
            raise InvalidArgument(f"POSIX shared memory name must be a string, got {type(name).__name__}")
        path = name if name.startswith("/") else "/" + name
        body = path[1:]
        if not body or len(path) > _NAME_MAX or "/" in body or "\x00" in body or body in (".", ".."):
            raise InvalidArgument(
                f"POSIX shared memory name {quoted(name)} is invalid "
                f"(want '/name', 1-{_NAME_MAX - 1} characters, no further '/')"
            )
        return path

    # -- lifecycle ------------------------------------------------------------------------------
    def close(self) -> None:
        """Detach every cached segment (leased ones when their last lease goes); reads then fail."""
        with self._lock:
            self._closed = True
            for entry in list(self._cache.values()):
                self._retire(entry)

    def __enter__(self) -> SharedMemoryReader:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
