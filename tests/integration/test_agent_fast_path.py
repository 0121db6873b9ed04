"""The fast path (extension ``fast-predict``): Predict over ``<socket>.fast`` with the same messages
as gRPC, the same answers and error codes, refusals of malformed frames, and gRPC as the fallback."""

from __future__ import annotations

import gc
import socket
import stat
import struct
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from support import (
    AgentProcess,
    build,
    build_null,
    frame_reply,
    make_linear_onnx,
    read_exact,
    running_agent,
    start,
    tensor,
    wait_for,
)

from edgefleet.client import AgentClient
from edgefleet.core.errors import InvalidArgument, NotFound
from edgefleet.protocol.agent.framing import MAGIC, fast_path_for
from edgefleet.protocol.agent.proto import agent_pb2, extensions_pb2

FRAME = struct.Struct("<I")


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory, trust: Path, keys: Path) -> Iterator[AgentProcess]:
    workdir = tmp_path_factory.mktemp("fast-path")
    with running_agent(workdir, trust, agent={"fast_path_max_frame_bytes": 1 << 20}) as proc:
        stub = proc.stub()
        linear = build(make_linear_onnx(workdir / "m.onnx"), keys, workdir / "pkgs", name="linear")
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(linear), name="linear"))
        yield proc


def connect(proc: AgentProcess, greeting: bytes = MAGIC) -> socket.socket:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(30)
    conn.connect(str(fast_path_for(proc.socket)))
    conn.sendall(greeting)
    return conn


def closed(conn: socket.socket) -> bool:
    try:
        return conn.recv(1) == b""
    except ConnectionResetError:
        return True


def test_fast_path_answers_like_grpc_inline_and_shared_memory(agent: AgentProcess) -> None:
    meta = agent.ext().GetServerMetadata(extensions_pb2.ServerMetadataRequest())
    assert "fast-predict" in meta.extensions
    path = fast_path_for(agent.socket)
    assert stat.S_ISSOCK(path.lstat().st_mode) and stat.S_IMODE(path.lstat().st_mode) == 0o660
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    with (
        AgentClient(agent.address, timeout=30, fast_path=False) as via_grpc,
        AgentClient(agent.address, timeout=30, shm_threshold=None) as inline,
        AgentClient(agent.address, timeout=30, shm_threshold=0) as shm,
    ):
        expected = via_grpc.predict("linear", {"x": x})["y"]
        np.testing.assert_array_equal(inline.predict("linear", {"x": x})["y"], expected)
        np.testing.assert_array_equal(shm.predict("linear", {"x": x})["y"], expected)
        assert (via_grpc.fast_path_calls, via_grpc.grpc_predict_calls) == (0, 1)
        assert (inline.fast_path_calls, inline.grpc_predict_calls) == (1, 0)
        assert (shm.fast_path_calls, shm.grpc_predict_calls) == (1, 0)


def test_fast_path_errors_carry_their_codes_and_keep_the_connection(agent: AgentProcess) -> None:
    with AgentClient(agent.address, timeout=30) as client:
        with pytest.raises(NotFound, match="no model is loaded under the name 'nope'"):
            client.predict("nope", {"x": np.ones((1, 4), np.float32)})
        with pytest.raises(InvalidArgument, match="does not fit"):
            client.predict("linear", {"x": np.ones((1, 5), np.float32)})
        with pytest.raises(InvalidArgument, match=r"FLOAT64.*FLOAT32"):
            client.predict("linear", {"x": np.ones((1, 4), np.float64)})
        np.testing.assert_array_equal(
            client.predict("linear", {"x": np.zeros((1, 4), np.float32)})["y"].shape, (1, 3)
        )
        assert (client.fast_path_calls, client.grpc_predict_calls) == (1, 0)
    # a bad shared memory id, sent as a raw frame: INVALID_ARGUMENT, and the connection stays usable
    conn = connect(agent)
    assert read_exact(conn, 4) == MAGIC
    bad = agent_pb2.Tensor(
        tensor_metadata=agent_pb2.TensorMetadata(name=b"x", data_type=agent_pb2.FLOAT32, shape=[1, 4]),
        shared_memory_handle=agent_pb2.SharedMemoryHandle(segment_id=2**31 - 7, offset=0, size=16),
    )
    body = agent_pb2.PredictRequest(name="linear", tensors=[bad]).SerializeToString()
    conn.sendall(FRAME.pack(len(body)) + body)
    status, message = frame_reply(conn)
    assert status == 3 and b"shared memory segment" in message  # INVALID_ARGUMENT
    good = agent_pb2.PredictRequest(name="linear", tensors=[tensor("x", np.ones((1, 4), np.float32))])
    body = good.SerializeToString()
    conn.sendall(FRAME.pack(len(body)) + body)
    status, payload = frame_reply(conn)
    assert status == 0 and len(agent_pb2.PredictResponse.FromString(payload).tensors) == 1
    conn.close()


def test_fast_path_refuses_malformed_frames(agent: AgentProcess) -> None:
    # wrong greeting: an INVALID_ARGUMENT frame, then the agent closes the connection
    conn = connect(agent, b"HTTP")
    status, message = frame_reply(conn)
    assert status == 3 and b"EFP1" in message and closed(conn)
    conn.close()
    # a body that is not a PredictRequest: INVALID_ARGUMENT; the connection stays usable
    conn = connect(agent)
    assert read_exact(conn, 4) == MAGIC
    conn.sendall(FRAME.pack(5) + b"\xff\xff\xff\xff\xff")
    status, message = frame_reply(conn)
    assert status == 3 and b"not a PredictRequest" in message
    empty_name = agent_pb2.PredictRequest(name="", tensors=[]).SerializeToString()
    conn.sendall(FRAME.pack(len(empty_name)) + empty_name)
    status, message = frame_reply(conn)
    assert status == 3 and b"model name '' is invalid" in message  # INVALID_ARGUMENT, as on gRPC
    # a frame longer than fast_path_max_frame_bytes: RESOURCE_EXHAUSTED, then closed (nothing is read)
    conn.sendall(FRAME.pack((1 << 20) + 1))
    status, message = frame_reply(conn)
    assert status == 8 and b"fast_path_max_frame_bytes (1048576)" in message and closed(conn)
    conn.close()
    # a frame cut short by the client: the agent drops that connection and keeps serving others
    conn = connect(agent)
    assert read_exact(conn, 4) == MAGIC
    conn.sendall(FRAME.pack(100) + b"abc")
    conn.close()
    with AgentClient(agent.address, timeout=30) as client:
        assert client.predict("linear", {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
        assert client.fast_path_calls == 1


def test_fast_path_calls_from_several_threads_overlap(
    agent: AgentProcess, keys: Path, tmp_path: Path
) -> None:
    """One client, three threads: each has its own connection and the three calls run at once."""
    gate = tmp_path / "gate"  # the null model holds every call until the test opens the gate
    held = build_null(keys, tmp_path / "pkgs", name="held", gate=str(gate))
    agent.stub().LoadModel(agent_pb2.LoadModelRequest(url=str(held), name="held"))
    ext = agent.ext()

    def in_flight() -> int:
        (model,) = ext.GetModelStatistics(extensions_pb2.ModelStatisticsRequest(name="held")).models
        return int(model.in_flight)

    with AgentClient(agent.address, timeout=120) as client, ThreadPoolExecutor(max_workers=3) as pool:
        futures = [pool.submit(client.predict, "held", {"x": np.ones((1, 4), np.float32)}) for _ in range(3)]
        wait_for(lambda: in_flight() == 3, "three calls in flight at once")  # three connections
        gate.touch()
        results = [f.result(timeout=120) for f in futures]
        assert len(results) == 3 and client.fast_path_calls == 3
    agent.stub().UnLoadModel(agent_pb2.UnLoadModelRequest(name="held"))


def test_without_fast_path_the_client_uses_grpc(tmp_path: Path, trust: Path, keys: Path) -> None:
    pkg = build(make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="linear")
    with running_agent(tmp_path, trust, agent={"fast_path": False}) as proc:
        assert not fast_path_for(proc.socket).exists()
        meta = proc.ext().GetServerMetadata(extensions_pb2.ServerMetadataRequest())
        assert "fast-predict" not in meta.extensions
        with AgentClient(proc.address, timeout=30) as client:
            client.load(str(pkg), "m")
            assert client.predict("m", {"x": np.ones((2, 4), np.float32)})["y"].shape == (2, 3)
            assert (client.fast_path_calls, client.grpc_predict_calls) == (0, 1)


def test_agent_stops_cleanly_with_fast_path_clients_connected(
    tmp_path: Path, trust: Path, keys: Path
) -> None:
    pkg = build(make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="linear")
    proc = start(tmp_path, trust)
    fast = fast_path_for(proc.socket)
    client = AgentClient(proc.address, timeout=30)
    try:
        client.load(str(pkg), "m")
        assert client.predict("m", {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
        assert client.fast_path_calls == 1 and fast.exists()
        assert proc.stop() == 0  # SIGTERM with the client's connection still open
        assert not fast.exists() and not proc.socket.exists()
    finally:
        client.close()
        if proc.proc.poll() is None:
            proc.kill()


def test_a_threads_connection_closes_when_the_thread_ends(agent: AgentProcess) -> None:
    with AgentClient(agent.address, timeout=30) as client:
        for _ in range(5):  # five short-lived threads, one call each
            worker = threading.Thread(
                target=lambda: client.predict("linear", {"x": np.ones((1, 4), np.float32)})
            )
            worker.start()
            worker.join()
            del worker
        gc.collect()
        assert client.fast_path_calls == 5
        assert client.fast_path_connections == 0


def test_beyond_the_connection_limit_the_client_uses_grpc(agent: AgentProcess) -> None:
    held = []
    try:
        for _ in range(80):  # the limit is 64 (a just-closed connection of another test may still count)
            conn = connect(agent)
            status_or_greeting = read_exact(conn, 4)
            if status_or_greeting != MAGIC:
                break
            held.append(conn)
        else:
            raise AssertionError("the agent accepted 80 fast-path connections (limit 64)")
        (length,) = FRAME.unpack(status_or_greeting)  # an error frame instead of the greeting, then closed
        body = read_exact(conn, length)
        assert body[0] == 8 and b"64 connections" in body and closed(conn)
        conn.close()
        assert len(held) <= 64
        with AgentClient(agent.address, timeout=30) as client:
            assert client.predict("linear", {"x": np.ones((1, 4), np.float32)})["y"].shape == (1, 3)
            assert (client.fast_path_calls, client.grpc_predict_calls) == (0, 1)
    finally:
        for conn in held:
            conn.close()
        deadline = time.monotonic() + 60  # until the agent has let go of them (for the other tests)
        while True:
            probe = connect(agent)
            greeted = read_exact(probe, 4) == MAGIC
            probe.close()
            if greeted or time.monotonic() > deadline:
                break
            time.sleep(0.05)
