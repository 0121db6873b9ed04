"""edgefleet.protocol.agent.framing: reply frames, addresses and the fast socket's path, as the docs say."""

from __future__ import annotations

import socket
import struct
import threading
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgefleet.core.errors import Code, InvalidArgument
from edgefleet.protocol.agent.framing import FrameReader, fast_path_for, recv_exact, reply_frame, socket_path

LENGTH = struct.Struct("<I")  # docs/agent-protocol.md: a little-endian u32 length, then the body


@settings(max_examples=50, deadline=None)
@given(
    replies=st.lists(st.tuples(st.integers(0, 16), st.binary(max_size=3000)), min_size=1, max_size=5),
    chunk=st.integers(1, 4096),
)
def test_reply_frames_read_back_whole_and_in_order(replies: list[tuple[int, bytes]], chunk: int) -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        a.settimeout(10)
        wire = b"".join(reply_frame(status, payload) for status, payload in replies)
        assert wire[:4] == LENGTH.pack(len(replies[0][1]) + 1)
        sender = threading.Thread(target=lambda: (b.sendall(wire), b.shutdown(socket.SHUT_WR)))
        sender.start()
        reader = FrameReader(a, chunk=chunk)
        got = []
        while (length := reader.next_length()) is not None:
            body = bytes(reader.body(length))
            got.append((body[0], body[1:]))
        sender.join()
    assert got == replies


def test_recv_exact_tells_a_clean_close_from_a_cut_one() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    with a, b:
        b.sendall(b"EF")
        b.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError, match="closed after 2 of 4 bytes"):
            recv_exact(a, 4)
        assert recv_exact(a, 4) is None


@pytest.mark.parametrize(
    ("address", "path"),
    [
        ("unix:///run/agent.sock", "/run/agent.sock"),
        ("unix:/run/a.sock", "/run/a.sock"),
        ("rel.sock", "rel.sock"),
    ],
)
def test_socket_path_accepts_the_documented_address_forms(address: str, path: str) -> None:
    assert socket_path(address) == Path(path)
    assert fast_path_for(socket_path(address)) == Path(path + ".fast")


@pytest.mark.parametrize(
    ("address", "match"), [("dns:///host:1", "must be a Unix socket"), ("unix://", "empty socket path")]
)
def test_socket_path_refuses_what_is_not_a_unix_socket(address: str, match: str) -> None:
    with pytest.raises(InvalidArgument, match=match) as info:
        socket_path(address)
    assert info.value.code is Code.INVALID_ARGUMENT
