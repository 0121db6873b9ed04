"""FrameReader: the fast path's frame reassembly over a real socket pair; and the fast-path server's deadlines."""

from __future__ import annotations

import math
import socket
import struct
import threading
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgefleet.agent.fast_socket import FastSocketServer
from edgefleet.protocol.agent.framing import MAGIC, FrameReader
from edgefleet.protocol.agent.proto import agent_pb2

LENGTH = struct.Struct("<I")  # the wire's frame prefix, as docs/agent-protocol.md writes it


def frame(body: bytes) -> bytes:
    return LENGTH.pack(len(body)) + body


@pytest.fixture
def pair() -> Iterator[tuple[socket.socket, socket.socket]]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.settimeout(5)
    yield a, b
    a.close()
    b.close()


def read_all(reader: FrameReader) -> list[bytes]:
    frames = []
    while (length := reader.next_length()) is not None:
        frames.append(bytes(reader.body(length)))
    return frames


def test_frames_sent_together_are_split_apart(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(frame(b"one") + frame(b"") + frame(b"three"))
    b.close()
    assert read_all(FrameReader(a)) == [b"one", b"", b"three"]


def test_frames_cut_at_every_byte_are_reassembled(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    data = frame(b"abcdef") + frame(b"gh")

    def dribble() -> None:
        for i in range(len(data)):
            b.sendall(data[i : i + 1])
        b.close()

    writer = threading.Thread(target=dribble)
    writer.start()
    assert read_all(FrameReader(a, chunk=3)) == [b"abcdef", b"gh"]
    writer.join()


def test_a_body_longer_than_the_chunk_is_read_whole(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    big = bytes(range(256)) * 4096  # 1 MiB, more than the socket buffer: written from a thread
    writer = threading.Thread(target=lambda: (b.sendall(frame(big) + frame(b"next")), b.close()))
    writer.start()
    assert read_all(FrameReader(a, chunk=1000)) == [big, b"next"]
    writer.join()


def test_the_peer_closing_between_frames_is_a_clean_end(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.close()
    assert FrameReader(a).next_length() is None


def test_the_peer_closing_inside_a_header_is_an_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(frame(b"ok") + b"\x05\x00")
    b.close()
    reader = FrameReader(a)
    assert bytes(reader.body(reader.next_length() or 0)) == b"ok"
    with pytest.raises(ConnectionError, match="inside a frame header"):
        reader.next_length()


def test_the_peer_closing_inside_a_body_is_an_error(pair: tuple[socket.socket, socket.socket]) -> None:
    a, b = pair
    b.sendall(LENGTH.pack(10) + b"12345")
    b.close()
    reader = FrameReader(a, chunk=4)
    assert reader.next_length() == 10
    with pytest.raises(ConnectionError, match="after 5 of 10 bytes"):
        reader.body(10)


def test_a_declared_length_costs_only_the_bytes_that_arrive(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    """A header declaring 1 GiB followed by 3 MiB: the reader's memory follows the 3 MiB."""
    a, b = pair
    arrived = 3 << 20
    writer = threading.Thread(target=lambda: (b.sendall(LENGTH.pack(1 << 30) + bytes(arrived)), b.close()))
    writer.start()
    reader = FrameReader(a)
    tracemalloc.start()
    try:
        assert reader.next_length() == 1 << 30
        with pytest.raises(ConnectionError, match=f"after {arrived} of {1 << 30} bytes"):
            reader.body(1 << 30)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        writer.join()
    assert peak < 3 * arrived  # the buffer doubles as bytes arrive: never the declared 1 GiB


def test_the_reader_keeps_the_deadline_of_what_it_waits_for(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    reader = FrameReader(a, idle_timeout=60, frame_timeout=10)
    assert reader.deadline == math.inf  # nothing expected yet
    b.sendall(frame(b"abc"))
    before = time.monotonic()
    assert reader.next_length() == 3
    # the frame's first bytes arrived: the frame deadline (10 s), not the idle one (60 s)
    assert before + 9 < reader.deadline < time.monotonic() + 10.5
    assert "did not arrive whole within 10 s" in reader.overdue
    assert bytes(reader.body(3)) == b"abc"
    untimed = FrameReader(b)
    assert untimed.deadline == math.inf


class Served:
    """An in-process fast-path server on a real socket; Predict answers an empty response after
    ``delay`` seconds."""

    def __init__(self, directory: Path, *, delay: float = 0.0) -> None:
        self.delay = delay
        self.server = FastSocketServer(
            directory / "agent.sock.fast", self.predict, mode=0o600, idle_seconds=0.5, frame_seconds=0.5
        )

    def predict(self, request: agent_pb2.PredictRequest) -> agent_pb2.PredictResponse:
        time.sleep(self.delay)
        return agent_pb2.PredictResponse()

    def connect(self) -> socket.socket:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.settimeout(60)
        conn.connect(str(self.server.path))
        conn.sendall(MAGIC)
        assert conn.recv(4) == MAGIC
        return conn


@pytest.fixture
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    served = Served(tmp_path_factory.mktemp("fp"))  # short: a socket path has at most 107 bytes
    yield served
    served.server.stop()


def closed_by_server(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""  # the socket timeout (60 s) raises if the server keeps it open
    except ConnectionResetError:
        return True


def test_an_idle_connection_is_closed(served: Served) -> None:
    conn = served.connect()
    assert closed_by_server(conn)
    conn.close()


def trickling(sock: socket.socket, first: bytes, stop: threading.Event, every: float) -> threading.Thread:
    """Send ``first``, then a byte every ``every`` seconds until ``stop`` or the peer closes."""

    def run() -> None:
        sock.sendall(first)
        while not stop.wait(every):
            try:
                sock.sendall(b"\x00")
            except OSError:
                return

    writer = threading.Thread(target=run)
    writer.start()
    return writer


@pytest.mark.parametrize("first", [b"\x10", LENGTH.pack(1000) + b"abc"], ids=["header", "body"])
def test_a_frame_that_trickles_past_its_deadline_is_closed(served: Served, first: bytes) -> None:
    """The deadline runs from the frame's first byte: a byte every 0.1 s does not keep it alive
    (the frame would take 0.3 s or 100 s to arrive whole; it is due after 0.5 s)."""
    conn = served.connect()
    stop = threading.Event()
    writer = trickling(conn, first, stop, every=0.1 if len(first) > 1 else 1.0)
    try:
        assert closed_by_server(conn)
    finally:
        stop.set()
        writer.join()
        conn.close()


def test_a_slow_inference_is_not_cut_off(served: Served) -> None:
    """Only the client's part has deadlines: a Predict taking longer than them is answered."""
    served.delay = 1.5  # three times the frame and idle deadlines
    conn = served.connect()
    body = agent_pb2.PredictRequest(name="m").SerializeToString()
    conn.sendall(frame(body))
    (length,) = LENGTH.unpack(conn.recv(4))
    assert conn.recv(length) == b"\x00"  # status OK, an empty PredictResponse
    conn.close()
