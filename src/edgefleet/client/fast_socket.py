"""Predict and captures over the agent's fast socket (``<socket>.fast``, extensions ``fast-predict``
and ``fast-capture``): the request and response messages of gRPC in the length-prefixed frames of
:mod:`edgefleet.protocol.agent.framing`, one connection per calling thread. Connections greet with
``EFP2`` (a method byte in every request); an agent that predates it is greeted with ``EFP1`` and
serves Predict only."""

from __future__ import annotations

import logging
import select
import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from edgefleet.core.errors import Code, Unavailable, code_from_grpc_number, error_for, grpc_status_number
from edgefleet.protocol.agent.framing import (
    FAST_PATH_MAX_FRAME_BYTES,
    FRAME_LENGTH,
    MAGIC,
    MAGIC_METHODS,
    METHOD_CAPTURE_DATA,
    METHOD_CAPTURE_STATUS,
    METHOD_PREDICT,
    FrameReader,
    recv_exact,
)
from edgefleet.protocol.agent.proto import agent_pb2

log = logging.getLogger(__name__)

#: A kept connection unused for longer than this is checked for an end-of-stream (the agent closes
#: idle connections) before a call that must not be sent twice goes out on it.
_CHECK_AFTER_SECONDS = 1.0


class FastSocketTransport:
    """Calls on the fast socket at ``path``; ``timeout``: seconds each call may take (None: none).

    Each call answers None when the caller should use its other transport: there is no fast socket
    (asked again after a few seconds), the agent's fast path lacks the method (an agent from before
    ``EFP2`` serves Predict only), the request is longer than the agent's default frame limit, or a
    new connection failed before the request went out. Predict (no side effects) is also sent
    again on the other transport when a new connection fails before its answer; CaptureData is
    not: a connection lost after the request went out raises UNAVAILABLE, since the capture may
    or may not have been taken.
    """

    def __init__(self, path: Path, *, timeout: float | None = None) -> None:
        self.path = path
        self._timeout = timeout
        self._local = threading.local()
        self._conns: set[socket.socket] = set()
        self._retry_at = 0.0
        self._greeting = MAGIC_METHODS
        self._lock = threading.Lock()
        self._closed = False
        #: Predict calls answered over the fast socket
        self.calls = 0
        #: CaptureData and GetCaptureDataStatus calls answered over the fast socket
        self.capture_calls = 0

    def predict(self, request: agent_pb2.PredictRequest) -> Any:
        """The PredictResponse, or None (see the class); a refusal raises its code's EdgefleetError."""
        return self._call(METHOD_PREDICT, request, agent_pb2.PredictResponse, repeatable=True)

    def capture_data(self, request: agent_pb2.CaptureDataRequest) -> Any:
        """The CaptureDataResponse, or None (see the class)."""
        return self._call(METHOD_CAPTURE_DATA, request, agent_pb2.CaptureDataResponse, repeatable=False)

    def capture_status(self, request: agent_pb2.GetCaptureDataStatusRequest) -> Any:
        """The GetCaptureDataStatusResponse, or None (see the class)."""
        return self._call(
            METHOD_CAPTURE_STATUS, request, agent_pb2.GetCaptureDataStatusResponse, repeatable=True
        )

    def _call(self, method: int, request: Any, answer: Any, *, repeatable: bool) -> Any:
        """A kept connection that fails (the agent closes idle ones) is replaced by a new one first."""
        what = type(request).__name__.removesuffix("Request")
        for _ in range(2):
            if request.ByteSize() > FAST_PATH_MAX_FRAME_BYTES:
                return None
            frames = self._connection()
            if frames is None or (method != METHOD_PREDICT and not self._local.methods):
                return None
            fresh = not getattr(self._local, "answered", False)
            if not repeatable and not fresh and self._ended(frames):
                self._drop(frames.sock)
                continue
            sent = False
            try:
                body = request.SerializeToString()
                if self._local.methods:
                    frames.sock.sendall(FRAME_LENGTH.pack(len(body) + 1) + bytes((method,)) + body)
                else:
                    frames.sock.sendall(FRAME_LENGTH.pack(len(body)) + body)
                sent = True
                response = self._answer(frames, answer)
                with self._lock:
                    if method == METHOD_PREDICT:
                        self.calls += 1
                    else:
                        self.capture_calls += 1
                return response
            except TimeoutError:
                self._drop(frames.sock)
                raise error_for(
                    Code.DEADLINE_EXCEEDED, f"{what} took longer than {self._timeout} s"
                ) from None
            except OSError as exc:  # ConnectionError included
                self._drop(frames.sock)
                if sent and not repeatable:
                    raise Unavailable(
                        f"{what}: the agent's fast-path connection ended before its answer ({exc}); "
                        "the capture may or may not have been taken (GetCaptureDataStatus tells)"
                    ) from None
                if fresh:
                    log.info("fast path to %s failed (%s); using gRPC", self.path, exc)
                    return None
                log.debug("kept fast-path connection to %s failed (%s); opening a new one", self.path, exc)
        return None

    def _ended(self, frames: FrameReader) -> bool:
        """Whether a connection kept idle for a while has been closed by the agent."""
        if time.monotonic() - self._local.used_at < _CHECK_AFTER_SECONDS:
            return False
        try:
            readable, _, _ = select.select([frames.sock], [], [], 0)
            return bool(readable) and not frames.sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:
            return True

    def _connection(self) -> FrameReader | None:
        """This thread's connection (opened on first use), or None when there is none."""
        frames: FrameReader | None = getattr(self._local, "frames", None)
        if frames is not None or time.monotonic() < self._retry_at:
            return frames
        conn, unknown_greeting = self._open(self._greeting)
        if unknown_greeting and self._greeting == MAGIC_METHODS:
            conn, _ = self._open(MAGIC)  # an agent from before EFP2: Predict only
            if conn is not None:
                self._greeting = MAGIC
        if conn is None:
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
        self._local.methods = self._greeting == MAGIC_METHODS
        self._local.used_at = time.monotonic()
        return frames

    def _open(self, greeting: bytes) -> tuple[socket.socket | None, bool]:
        """A connection greeted with ``greeting``, or None; and whether the agent refused the
        greeting as one it does not know (INVALID_ARGUMENT instead of the greeting)."""
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.settimeout(self._timeout if self._timeout is not None else 10.0)
            conn.connect(str(self.path))
            conn.sendall(greeting)
            hello = recv_exact(conn, len(greeting))
            if hello is None:
                raise ConnectionError("the agent closed the connection instead of greeting")
            if bytes(hello) != greeting:
                status = recv_exact(conn, 1)  # an error frame instead: its length, then its status
                conn.close()
                return None, status is not None and status[0] == grpc_status_number(Code.INVALID_ARGUMENT)
            conn.settimeout(self._timeout)
        except OSError:  # ConnectionError included
            conn.close()
            return None, False
        return conn, False

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

    def _answer(self, frames: FrameReader, answer: Any) -> Any:
        length = frames.next_length()
        if length is None:
            raise ConnectionError("the agent closed the fast-path connection")
        if not length:
            raise ConnectionError("the agent sent an empty fast-path reply")
        reply = frames.body(length)
        self._local.answered = True  # this connection has worked: if it fails later, try a new one
        self._local.used_at = time.monotonic()
        status, payload = reply[0], memoryview(reply)[1:]
        if status == 0:
            return answer.FromString(payload)
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
