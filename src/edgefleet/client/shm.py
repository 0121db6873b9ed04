"""System V shared memory segments a client owns, to hand large tensors to the agent without copying them
through gRPC.

The vendor way, which the agent reads: create a segment (``shmget``), write the tensor, make the
segment read-only, send its id. Here each segment is created once per *size class* (powers of two)
and reused; a pool hands one segment to each in-flight call (:meth:`SegmentPool.lease`), so threads
sharing a client never overwrite each other's tensors.

Segments are attached read-write by this process, then set to ``mode`` (read-only by default, for
the agent) and immediately **marked removed** (``IPC_RMID``). On Linux a marked segment keeps its id
and stays attachable while anyone is attached, and the kernel frees it when the last process detaches,
so a client that crashes leaks nothing. (The agent's reader treats a marked segment as alive while
another process is attached to it.)
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator

import numpy as np
import sysv_ipc

from edgefleet.core.errors import FailedPrecondition, InvalidArgument, ResourceExhausted
from edgefleet.core.tensors import DataType

log = logging.getLogger(__name__)

#: Smallest segment created (segments are page-granular anyway).
MIN_SEGMENT_BYTES = 64 * 1024


def size_class(nbytes: int) -> int:
    """The segment size used for a tensor of ``nbytes``: the next power of two, at least 64 KiB."""
    if nbytes < 0:
        raise InvalidArgument(f"negative size {nbytes}")
    return max(MIN_SEGMENT_BYTES, 1 << max(0, nbytes - 1).bit_length())


class OwnedSegment:
    """A System V segment this process created: writable here, ``mode`` for others, marked removed."""

    def __init__(self, capacity: int, mode: int) -> None:
        try:
            shm = sysv_ipc.SharedMemory(sysv_ipc.IPC_PRIVATE, sysv_ipc.IPC_CREX, mode=0o600, size=capacity)
        except sysv_ipc.Error as exc:
            raise ResourceExhausted(
                f"cannot create a {capacity}-byte System V shared memory segment: {exc}"
            ) from exc
        try:
            shm.mode = mode
            shm.remove()  # freed by the kernel once every process has detached
            self._buffer: np.ndarray | None = np.frombuffer(memoryview(shm), dtype=np.uint8)
        except (sysv_ipc.Error, ValueError) as exc:
            with contextlib.suppress(sysv_ipc.Error):
                shm.remove()
            with contextlib.suppress(sysv_ipc.Error):
                shm.detach()
            raise ResourceExhausted(f"cannot prepare shared memory segment {shm.id}: {exc}") from exc
        self._shm = shm
        self.id: int = shm.id
        self.capacity = capacity

    def write(self, array: np.ndarray, dtype: DataType) -> int:
        """Copy ``array`` to offset 0 as little-endian C-order ``dtype``; returns the byte count."""
        if self._buffer is None:
            raise FailedPrecondition(f"shared memory segment {self.id} is closed")
        nbytes = int(array.size) * dtype.itemsize
        if nbytes > self.capacity:
            raise InvalidArgument(f"{nbytes} bytes do not fit segment {self.id} of {self.capacity} bytes")
        dst = self._buffer[:nbytes].view(dtype.numpy).reshape(array.shape)
        np.copyto(dst, array, casting="equiv")
        return nbytes

    def close(self) -> None:
        """Detach; the kernel frees the segment when the agent has detached too."""
        if self._buffer is None:
            return
        self._buffer = None
        try:
            self._shm.detach()
        except sysv_ipc.Error as exc:
            log.warning("detaching shared memory segment %d failed: %s", self.id, exc)


class SegmentPool:
    """Reusable :class:`OwnedSegment` objects by size class; each is leased to one call at a time.

    ``mode``: the permission bits the agent sees (default read-only for everyone; use 0o440 to
    restrict the tensors to the agent's group). ``max_idle_per_class``: idle segments kept per size
    class; more are closed when returned.
    """

    def __init__(self, *, mode: int = 0o444, max_idle_per_class: int = 4) -> None:
        if not 0 <= mode <= 0o777:
            raise InvalidArgument(f"shared memory mode {oct(mode)} is not a permission mask (0..0o777)")
        self._mode = mode
        self._max_idle = max_idle_per_class
        self._lock = threading.Lock()
        self._idle: dict[int, list[OwnedSegment]] = {}
        self._closed = False

    def checkout(self, nbytes: int) -> OwnedSegment:
        """An idle segment of ``nbytes``' size class, or a new one. Return it with :meth:`checkin`."""
        capacity = size_class(nbytes)
        with self._lock:
            if self._closed:
                raise FailedPrecondition("the shared memory pool is closed")
            idle = self._idle.get(capacity)
            if idle:
                return idle.pop()
        return OwnedSegment(capacity, self._mode)

    def checkin(self, segment: OwnedSegment, *, reuse: bool = True) -> None:
        """Give ``segment`` back; with ``reuse=False`` (the agent may still be reading it) close it."""
        with self._lock:
            idle = self._idle.setdefault(segment.capacity, [])
            if reuse and not self._closed and len(idle) < self._max_idle:
                idle.append(segment)
                return
        segment.close()

    @contextlib.contextmanager
    def lease(self, nbytes: int) -> Iterator[OwnedSegment]:
        """A segment for one call; it is reused afterwards unless the block raised."""
        segment = self.checkout(nbytes)
        ok = False
        try:
            yield segment
            ok = True
        finally:
            self.checkin(segment, reuse=ok)

    def idle_segments(self) -> int:
        """How many idle segments the pool holds."""
        with self._lock:
            return sum(len(v) for v in self._idle.values())

    def close(self) -> None:
        """Close every idle segment; segments still leased are closed when returned."""
        with self._lock:
            self._closed = True
            idle = [s for segments in self._idle.values() for s in segments]
            self._idle.clear()
        for segment in idle:
            segment.close()
