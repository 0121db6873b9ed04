"""The seven Edge Manager RPCs on a real agent process, through raw gRPC stubs (as vendor clients)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from support import (
    AgentProcess,
    build,
    build_null,
    make_linear_onnx,
    output_array,
    running_agent,
    tensor,
    unpack,
)

from edgefleet.protocol.agent.proto import agent_pb2


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("rpcs")


@pytest.fixture(scope="module")
def linear_pkg(workdir: Path, keys: Path) -> Path:
    model = make_linear_onnx(workdir / "linear.onnx")
    return build(model, keys, workdir / "pkgs", name="linear", version="1.0")


@pytest.fixture(scope="module")
def agent(workdir: Path, trust: Path) -> Iterator[AgentProcess]:
    with running_agent(workdir, trust, agent={"memory_budget_mb": 512}) as proc:
        yield proc


@pytest.fixture
def stub(agent: AgentProcess) -> Iterator[object]:
    stub = agent.stub()
    yield stub
    for model in stub.ListModels(agent_pb2.ListModelsRequest()).models:
        stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name=model.name))


def code_of(call: object, *args: object) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError, match=r".") as info:
        call(*args)  # type: ignore[operator]
    return info.value.code(), info.value.details()


def test_load_list_describe_predict_unload(stub: object, linear_pkg: Path, workdir: Path) -> None:
    directory = unpack(linear_pkg, workdir / "unpacked-linear")
    loaded = stub.LoadModel(agent_pb2.LoadModelRequest(url=str(directory), name="lin"))
    assert loaded.model.name == "lin"
    assert [m.name for m in loaded.model.input_tensor_metadatas] == [b"x"]
    assert list(loaded.model.input_tensor_metadatas[0].shape) == [-1, 4]
    assert loaded.model.output_tensor_metadatas[0].data_type == agent_pb2.FLOAT32

    assert [m.name for m in stub.ListModels(agent_pb2.ListModelsRequest()).models] == ["lin"]
    described = stub.DescribeModel(agent_pb2.DescribeModelRequest(name="lin")).model
    assert described.url == str(directory)

    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    response = stub.Predict(agent_pb2.PredictRequest(name="lin", tensors=[tensor("x", x)]))
    expected = ort.InferenceSession(str(directory / "linear.onnx")).run(None, {"x": x})[0]
    (out,) = response.tensors
    assert out.tensor_metadata.name == b"y"
    assert list(out.tensor_metadata.shape) == [5, 3]
    np.testing.assert_allclose(output_array(out), expected, rtol=1e-6)

    stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name="lin"))
    assert list(stub.ListModels(agent_pb2.ListModelsRequest()).models) == []
    # the alias can be reused after unload; a .tar.gz and a file:// URL are accepted too
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(linear_pkg), name="lin"))
    stub.LoadModel(agent_pb2.LoadModelRequest(url=f"file://{directory}", name="lin-2"))
    assert sorted(m.name for m in stub.ListModels(agent_pb2.ListModelsRequest()).models) == ["lin", "lin-2"]


def test_predict_without_metadata_uses_position(stub: object, workdir: Path, keys: Path) -> None:
    model = make_linear_onnx(workdir / "static.onnx", dynamic_batch=False)
    pkg = build(model, keys, workdir / "pkgs-static", name="static", version="1")
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(pkg), name="static"))
    x = np.ones((1, 4), dtype=np.float32)
    response = stub.Predict(
        agent_pb2.PredictRequest(name="static", tensors=[agent_pb2.Tensor(byte_data=x.tobytes())])
    )
    assert list(response.tensors[0].tensor_metadata.shape) == [1, 3]


@pytest.mark.parametrize("alias", ["", "-lead", "trail-", "has_underscore", "a" * 64, "sp ace"])
def test_load_bad_alias(stub: object, linear_pkg: Path, alias: str) -> None:
    code, details = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(linear_pkg), name=alias))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert "model name" in details


def test_load_errors(stub: object, linear_pkg: Path, workdir: Path) -> None:
    code, details = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(workdir / "nope"), name="m"))
    assert code is grpc.StatusCode.NOT_FOUND, details
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(linear_pkg), name="m"))
    code, details = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(linear_pkg), name="m"))
    assert code is grpc.StatusCode.ALREADY_EXISTS
    assert "'m'" in details
    code, _ = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url="http://example.invalid/pkg", name="m2"))
    assert code is grpc.StatusCode.INVALID_ARGUMENT


def test_not_found_codes(stub: object) -> None:
    for call, request in (
        (stub.UnLoadModel, agent_pb2.UnLoadModelRequest(name="ghost")),
        (stub.DescribeModel, agent_pb2.DescribeModelRequest(name="ghost")),
        (stub.Predict, agent_pb2.PredictRequest(name="ghost")),
    ):
        code, details = code_of(call, request)
        assert code is grpc.StatusCode.NOT_FOUND
        assert "ghost" in details


def test_memory_budget(stub: object, workdir: Path, keys: Path) -> None:
    big = build_null(keys, workdir / "pkgs-big", name="big", memory_bytes=600 * 1024 * 1024)
    code, details = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(big), name="big"))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "budget" in details
    assert list(stub.ListModels(agent_pb2.ListModelsRequest()).models) == []
    # two models of 300 MiB: the first fits, the second does not, and fits again after unloading the first
    half = build_null(keys, workdir / "pkgs-half", name="half", memory_bytes=300 * 1024 * 1024)
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(half), name="h1"))
    code, _ = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(half), name="h2"))
    assert code is grpc.StatusCode.RESOURCE_EXHAUSTED
    stub.UnLoadModel(agent_pb2.UnLoadModelRequest(name="h1"))
    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(half), name="h2"))


def test_wrong_architecture_and_runtime(stub: object, workdir: Path, keys: Path) -> None:
    from edgefleet.core.manifest import Target

    other = "aarch64" if __import__("platform").machine() == "x86_64" else "x86_64"
    model = make_linear_onnx(workdir / "arch.onnx")
    pkg = build(model, keys, workdir / "pkgs-arch", name="arch", version="1", target=Target(arch=other))
    code, details = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(pkg), name="arch"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert other in details
    assert list(stub.ListModels(agent_pb2.ListModelsRequest()).models) == []


def test_tampered_package_is_refused_and_nothing_stays_loaded(
    stub: object, linear_pkg: Path, workdir: Path
) -> None:
    directory = unpack(linear_pkg, workdir / "tamper")
    model = directory / "linear.onnx"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))
    code, details = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(directory), name="tampered"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "linear.onnx" in details
    (directory / "extra.bin").write_bytes(b"x")
    code, _ = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(directory), name="tampered"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert list(stub.ListModels(agent_pb2.ListModelsRequest()).models) == []
    shutil.rmtree(directory)


def test_untrusted_signer_is_refused(stub: object, workdir: Path) -> None:
    from edgefleet.core.signing import init_keys

    other_keys = workdir / "other-keys"
    init_keys(other_keys)
    pkg = build(
        make_linear_onnx(workdir / "o.onnx"), other_keys, workdir / "pkgs-other", name="other", version="1"
    )
    code, details = code_of(stub.LoadModel, agent_pb2.LoadModelRequest(url=str(pkg), name="other"))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    assert "trust" in details.lower() or "root" in details.lower()


class TestBadTensors:
    @pytest.fixture(autouse=True)
    def _loaded(self, stub: object, linear_pkg: Path) -> None:
        stub.LoadModel(agent_pb2.LoadModelRequest(url=str(linear_pkg), name="lin"))

    def predict(self, stub: object, *tensors: agent_pb2.Tensor) -> tuple[grpc.StatusCode, str]:
        return code_of(stub.Predict, agent_pb2.PredictRequest(name="lin", tensors=list(tensors)))

    def test_count(self, stub: object) -> None:
        x = np.ones((1, 4), np.float32)
        code, details = self.predict(stub, tensor("x", x), tensor("x", x))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "takes 1 input" in details
        code, _ = self.predict(stub)
        assert code is grpc.StatusCode.INVALID_ARGUMENT

    def test_dtype(self, stub: object) -> None:
        code, details = self.predict(stub, tensor("x", np.ones((1, 4), np.float64)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "FLOAT64" in details
        bad = tensor("x", np.ones((1, 4), np.float32))
        bad.tensor_metadata.data_type = 42
        code, details = self.predict(stub, bad)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "data_type" in details

    def test_shape(self, stub: object) -> None:
        code, details = self.predict(stub, tensor("x", np.ones((1, 5), np.float32)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "shape" in details
        code, _ = self.predict(stub, tensor("x", np.ones((4,), np.float32)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT

    def test_byte_length(self, stub: object) -> None:
        t = tensor("x", np.ones((2, 4), np.float32))
        t.byte_data = t.byte_data[:-1]
        code, details = self.predict(stub, t)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "bytes" in details

    def test_unknown_name_and_no_data(self, stub: object) -> None:
        code, details = self.predict(stub, tensor("nope", np.ones((1, 4), np.float32)))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "nope" in details
        empty = agent_pb2.Tensor(
            tensor_metadata=agent_pb2.TensorMetadata(name=b"x", data_type=5, shape=[1, 4])
        )
        code, details = self.predict(stub, empty)
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        assert "no data" in details

    def test_bad_shm_id_and_offsets(self, stub: object) -> None:
        import sysv_ipc

        def shm(segment_id: int, offset: int = 0, size: int = 0) -> agent_pb2.Tensor:
            return agent_pb2.Tensor(
                tensor_metadata=agent_pb2.TensorMetadata(name=b"x", data_type=5, shape=[1, 4]),
                shared_memory_handle=agent_pb2.SharedMemoryHandle(
                    segment_id=segment_id, offset=offset, size=size
                ),
            )

        code, _ = self.predict(stub, shm(2**63 + 12345))
        assert code is grpc.StatusCode.INVALID_ARGUMENT
        segment = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=4096)
        try:
            for offset, size in ((4096, 16), (4090, 16), (0, 8192), (2**64 - 1, 16)):
                code, details = self.predict(stub, shm(segment.id, offset, size))
                assert code is grpc.StatusCode.INVALID_ARGUMENT, (offset, size, details)
            code, _ = self.predict(stub, shm(segment.id, 0, 15))  # wrong byte length for [1, 4] f32
            assert code is grpc.StatusCode.INVALID_ARGUMENT
            # and a valid read through the same segment still works
            segment.write(np.arange(4, dtype=np.float32).tobytes())
            response = stub.Predict(agent_pb2.PredictRequest(name="lin", tensors=[shm(segment.id, 0, 16)]))
            assert output_array(response.tensors[0]).shape == (1, 3)
        finally:
            segment.detach()
            segment.remove()


def test_predict_through_vendor_style_sysv_segment(stub: object, linear_pkg: Path) -> None:
    """Vendor clients: shmget, write, make the segment read-only, send its id with size 0."""
    import sysv_ipc

    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(linear_pkg), name="lin"))
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    segment = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=x.nbytes + 100)
    try:
        segment.write(x.tobytes())
        segment.mode = 0o400
        request = agent_pb2.PredictRequest(
            name="lin",
            tensors=[
                agent_pb2.Tensor(
                    tensor_metadata=agent_pb2.TensorMetadata(
                        name=b"x", data_type=agent_pb2.FLOAT32, shape=[3, 4]
                    ),
                    shared_memory_handle=agent_pb2.SharedMemoryHandle(
                        segment_id=segment.id, offset=0, size=0
                    ),
                )
            ],
        )
        shm_out = output_array(stub.Predict(request).tensors[0])
        inline_out = output_array(
            stub.Predict(agent_pb2.PredictRequest(name="lin", tensors=[tensor("x", x)])).tensors[0]
        )
        np.testing.assert_array_equal(shm_out, inline_out)
    finally:
        segment.detach()
        segment.remove()


def test_agent_lets_go_of_segments_their_owner_removed(stub: object, linear_pkg: Path) -> None:
    """A client that creates a segment per frame must not leave dead frames alive in the agent."""
    import time

    import sysv_ipc

    stub.LoadModel(agent_pb2.LoadModelRequest(url=str(linear_pkg), name="lin"))
    ids = []
    for _ in range(5):
        segment = sysv_ipc.SharedMemory(None, sysv_ipc.IPC_CREX, mode=0o600, size=1 << 20)
        segment.write(np.ones((1, 4), np.float32).tobytes())
        request = agent_pb2.PredictRequest(
            name="lin",
            tensors=[
                agent_pb2.Tensor(
                    tensor_metadata=agent_pb2.TensorMetadata(
                        name=b"x", data_type=agent_pb2.FLOAT32, shape=[1, 4]
                    ),
                    shared_memory_handle=agent_pb2.SharedMemoryHandle(segment_id=segment.id, size=16),
                )
            ],
        )
        stub.Predict(request)
        ids.append(segment.id)
        segment.detach()
        segment.remove()

    def alive() -> set[int]:
        lines = Path("/proc/sysvipc/shm").read_text().splitlines()[1:]
        return {int(line.split()[1]) for line in lines} & set(ids)

    deadline = time.monotonic() + 30
    while alive() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive() == set()
