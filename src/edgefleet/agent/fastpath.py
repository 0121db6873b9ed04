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
import math
import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from edgefleet.agent.proto import agent_pb2
from edgefleet.core.errors import (
    Code,
    EdgefleetError,
    InvalidArgument,
    grpc_status_number,
    quoted,
    wire_message,
)

log = logging.getLogger(__name__)

MAGIC = b"EFP1"
SUFFIX = ".fast"
#: The length prefix of every frame (little-endian u32).
FRAME_LENGTH = struct.Struct("<I")
#: Longest length a frame header can declare (its u32).
MAX_FRAME_LENGTH = (1 << 32) - 1
#: Default of ``agent.fast_path_max_frame_bytes``: far above a Predict's usual inline tensors
#: (edgefleet's client puts tensors over 256 KiB in shared memory) and far below gRPC's 1 GiB, so
#: 64 connections cannot make the agent hold more than a few GiB even if they send every byte.
FAST_PATH_MAX_FRAME_BYTES = 64 << 20
#: Longest path a Unix socket can bind (sun_path holds 108 bytes with the terminating NUL).
MAX_SOCKET_PATH = 107


def socket_path(address: str) -> Path:
    """``unix:///run/agent.sock`` / ``unix:/run/agent.sock`` / a plain path -> the socket's path."""
    if address.startswith("unix://"):
        path = address[len("unix://") :]
    elif address.startswith("unix:"):
        path = address[len("unix:") :]
    elif "://" in address:
        raise InvalidArgument(
            f"agent address {quoted(address)} must be a Unix socket: unix:///path/to/agent.sock"
        )
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
    frame early). A body longer than what has arrived is read into its own buffer, which grows
    with the bytes that arrive, never ahead of them: a header may declare any length, and a peer
    that declares 1 GiB and sends nothing costs nothing.

    Deadlines: with ``idle_timeout`` (seconds to wait for the first byte of a frame) and
    ``frame_timeout`` (seconds a frame may take from its first byte to its last), the reader keeps
    :attr:`deadline` and :attr:`overdue` up to date; whoever owns the connection closes it once
    the deadline has passed (the agent's fast path does, from one watchdog thread). That costs the
    reads nothing: a socket timeout would add a ``poll`` to every ``recv`` and a syscall to every
    change of timeout. Without them (None) the deadline stays infinite.
    """

    #: The buffer of a long body starts at up to this many bytes and then doubles as bytes arrive.
    GROWTH_STEP = 1 << 20

    def __init__(
        self,
        sock: socket.socket,
        chunk: int = 64 * 1024,
        *,
        idle_timeout: float | None = None,
        frame_timeout: float | None = None,
    ) -> None:
        self.sock = sock
        self._chunk = chunk
        self._buf = b""
        self._pos = 0
        self._idle = idle_timeout
        self._frame = frame_timeout
        #: ``time.monotonic()`` by which what the connection waits for must have happened.
        self.deadline = math.inf
        #: What is overdue once :attr:`deadline` has passed, for the log.
        self.overdue = ""

    def expect(self, seconds: float | None, overdue: str) -> None:
        """Set the deadline ``seconds`` from now (None: no deadline) and what will then be overdue."""
        self.deadline = math.inf if seconds is None else time.monotonic() + seconds
        self.overdue = overdue

    def _frame_started(self) -> None:
        if self._frame is not None:
            self.expect(
                self._frame, f"a frame did not arrive whole within {self._frame:g} s of its first byte"
            )

    def next_length(self) -> int | None:
        """The length of the next frame, or None when the peer closed the connection between frames."""
        if len(self._buf) > self._pos:
            self._frame_started()  # the frame's first bytes are already here
        elif self._idle is not None:
            self.expect(self._idle, f"no request for {self._idle:g} s")
        while len(self._buf) - self._pos < FRAME_LENGTH.size:
            waiting = len(self._buf) == self._pos
            chunk = self.sock.recv(self._chunk)
            if not chunk:
                if len(self._buf) == self._pos:
                    return None
                raise ConnectionError("connection closed inside a frame header")
            if waiting:
                self._frame_started()
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
        # Sized for what has arrived plus one step, grown (doubling) only when full: memory
        # follows the bytes that really arrive, whatever the header declared.
        out = bytearray(min(length, have + self.GROWTH_STEP))
        out[:have] = memoryview(self._buf)[start:]
        self._buf, self._pos = b"", 0
        got = have
        while got < length:
            if got == len(out):
                out.extend(bytes(min(length, 2 * len(out)) - len(out)))
            k = self.sock.recv_into(memoryview(out)[got:])
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
        max_frame_bytes: int = FAST_PATH_MAX_FRAME_BYTES,
        idle_seconds: float = 60.0,
        frame_seconds: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self.path = path
        self._predict = predict
        self._max_frame = max_frame_bytes
        self._idle_seconds = idle_seconds
        self._frame_seconds = frame_seconds
        self._max_connections = max_connections
        self._lock = threading.Lock()
        # every open connection and its reader, whose deadline the watchdog checks
        self._connections: dict[socket.socket, FrameReader] = {}
        self._closed = False
        self._stopped = threading.Event()
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
        self._watchdog = threading.Thread(target=self._watch, name="agent-fast-path-watchdog", daemon=True)
        self._watchdog.start()

    def _watch(self) -> None:
        """Close the connections whose deadline has passed: idle ones, frames that stall or trickle,
        replies the client does not take. The serving thread sees its connection end and exits."""
        # Checked a few times per timeout: a connection is closed at most a quarter late.
        tick = min(1.0, max(0.05, min(self._idle_seconds, self._frame_seconds) / 4))
        while not self._stopped.wait(tick):
            now = time.monotonic()
            with self._lock:
                overdue = [(c, r) for c, r in self._connections.items() if r.deadline < now]
            for conn, reader in overdue:
                log.info("fast path: closing a connection: %s", reader.overdue)
                reader.expect(None, "")
                try:
                    conn.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already gone

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
                    frames = FrameReader(
                        conn, idle_timeout=self._idle_seconds, frame_timeout=self._frame_seconds
                    )
                    frames.expect(self._frame_seconds, f"no greeting within {self._frame_seconds:g} s")
                    self._connections[conn] = frames
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
                target=self._serve, args=(conn, frames), name="agent-fast-path-conn", daemon=True
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

    def _serve(self, conn: socket.socket, frames: FrameReader) -> None:
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
            taking = f"the client did not take its reply within {self._frame_seconds:g} s"
            while True:
                length = frames.next_length()
                if length is None:
                    return
                if length > self._max_frame:
                    # The frame cannot be skipped safely without reading it all: answer, then close.
                    frames.expect(self._frame_seconds, taking)
                    conn.sendall(
                        reply_frame(
                            grpc_status_number(Code.RESOURCE_EXHAUSTED),
                            f"request of {length} bytes is larger than the agent's fast-path limit, "
                            f"fast_path_max_frame_bytes ({self._max_frame}): send it over gRPC or put "
                            "its tensors in shared memory".encode(),
                        )
                    )
                    return
                body = frames.body(length)
                frames.expect(None, "")  # the inference takes what it takes
                reply = self._answer(body)
                del body  # not held while the client takes its time to read the reply
                # A reply the client does not read within the frame time closes the connection
                # instead of holding this thread forever.
                frames.expect(self._frame_seconds, taking)
                conn.sendall(reply)
        except OSError as exc:  # ConnectionError included
            if not self._closed:
                log.debug("fast path connection ended: %s", exc)
        finally:
            with self._lock:
                self._connections.pop(conn, None)
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
            return reply_frame(grpc_status_number(exc.code), wire_message(exc).encode("utf-8", "replace"))
        except Exception:  # a bug: answer INTERNAL like gRPC would, and keep serving
            log.exception("fast path Predict on %s failed", quoted(request.name))
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
        self._stopped.set()
        self._thread.join(timeout=5)
        self._watchdog.join(timeout=5)
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
