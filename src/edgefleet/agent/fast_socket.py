"""The agent's fast-socket server: Predict (and, under the ``EFP2`` greeting, CaptureData and
GetCaptureDataStatus) over a plain Unix socket beside the gRPC one (extensions ``fast-predict``,
``fast-capture``; frames of :mod:`edgefleet.protocol.agent.framing`). gRPC hands every call through
several threads on each side, each hand-off a wake-up (most of a Predict's overhead on small
machines); here one agent thread per connection reads, runs and answers: one wake-up per side."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from google.protobuf.message import DecodeError

from edgefleet.core.errors import Code, EdgefleetError, grpc_status_number, wire_message
from edgefleet.protocol.agent.framing import (
    FAST_PATH_MAX_FRAME_BYTES,
    MAGIC,
    MAGIC_METHODS,
    METHOD_PREDICT,
    FrameReader,
    recv_exact,
    reply_frame,
)
from edgefleet.protocol.agent.proto import agent_pb2

log = logging.getLogger(__name__)

#: A method of ``EFP2`` connections: its request message class and the call answering it (raising
#: EdgefleetError on refusal).
Method = tuple[Any, Callable[[Any], Any]]


class FastSocketServer:
    """Listens on ``path`` and serves Predict with ``predict`` (raising EdgefleetError on refusal),
    and to ``EFP2`` connections the ``methods`` by their method byte as well."""

    def __init__(
        self,
        path: Path,
        predict: Callable[[Any], Any],
        *,
        mode: int,
        methods: Mapping[int, Method] | None = None,
        max_frame_bytes: int = FAST_PATH_MAX_FRAME_BYTES,
        idle_seconds: float = 60.0,
        frame_seconds: float = 10.0,
        max_connections: int = 64,
    ) -> None:
        self.path = path
        self._methods: dict[int, Method] = {METHOD_PREDICT: (agent_pb2.PredictRequest, predict)}
        self._methods.update(methods or {})
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
            if hello is None or bytes(hello) not in (MAGIC, MAGIC_METHODS):
                if hello is not None:
                    log.info("fast path: a client opened with %r, not %r; closing", bytes(hello), MAGIC)
                    conn.sendall(
                        reply_frame(
                            grpc_status_number(Code.INVALID_ARGUMENT),
                            f"the fast path expects the greeting {MAGIC.decode()} or "
                            f"{MAGIC_METHODS.decode()}".encode(),
                        )
                    )
                return
            with_methods = bytes(hello) == MAGIC_METHODS
            conn.sendall(hello)
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
                if with_methods:
                    reply = self._answer(memoryview(body)[1:], body[0]) if length else _empty_frame()
                else:
                    reply = self._answer(body, METHOD_PREDICT)
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

    def _answer(self, body: memoryview | bytearray, method: int) -> bytes:
        known = self._methods.get(method)
        if known is None:
            return reply_frame(
                grpc_status_number(Code.UNIMPLEMENTED),
                f"this agent's fast path has no method {method} (known: "
                f"{', '.join(map(str, sorted(self._methods)))})".encode(),
            )
        kind, call = known
        try:
            request = kind.FromString(body)
        except DecodeError as exc:
            return reply_frame(
                grpc_status_number(Code.INVALID_ARGUMENT),
                f"the frame is not a {kind.__name__}: {exc}".encode(),
            )
        try:
            response = call(request)
        except EdgefleetError as exc:
            return reply_frame(grpc_status_number(exc.code), wire_message(exc).encode("utf-8", "replace"))
        except Exception:  # a bug: answer INTERNAL like gRPC would, and keep serving
            log.exception("fast path %s failed", kind.__name__)
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


def _empty_frame() -> bytes:
    return reply_frame(
        grpc_status_number(Code.INVALID_ARGUMENT), b"an EFP2 request frame starts with a method byte"
    )


def unlink_if_ours(path: Path, identity: tuple[int, int]) -> None:
    """Remove the socket at ``path`` if it is still the one with ``identity`` (device, inode) that we
    bound, never one a newer agent has bound at the same path since."""
    try:
        st = path.lstat()
        if (st.st_dev, st.st_ino) == identity:
            path.unlink()
    except FileNotFoundError:
        pass
