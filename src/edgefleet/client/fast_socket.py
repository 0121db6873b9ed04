"""Predict over the agent's fast socket (``<socket>.fast``, extension ``fast-predict``): the
PredictRequest and PredictResponse of gRPC in the length-prefixed frames of
:mod:`edgefleet.protocol.agent.framing`, one connection per calling thread."""

from __future__ import annotations

import logging
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from edgefleet.core.errors import Code, code_from_grpc_number, error_for
from edgefleet.protocol.agent.framing import (
    FAST_PATH_MAX_FRAME_BYTES,
    FRAME_LENGTH,
    MAGIC,
    FrameReader,
    recv_exact,
)
from edgefleet.protocol.agent.proto import agent_pb2

log = logging.getLogger(__name__)


class FastSocketTransport:
    """Predict on the fast socket at ``path``; ``timeout``: seconds each call may take (None: none).

    :meth:`predict` answers None when the caller should use its other transport: there is no fast
    socket (asked again after a few seconds), the request is longer than the agent's default frame
    limit, or a new connection failed before an answer (Predict has no side effects to repeat).
    """

    def __init__(self, path: Path, *, timeout: float | None = None) -> None:
        self.path = path
        self._timeout = timeout
        self._local = threading.local()
        self._conns: set[socket.socket] = set()
        self._retry_at = 0.0
        self._lock = threading.Lock()
        self._closed = False
        #: Predict calls answered over the fast socket
        self.calls = 0

    def predict(self, request: agent_pb2.PredictRequest) -> Any:
        """The PredictResponse, or None (see the class); a refusal raises the EdgefleetError of its
        code. A connection kept from earlier calls that fails (the agent closes idle ones) is
        replaced by a new one first."""
        for _ in range(2):
            if request.ByteSize() > FAST_PATH_MAX_FRAME_BYTES:
                return None
            frames = self._connection()
            if frames is None:
                return None
            fresh = not getattr(self._local, "answered", False)
            try:
                response = self._exchange(frames, request)
                with self._lock:
                    self.calls += 1
                return response
            except TimeoutError:
                self._drop(frames.sock)
                raise error_for(
                    Code.DEADLINE_EXCEEDED, f"Predict on {request.name!r} took longer than {self._timeout} s"
                ) from None
            except OSError as exc:  # ConnectionError included
                self._drop(frames.sock)
                if fresh:
                    log.info("fast path to %s failed (%s); using gRPC", self.path, exc)
                    return None
                log.debug("kept fast-path connection to %s failed (%s); opening a new one", self.path, exc)
        return None

    def _connection(self) -> FrameReader | None:
        """This thread's connection (opened on first use), or None when there is none."""
        frames: FrameReader | None = getattr(self._local, "frames", None)
        if frames is not None or time.monotonic() < self._retry_at:
            return frames
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(self._timeout if self._timeout is not None else 10.0)
            conn.connect(str(self.path))
            conn.sendall(MAGIC)
            hello = recv_exact(conn, len(MAGIC))
            if hello is None or bytes(hello) != MAGIC:
                raise ConnectionError("the peer did not answer the fast-path greeting")
            conn.settimeout(self._timeout)
        except OSError:  # ConnectionError included
            conn.close()
            self._retry_at = (
                time.monotonic() + 5.0
            )  # no fast socket there (yet): the other transport meanwhile
            return None
        frames = FrameReader(conn)
        with self._lock:
            if self._closed:
                conn.close()
                return None
            self._conns.add(conn)
        # The connection belongs to this thread: when the thread is gone, so is the connection (a
        # client shared by short-lived threads must not pile up connections at the agent).
        weakref.finalize(threading.current_thread(), _close_connection, conn, self._conns)
        self._local.frames = frames
        return frames

    @property
    def connections(self) -> int:
        """Open connections (one per thread that has called predict and still runs)."""
        return len(self._conns)

    def _drop(self, conn: socket.socket) -> None:
        self._local.frames = None
        self._local.answered = False
        with self._lock:
            self._conns.discard(conn)
        conn.close()

    def _exchange(self, frames: FrameReader, request: agent_pb2.PredictRequest) -> Any:
        body = request.SerializeToString()
        frames.sock.sendall(FRAME_LENGTH.pack(len(body)) + body)
        length = frames.next_length()
        if length is None:
            raise ConnectionError("the agent closed the fast-path connection")
        if not length:
            raise ConnectionError("the agent sent an empty fast-path reply")
        reply = frames.body(length)
        self._local.answered = True  # this connection has worked: if it fails later, try a new one
        status, payload = reply[0], memoryview(reply)[1:]
        if status == 0:
            return agent_pb2.PredictResponse.FromString(payload)
        raise error_for(code_from_grpc_number(status), bytes(payload).decode("utf-8", "replace"))

    def close(self) -> None:
        """Close every connection (idempotent)."""
        with self._lock:
            self._closed = True
            connections = list(self._conns)
            self._conns.clear()
        for conn in connections:
            conn.close()

    def __del__(self) -> None:
        # A transport dropped without close(): its sockets go with it, without a ResourceWarning.
        for conn in list(getattr(self, "_conns", ())):
            conn.close()


def _close_connection(conn: socket.socket, connections: set[socket.socket]) -> None:
    connections.discard(conn)
    conn.close()
