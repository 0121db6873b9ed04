"""The framing of the agent's fast path (extensions ``fast-predict``, ``fast-capture``), shared by
agent and client. Contract (docs/agent-protocol.md, "Fast path"): the socket is the agent's socket
path + ``.fast``; the client greets with ``EFP1`` (Predict only) or ``EFP2`` (a method byte first in
every request), the agent answers the same greeting; a request is a frame (a little-endian u32
length, then, under ``EFP2``, one method byte, then the serialized request message); a reply is a
frame holding one status byte (the gRPC status number, 0 = OK), then the response message (OK) or
the UTF-8 error message. Calls on one connection are sequential; open several connections for
concurrent calls."""

from __future__ import annotations

import math
import socket
import struct
import time
from pathlib import Path

from edgefleet.core.errors import InvalidArgument, quoted

MAGIC = b"EFP1"
#: The greeting of connections whose requests start with a method byte.
MAGIC_METHODS = b"EFP2"
#: The method bytes of ``EFP2`` requests.
METHOD_PREDICT = 1
METHOD_CAPTURE_DATA = 2
METHOD_CAPTURE_STATUS = 3
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
