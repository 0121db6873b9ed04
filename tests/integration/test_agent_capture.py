"""CaptureData / GetCaptureDataStatus on a real agent: records on disk, error codes, durability."""

from __future__ import annotations

import base64
import json
import shutil
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from support import AgentProcess, build, make_linear_onnx, output_array, start, tensor, wait_for

from edgefleet.protocol.agent.proto import agent_pb2


def wait_status(stub: object, capture_id: str, want: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        status = stub.GetCaptureDataStatus(
            agent_pb2.GetCaptureDataStatusRequest(capture_id=capture_id)
        ).status
        if status == want:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"capture {capture_id} stayed {agent_pb2.CaptureDataStatus.Name(status)}")
        time.sleep(0.02)


def capture_request(
    capture_id: str, model: str = "cap", *, seconds: int | None = None
) -> agent_pb2.CaptureDataRequest:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    return agent_pb2.CaptureDataRequest(
        model_name=model,
        capture_id=capture_id,
        inference_timestamp=agent_pb2.Timestamp(seconds=int(time.time()) if seconds is None else seconds),
        input_tensors=[tensor("x", x)],
        output_tensors=[tensor("y", x[:, :3] * 2)],
        inputs=[agent_pb2.AuxilaryData(name="meta", encoding=agent_pb2.JSON, byte_data=b'{"camera": 3}')],
        outputs=[agent_pb2.AuxilaryData(name="big", encoding=agent_pb2.NONE, byte_data=b"\x01" * 5000)],
    )


def records(capture_dir: Path) -> list[dict[str, object]]:
    out = []
    for path in sorted(capture_dir.rglob("*.jsonl")):
        out.extend(json.loads(line) for line in path.read_text().splitlines() if line)
    return out


@pytest.fixture
def package(tmp_path: Path, keys: Path) -> Path:
    return build(
        make_linear_onnx(tmp_path / "m.onnx"), keys, tmp_path / "pkgs", name="cap-model", version="3.2"
    )


@pytest.fixture
def agent(tmp_path: Path, trust: Path, package: Path) -> Iterator[AgentProcess]:
    proc = start(tmp_path, trust, capture={"folder_prefix": "pre", "buffer_size": 4, "batch_size": 2})
    proc.stub().LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
    yield proc
    if proc.proc.poll() is None:
        proc.stop()


def test_capture_is_written_in_edge_manager_format(agent: AgentProcess) -> None:
    stub = agent.stub()
    capture_id = str(uuid.uuid4())
    stub.CaptureData(capture_request(capture_id))
    wait_status(stub, capture_id, agent_pb2.SUCCESS)
    files = list(agent.capture_dir.rglob("*.jsonl"))
    assert len(files) == 1
    parts = files[0].relative_to(agent.capture_dir).parts
    assert parts[:3] == ("pre", "test-fleet", "cap-model")  # the package's model name, not the alias
    assert len(parts) == 8 and len(parts[-1]) == len("0" * 32 + ".jsonl")
    (record,) = records(agent.capture_dir)
    meta = record["eventMetadata"]
    assert meta["eventId"] == capture_id
    assert (meta["deviceId"], meta["deviceFleetName"]) == ("test-device", "test-fleet")
    assert (meta["modelName"], meta["modelVersion"]) == ("cap-model", "3.2")
    (entry,) = record["deviceFleetInputs"]
    assert entry["observedContentType"] == "Tensor[FLOAT32; 2, 4]"
    assert entry["mode"] == "Input"
    data = np.frombuffer(base64.b64decode(entry["data"]), np.float32).reshape(2, 4)
    np.testing.assert_array_equal(data, np.arange(8, dtype=np.float32).reshape(2, 4))
    (aux,) = record["deviceFleetAuxiliaryInputs"]
    assert (aux["encoding"], base64.b64decode(aux["data"])) == ("JSON", b'{"camera": 3}')
    (big,) = record["deviceFleetAuxiliaryOutputs"]
    assert "data" not in big and "raw-data" in big["data-ref"]
    assert (
        agent_pb2.CaptureDataStatus.Name(
            stub.GetCaptureDataStatus(
                agent_pb2.GetCaptureDataStatusRequest(capture_id=str(uuid.uuid4()))
            ).status
        )
        == "NOT_FOUND"
    )


def test_capture_error_codes(agent: AgentProcess) -> None:
    stub = agent.stub()

    def code(request: agent_pb2.CaptureDataRequest) -> grpc.StatusCode:
        with pytest.raises(grpc.RpcError, match=r".") as info:
            stub.CaptureData(request)
        return info.value.code()

    first = str(uuid.uuid4())
    stub.CaptureData(capture_request(first))
    assert code(capture_request(first)) is grpc.StatusCode.ALREADY_EXISTS
    assert code(capture_request("not-a-uuid")) is grpc.StatusCode.INVALID_ARGUMENT
    assert (
        code(capture_request(str(uuid.uuid4()), seconds=int(time.time()) + 3600))
        is grpc.StatusCode.OUT_OF_RANGE
    )
    assert code(capture_request(str(uuid.uuid4()), model="ghost")) is grpc.StatusCode.NOT_FOUND
    wait_status(stub, first, agent_pb2.SUCCESS)
    assert len(records(agent.capture_dir)) == 1  # refused captures left nothing behind


def test_full_buffer_refuses_and_loses_nothing(tmp_path: Path, trust: Path, package: Path) -> None:
    blocker = tmp_path / "captures"
    blocker.write_text("a file where the capture directory should be: writes fail until it is removed")
    proc = start(tmp_path, trust, capture={"buffer_size": 3, "batch_size": 1})
    try:
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        ids = [str(uuid.uuid4()) for _ in range(3)]
        for capture_id in ids:
            stub.CaptureData(capture_request(capture_id))
        with pytest.raises(grpc.RpcError, match=r".") as info:
            stub.CaptureData(capture_request(str(uuid.uuid4())))
        assert info.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED
        for capture_id in ids:
            status = stub.GetCaptureDataStatus(
                agent_pb2.GetCaptureDataStatusRequest(capture_id=capture_id)
            ).status
            assert status == agent_pb2.IN_PROGRESS
        blocker.unlink()  # the destination comes back: everything acknowledged gets written
        for capture_id in ids:
            wait_status(stub, capture_id, agent_pb2.SUCCESS)
        assert sorted(r["eventMetadata"]["eventId"] for r in records(proc.capture_dir)) == sorted(ids)
    finally:
        proc.stop()


def test_acknowledged_captures_survive_sigkill(tmp_path: Path, trust: Path, package: Path) -> None:
    proc = start(tmp_path, trust, capture={"push_period_seconds": 3600, "batch_size": 10, "buffer_size": 30})
    stub = proc.stub()
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
    ids = [str(uuid.uuid4()) for _ in range(7)]
    for capture_id in ids:
        stub.CaptureData(capture_request(capture_id))
    proc.kill()  # SIGKILL: nothing was written to the destination yet
    assert records(proc.capture_dir) == []
    shutil.rmtree(proc.socket.parent, ignore_errors=True)

    again = start(tmp_path, trust, capture={"push_period_seconds": 0.2, "batch_size": 10, "buffer_size": 30})
    try:
        stub = again.stub()
        for capture_id in ids:
            wait_status(stub, capture_id, agent_pb2.SUCCESS)
        assert sorted(r["eventMetadata"]["eventId"] for r in records(again.capture_dir)) == sorted(ids)
    finally:
        again.stop()


def test_auto_capture_policy_captures_predict_traffic(tmp_path: Path, trust: Path, package: Path) -> None:
    """A per-model policy in the agent's config captures every 2nd Predict without the application
    calling CaptureData: the records hold the call's input and the model's output."""
    proc = start(tmp_path, trust, capture={"batch_size": 1, "auto": {"cap-model": {"every_n": 2}}})
    try:
        stub = proc.stub()
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(package), name="cap"))
        sent = [np.full((1, 4), i, dtype=np.float32) for i in range(6)]
        answers = [stub.Predict(agent_pb2.PredictRequest(name="cap", tensors=[tensor("x", x)])) for x in sent]
        wait_for(lambda: len(records(proc.capture_dir)) >= 3, "three auto captures")
    finally:
        proc.stop()
    got = records(proc.capture_dir)
    assert len(got) == 3  # calls 2, 4 and 6
    by_input = {}
    for record in got:
        assert record["eventMetadata"]["modelName"] == "cap-model"
        (entry,) = record["deviceFleetInputs"]
        x = np.frombuffer(base64.b64decode(entry["data"]), np.float32)
        (out,) = record["deviceFleetOutputs"]
        by_input[float(x[0])] = np.frombuffer(base64.b64decode(out["data"]), np.float32)
    assert sorted(by_input) == [1.0, 3.0, 5.0]
    for value, y in by_input.items():
        np.testing.assert_array_equal(y, output_array(answers[int(value)].tensors[0]).ravel())
