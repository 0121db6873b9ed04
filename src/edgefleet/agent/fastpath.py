"""The fast path: Predict over a plain Unix socket beside the gRPC one (extension ``fast-predict``).

gRPC hands every call through several threads on each side (poller, completion queue, worker),
and each hand-off costs a wake-up; on small machines that is most of a Predict's overhead. The
fast path carries the same ``PredictRequest``/``PredictResponse`` messages over a socket that one
agent thread per connection reads, runs and answers, so a call wakes one thread on each side. The
contract is in docs/agent-protocol.md ("Fast path"):

- The socket is the agent's socket path with ``.fast`` appended, with the same permission bits.
- The client opens with the 4 bytes ``EFP1``; the agent answers ``EFP1``.
- A request is a frame: a little-endian u32 length, then a serialized ``PredictRequest``.
- A reply is a frame: a little-endian u32 length, then one status byte (the gRPC status number,
  0 = OK), then a serialized ``PredictResponse`` (OK) or the UTF-8 error message.
- Calls on one connection are sequential; open several connections for concurrent calls.
"""

from __future__ import annotations

import logging
import os
import socket
import struct
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from edgefleet.agent.proto import agent_pb2
from edgefleet.core.errors import Code, EdgefleetError, InvalidArgument, grpc_status_number

log = logging.getLogger(__name__)

MAGIC = b"EFP1"
SUFFIX = ".fast"
#: The length prefix of every frame (little-endian u32).
FRAME_LENGTH = struct.Struct("<I")
#: Longest path a Unix socket can bind (sun_path holds 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107


def socket_path(address: str) -> Path:
    """``unix:///run/agent.sock`` / ``unix:/run/agent.sock`` / a plain path -> the socket's path."""
    if address.startswith("unix://"):
        path = address[len("unix://") :]
    elif address.startswith("unix:"):
        path = address[len("unix:") :]
    elif "://" in address:
        raise InvalidArgument(f"agent address {address!r} must be a Unix socket: unix:///path/to/agent.sock")
    else:
        path = address
    if not path:
        raise InvalidArgument("agent address has an empty socket path")
    return Path(path)


def fast_path_for(agent_socket: Path) -> Path:
    """Where the fast-path socket of the agent listening on ``agent_socket`` lives."""
    return agent_socket.with_name(agent_socket.name + SUFFIX)


def recv_exact(sock: socket.socket, n: int) -> bytearray | None:
    """``n`` bytes from ``sock``, or None when the peer closed the connection before the first."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        k = sock.recv_into(view[got:])
        if k == 0:
            if got == 0:
                return None
            raise ConnectionError(f"connection closed after {got} of {n} bytes")
        got += k
    return buf


class FrameReader:
    """Reads the length-prefixed frames of one connection, usually with one ``recv`` per frame.

    A frame and its header mostly arrive together, so the reader asks for up to ``chunk`` bytes
    at once and keeps what follows the current frame for the next one (a peer may send the next
    frame early). A body longer than what has arrived is read straight into its own buffer.
    """

    def __init__(self, sock: socket.socket, chunk: int = 64 * 1024) -> None:
        self.sock = sock
        self._chunk = chunk
        self._buf = b""
        self._pos = 0

    def next_length(self) -> int | None:
        """The length of the next frame, or None when the peer closed the connection between frames."""
        while len(self._buf) - self._pos < FRAME_LENGTH.size:
            chunk = self.sock.recv(self._chunk)
            if not chunk:
                if len(self._buf) == self._pos:
                    return None
                raise ConnectionError("connection closed inside a frame header")
            self._buf = self._buf[self._pos :] + chunk if self._pos < len(self._buf) else chunk
            self._pos = 0
        (length,) = FRAME_LENGTH.unpack_from(self._buf, self._pos)
        self._pos += FRAME_LENGTH.size
        return int(length)

    def body(self, length: int) -> memoryview | bytearray:
        """The next ``length`` bytes (the frame's body, after :meth:`next_length`)."""
        start = self._pos
        have = len(self._buf) - start
        if have >= length:
            self._pos += length
            return memoryview(self._buf)[start : start + length]
        out = bytearray(length)
        out[:have] = memoryview(self._buf)[start:]
        self._buf, self._pos = b"", 0
        view = memoryview(out)
        got = have
        while got < length:
            k = self.sock.recv_into(view[got:])
            if k == 0:
                raise ConnectionError(f"connection closed after {got} of {length} bytes of a frame")
            got += k
        return out


def reply_frame(status: int, payload: bytes) -> bytes:
    return FRAME_LENGTH.pack(len(payload) + 1) + bytes((status,)) + payload


class FastPathServer:
    """Listens on ``path`` and serves Predict with ``predict`` (raising EdgefleetError on refusal)."""

    def __init__(
        self,
        path: Path,
        predict: Callable[[Any], Any],
        *,
        mode: int,
        max_message_bytes: int,
        max_connections: int = 64,
    ) -> None:
        self.path = path
        self._predict = predict
        self._max_message = max_message_bytes
        self._max_connections = max_connections
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._closed = False
        if path.is_socket():
            path.unlink()  # the agent has already checked that its main socket is free to take
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(str(path))
        os.chmod(path, mode)
        st = path.lstat()
        self._identity = (st.st_dev, st.st_ino)
        self._listener.listen(16)
        self._thread = threading.Thread(target=self._accept_loop, name="agent-fast-path", daemon=True)
        self._thread.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                if self._closed:
                    conn.close()
                    return
                if len(self._connections) >= self._max_connections:
                    full = True
                else:
                    full = False
                    self._connections.add(conn)
            if full:
                log.warning(
                    "fast path: refusing a connection, %d are open (the limit)", self._max_connections
                )
                message = (
                    f"the agent's fast path has {self._max_connections} connections open (its limit); "
                    "use gRPC or close idle connections"
                )
                threading.Thread(
                    target=self._refuse, args=(conn, Code.RESOURCE_EXHAUSTED, message), daemon=True
                ).start()
                continue
            threading.Thread(
                target=self._serve, args=(conn,), name="agent-fast-path-conn", daemon=True
            ).start()

    def _refuse(self, conn: socket.socket, code: Code, message: str) -> None:
        """Read the client's greeting (so that its write is not cut off), answer the error frame
        instead of ours, close."""
        try:
            conn.settimeout(1.0)
            recv_exact(conn, len(MAGIC))
            conn.sendall(reply_frame(grpc_status_number(code), message.encode()))
        except OSError:
            pass
        finally:
            conn.close()

    def _serve(self, conn: socket.socket) -> None:
        try:
            hello = recv_exact(conn, len(MAGIC))
            if hello is None or bytes(hello) != MAGIC:
                if hello is not None:
                    log.info("fast path: a client opened with %r, not %r; closing", bytes(hello), MAGIC)
                    conn.sendall(
                        reply_frame(
                            grpc_status_number(Code.INVALID_ARGUMENT),
                            f"the fast path expects the greeting {MAGIC.decode()}".encode(),
                        )
                    )
                return
            conn.sendall(MAGIC)
            frames = FrameReader(conn)
            while True:
                length = frames.next_length()
                if length is None:
                    return
                if length > self._max_message:
                    # The frame cannot be skipped safely without reading it all: answer, then close.
                    conn.sendall(
                        reply_frame(
                            grpc_status_number(Code.RESOURCE_EXHAUSTED),
                            f"request of {length} bytes is larger than the agent's "
                            f"max_message_bytes ({self._max_message})".encode(),
                        )
                    )
                    return
                conn.sendall(self._answer(frames.body(length)))
        except OSError as exc:  # ConnectionError included
            if not self._closed:
                log.debug("fast path connection ended: %s", exc)
        finally:
            with self._lock:
                self._connections.discard(conn)
            conn.close()

    def _answer(self, body: memoryview | bytearray) -> bytes:
        try:
            request = agent_pb2.PredictRequest.FromString(body)
        except DecodeError as exc:
            return reply_frame(
                grpc_status_number(Code.INVALID_ARGUMENT),
                f"the frame is not a PredictRequest: {exc}".encode(),
            )
        try:
            response = self._predict(request)
        except EdgefleetError as exc:
            return reply_frame(grpc_status_number(exc.code), exc.message.encode("utf-8", "replace"))
        except Exception:  # a bug: answer INTERNAL like gRPC would, and keep serving
            log.exception("fast path Predict on %r failed", request.name)
            return reply_frame(
                grpc_status_number(Code.INTERNAL), b"internal error in the agent (see its log)"
            )
        return reply_frame(0, response.SerializeToString())

    def stop(self) -> None:
        """Stop accepting, close every connection (calls in progress finish first), remove the socket."""
        with self._lock:
            self._closed = True
            connections = list(self._connections)
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for conn in connections:
            try:
                conn.shutdown(socket.SHUT_RD)  # the serving thread sees end-of-stream after its call
            except OSError:
                pass
        self._thread.join(timeout=5)
        unlink_if_ours(self.path, self._identity)


def unlink_if_ours(path: Path, identity: tuple[int, int]) -> None:
    """Remove the socket at ``path`` if it is still the one with ``identity`` (device, inode) that we
    bound, never one a newer agent has bound at the same path since."""
    try:
        st = path.lstat()
        if (st.st_dev, st.st_ino) == identity:
            path.unlink()
    except FileNotFoundError:
        pass
