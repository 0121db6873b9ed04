"""Captures over the fast socket (extension ``fast-capture``, greeting ``EFP2``): the same records
and codes as gRPC CaptureData / GetCaptureDataStatus, bad frames refused with the connection kept,
an agent that knows only ``EFP1`` still serves Predict, and a capture whose answer was lost is
reported UNAVAILABLE instead of being sent twice."""

from __future__ import annotations

import json
import socket
import struct
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from support import (
    AgentProcess,
    build,
    frame_reply,
    make_linear_onnx,
    read_exact,
    running_agent,
    tensor,
    wait_for,
)

from edgefleet.client import AgentClient
from edgefleet.client.fast_socket import FastSocketTransport
from edgefleet.core.errors import AlreadyExists, NotFound, Unavailable
from edgefleet.protocol.agent.framing import (
    MAGIC,
    MAGIC_METHODS,
    METHOD_CAPTURE_DATA,
    METHOD_CAPTURE_STATUS,
    METHOD_PREDICT,
    fast_path_for,
    reply_frame,
)
from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2

FRAME = struct.Struct("<I")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, trust: Path, keys: Path) -> Iterator[AgentProcess]:
    workdir = tmp_path_factory.mktemp("fast-capture")
    with running_agent(workdir, trust, agent={"fast_path_idle_seconds": 0.5}) as proc:
        linear = build(
            make_linear_onnx(workdir / "m.onnx"), keys, workdir / "pkgs", name="linear", version="2"
        )
        proc.stub().LoadModel(agent_pb2.LoadModelRequest(url=str(linear), name="linear"))
        yield proc


def records(capture_dir: Path) -> list[dict[str, object]]:
    return [
        json.loads(line)
        for path in sorted(capture_dir.rglob("*.jsonl"))
        for line in path.read_text().splitlines()
        if line
    ]


def methods_connection(proc: AgentProcess) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(str(fast_path_for(proc.socket)))
    conn.sendall(MAGIC_METHODS)
    assert read_exact(conn, 4) == MAGIC_METHODS
    return conn


def send(conn: socket.socket, method: int | None, body: bytes) -> tuple[int, bytes]:
    head = b"" if method is None else bytes((method,))
    conn.sendall(FRAME.pack(len(head) + len(body)) + head + body)
    return frame_reply(conn)


def test_client_captures_over_the_fast_socket_with_the_same_records(agent: AgentProcess) -> None:
    meta = agent.ext().GetServerMetadata(extensions_pb2.ServerMetadataRequest())
    assert {"fast-predict", "fast-capture"} <= set(meta.extensions)
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    ids = []
    with AgentClient(agent.address, timeout=30) as client:
        for _ in range(3):
            ids.append(client.capture("linear", inputs={"x": x}, outputs={"y": x[:, :3]}))
        wait_for(lambda: all(client.capture_status(i) == "SUCCESS" for i in ids), "the captures written")
        fast = client._fast
        assert fast is not None and fast.capture_calls >= 6  # three captures, three or more polls
        with pytest.raises(AlreadyExists, match="already used"):
            client.capture("linear", capture_id=ids[0], inputs={"x": x})
        with pytest.raises(NotFound, match="nope"):
            client.capture("nope", inputs={"x": x})
    written = {r["eventMetadata"]["eventId"]: r for r in records(agent.capture_dir)}
    for capture_id in ids:
        meta = written[capture_id]["eventMetadata"]
        assert isinstance(meta, dict) and (meta["modelName"], meta["modelVersion"]) == ("linear", "2")


def test_raw_frames_unknown_method_empty_and_garbage_keep_the_connection(agent: AgentProcess) -> None:
    conn = methods_connection(agent)
    try:
        status, message = send(conn, 9, b"")
        assert status == 12 and b"no method 9" in message  # UNIMPLEMENTED
        status, message = send(conn, None, b"")
        assert status == 3 and b"method byte" in message  # INVALID_ARGUMENT
        status, message = send(conn, METHOD_CAPTURE_DATA, b"\xff\xff\xff")
        assert status == 3 and b"not a CaptureDataRequest" in message
        status, message = send(
            conn, METHOD_CAPTURE_STATUS, agent_pb2.GetCaptureDataStatusRequest().SerializeToString()
        )
        assert status == 3 and b"capture_id is empty" in message
        status, payload = send(
            conn,
            METHOD_CAPTURE_STATUS,
            agent_pb2.GetCaptureDataStatusRequest(capture_id=str(uuid.uuid4())).SerializeToString(),
        )
        assert status == 0
        assert agent_pb2.GetCaptureDataStatusResponse.FromString(payload).status == agent_pb2.NOT_FOUND
        request = agent_pb2.PredictRequest(name="linear")
        request.tensors.add().CopyFrom(tensor("x", np.ones((1, 4), np.float32)))
        status, payload = send(conn, METHOD_PREDICT, request.SerializeToString())
        assert status == 0 and agent_pb2.PredictResponse.FromString(payload).tensors[0].tensor_metadata.name
    finally:
        conn.close()


def test_a_kept_connection_the_agent_closed_idle_is_replaced_before_a_capture(agent: AgentProcess) -> None:
    x = np.ones((1, 4), np.float32)
    with AgentClient(agent.address, timeout=30) as client:
        client.capture("linear", inputs={"x": x})
        fast = client._fast
        assert fast is not None and fast.capture_calls == 1
        kept = fast._local.frames.sock

        def closed_by_agent() -> bool:
            try:
                return kept.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
            except BlockingIOError:
                return False
            except OSError:
                return True

        wait_for(closed_by_agent, "the agent to close the idle connection")  # idle limit 0.5 s
        fast._local.used_at -= 5  # idle for longer than the client's check threshold
        client.capture("linear", inputs={"x": x})  # not UNAVAILABLE: the closed connection was seen
        assert fast.capture_calls == 2


class ScriptedAgent:
    """A socket server standing in for an agent: ``v1`` knows only the EFP1 greeting (refusing
    others with INVALID_ARGUMENT, as agents before EFP2 did) and answers Predict; ``drop`` greets
    EFP2, reads one request and closes without answering."""

    def __init__(self, path: Path, behaviour: str) -> None:
        self.behaviour = behaviour
        self.requests = 0
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            hello = read_exact(conn, 4)
            if self.behaviour == "v1" and hello != MAGIC:
                conn.sendall(reply_frame(3, b"the fast path expects the greeting EFP1"))
                return
            conn.sendall(hello)
            while True:
                try:
                    (length,) = FRAME.unpack(read_exact(conn, 4))
                    read_exact(conn, length)
                except (ConnectionError, AssertionError, struct.error):
                    return
                self.requests += 1
                if self.behaviour == "drop":
                    return
                conn.sendall(reply_frame(0, agent_pb2.PredictResponse().SerializeToString()))

    def close(self) -> None:
        self.listener.close()


def test_an_agent_from_before_efp2_still_serves_predict_and_captures_use_grpc(tmp_path: Path) -> None:
    path = tmp_path / "a.sock.fast"
    old = ScriptedAgent(path, "v1")
    transport = FastSocketTransport(path, timeout=30)
    try:
        assert transport.predict(agent_pb2.PredictRequest(name="m")) is not None
        assert transport.calls == 1 and old.requests == 1
        assert transport.capture_data(agent_pb2.CaptureDataRequest(model_name="m", capture_id="c")) is None
        assert old.requests == 1  # nothing sent: the caller uses gRPC
    finally:
        transport.close()
        old.close()


def test_a_capture_whose_answer_is_lost_is_unavailable_not_sent_again(tmp_path: Path) -> None:
    path = tmp_path / "b.sock.fast"
    dropping = ScriptedAgent(path, "drop")
    transport = FastSocketTransport(path, timeout=30)
    try:
        with pytest.raises(Unavailable, match="may or may not have been taken"):
            transport.capture_data(agent_pb2.CaptureDataRequest(model_name="m", capture_id="c"))
        assert dropping.requests == 1
        # Predict has no side effects: a fresh connection that fails hands it to gRPC (None)
        assert transport.predict(agent_pb2.PredictRequest(name="m")) is None
    finally:
        transport.close()
        dropping.close()
