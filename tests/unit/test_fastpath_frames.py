"""FrameReader: the fast path's frame reassembly, over a real socket pair."""

from __future__ import annotations

import socket
import struct
import threading
import tracemalloc
from collections.abc import Iterator

import pytest

from edgefleet.agent.fastpath import FrameReader

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


def test_an_idle_connection_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    a, _ = pair
    reader = FrameReader(a, idle_timeout=0.2, frame_timeout=30)
    with pytest.raises(TimeoutError, match=r"no request for 0\.2 s"):
        reader.next_length()


def trickling(sock: socket.socket, first: bytes, stop: threading.Event, every: float) -> threading.Thread:
    """Send ``first``, then a byte every ``every`` seconds until ``stop``."""

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


def test_a_header_that_trickles_past_its_deadline_times_out(
    pair: tuple[socket.socket, socket.socket],
) -> None:
    a, b = pair
    stop = threading.Event()
    writer = trickling(b, b"\x10", stop, every=1.0)  # whole after 3 s, due after 0.5 s
    reader = FrameReader(a, idle_timeout=30, frame_timeout=0.5)
    try:
        with pytest.raises(TimeoutError, match="a frame header stalled"):
            reader.next_length()
    finally:
        stop.set()
        writer.join()


def test_a_body_that_trickles_past_its_deadline_times_out(pair: tuple[socket.socket, socket.socket]) -> None:
    """The deadline runs from the frame's first byte: a byte now and then does not keep it alive."""
    a, b = pair
    stop = threading.Event()
    writer = trickling(b, LENGTH.pack(1000) + b"abc", stop, every=0.05)
    reader = FrameReader(a, idle_timeout=30, frame_timeout=0.5)
    try:
        length = reader.next_length()
        assert length == 1000
        with pytest.raises(TimeoutError, match=r"a frame stalled: \d+ of 1000 bytes arrived within 0\.5 s"):
            reader.body(length)
    finally:
        stop.set()
        writer.join()
