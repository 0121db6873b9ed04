"""The wire tensor codec (property tests) and :class:`AgentClient` against a real gRPC server on a Unix socket.

The server here is a small echo implementation of the wire contract written for these tests (the real
agent's end-to-end tests live in tests/integration); it decodes tensors with the same codec and reads
shared memory with the agent's :class:`SharedMemoryReader`, so what the client puts on the wire is
checked by real decoding.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from concurrent import futures
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import sysv_ipc
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from edgefleet.agent.shm import SharedMemoryReader
from edgefleet.client import AgentClient, AuxData, ModelInfo, grpc_target
from edgefleet.core.errors import (
    AlreadyExists,
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ResourceExhausted,
    Unavailable,
    grpc_status_number,
)
from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.protocol.agent.codec import (
    GRPC_CHANNEL_OPTIONS,
    MAX_MESSAGE_BYTES,
    array_from_bytes,
    array_from_proto,
    data_type,
    decode_name,
    metadata_from_spec,
    spec_from_metadata,
    tensor_metadata,
    tensor_to_proto,
    wire_shape,
)
from edgefleet.protocol.agent.proto import agent_pb2, agent_pb2_grpc, extensions_pb2, extensions_pb2_grpc

DTYPES = [t.numpy for t in DataType]


def _wire_dtypes() -> st.SearchStrategy[np.dtype[Any]]:
    """Every wire dtype, in both byte orders (big-endian inputs are converted on the way out)."""
    return st.sampled_from(DTYPES + [d.newbyteorder(">") for d in DTYPES if d.itemsize > 1])


# -- codec: property tests ----------------------------------------------------------------------------
@settings(deadline=None, max_examples=150)
@given(
    name=st.text(min_size=0, max_size=20),
    array=_wire_dtypes().flatmap(
        lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5))
    ),
)
def test_tensor_round_trip_through_the_wire(name: str, array: np.ndarray) -> None:
    wire = agent_pb2.Tensor.FromString(tensor_to_proto(name, array).SerializeToString())
    got_name, got = array_from_proto(wire)
    assert got_name == name
    assert got.dtype == DataType.from_numpy(array.dtype).numpy  # little-endian on the wire
    assert got.shape == array.shape
    np.testing.assert_array_equal(got, array)  # NaNs compare equal here
    assert wire.byte_data == np.ascontiguousarray(array, dtype=got.dtype).tobytes()


@settings(deadline=None, max_examples=50)
@given(array=_wire_dtypes().flatmap(lambda dt: hnp.arrays(dt, hnp.array_shapes(min_dims=2, max_dims=3))))
def test_non_contiguous_arrays_are_sent_in_c_order(array: np.ndarray) -> None:
    view = array[..., ::-1].T
    _, got = array_from_proto(tensor_to_proto("t", view))
    np.testing.assert_array_equal(got, view)


@settings(deadline=None, max_examples=100)
@given(
    name=st.text(max_size=30),
    dtype=st.sampled_from(list(DataType)),
    shape=st.lists(st.integers(min_value=-1, max_value=2**31 - 1), max_size=6),
)
def test_metadata_round_trip(name: str, dtype: DataType, shape: list[int]) -> None:
    spec = TensorSpec(name=name, dtype=dtype, shape=tuple(shape))
    wire = agent_pb2.TensorMetadata.FromString(metadata_from_spec(spec).SerializeToString())
    assert spec_from_metadata(wire) == spec


@settings(deadline=None, max_examples=100)
@given(
    dtype=st.sampled_from(list(DataType)),
    shape=st.lists(st.integers(min_value=0, max_value=6), max_size=4),
    delta=st.integers(min_value=-9, max_value=9).filter(lambda d: d != 0),
)
def test_wrong_byte_lengths_are_refused(dtype: DataType, shape: list[int], delta: int) -> None:
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if need + delta < 0:
        return
    with pytest.raises(
        InvalidArgument, match=rf"{need + delta} bytes of data, but {dtype.name} .* needs {need}"
    ):
        array_from_bytes(b"\0" * (need + delta), dtype, shape)


# -- codec: examples ---------------------------------------------------------------------------------
class TestCodec:
    def test_array_from_bytes_is_zero_copy_and_read_only(self) -> None:
        buf = bytearray(np.arange(6, dtype="<i2").tobytes())
        arr = array_from_bytes(memoryview(buf), DataType.INT16, [2, 3])
        assert arr.tolist() == [[0, 1, 2], [3, 4, 5]]
        assert np.shares_memory(arr, np.frombuffer(buf, dtype=np.uint8))
        assert not arr.flags.writeable or arr.base is not None

    def test_unaligned_data_is_copied_aligned(self) -> None:
        raw = b"\0" + np.arange(4, dtype="<f8").tobytes()
        arr = array_from_bytes(memoryview(raw)[1:], DataType.FLOAT64, [4])
        assert arr.flags.aligned
        assert not arr.flags.writeable
        assert arr.tolist() == [0.0, 1.0, 2.0, 3.0]

    def test_scalar_and_empty_tensors(self) -> None:
        assert array_from_bytes(np.float32(2.5).tobytes(), DataType.FLOAT32, []).item() == 2.5
        assert array_from_bytes(b"", DataType.INT64, [0, 3]).shape == (0, 3)

    def test_negative_dimension(self) -> None:
        with pytest.raises(InvalidArgument, match=r"input 'x': shape \[1, -1\] has a negative dimension"):
            array_from_bytes(b"", DataType.UINT8, [1, -1], "input 'x'")

    def test_dtypes_the_wire_cannot_carry(self) -> None:
        with pytest.raises(InvalidArgument, match=r"tensor 'b': numpy dtype bool has no wire data type"):
            tensor_to_proto("b", np.array([True]))
        with pytest.raises(InvalidArgument, match="numpy dtype complex128 has no wire data type"):
            tensor_to_proto("c", np.array([1j]))
        with pytest.raises(InvalidArgument, match="numpy dtype uint16 has no wire data type"):
            tensor_to_proto("u", np.array([1], dtype=np.uint16))

    def test_unknown_data_type_number(self) -> None:
        with pytest.raises(InvalidArgument, match=r"output: unknown data_type 7 \(known: UINT8=0, "):
            data_type(7, "output")
        md = agent_pb2.TensorMetadata(name=b"x", data_type=9, shape=[1])  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="tensor 'x': unknown data_type 9"):
            spec_from_metadata(md)

    def test_names(self) -> None:
        assert decode_name("x") == "x"
        assert decode_name("é".encode()) == "é"
        assert tensor_metadata("é", DataType.UINT8, [1]).name == "é".encode()
        with pytest.raises(InvalidArgument, match=r"tensor name b'\\xff' is not valid UTF-8"):
            decode_name(b"\xff")

    def test_shape_must_fit_int32(self) -> None:
        with pytest.raises(
            InvalidArgument, match=r"dimension 2147483648 of shape \[1, 2147483648\] does not fit"
        ):
            wire_shape([1, 2**31])

    def test_output_without_inline_data(self) -> None:
        t = agent_pb2.Tensor(
            tensor_metadata=tensor_metadata("y", DataType.UINT8, [1]),
            shared_memory_handle=agent_pb2.SharedMemoryHandle(segment_id=1),
        )
        with pytest.raises(InvalidArgument, match="output 'y' carries no inline byte_data"):
            array_from_proto(t, "output")
        with pytest.raises(InvalidArgument, match="output has no tensor_metadata"):
            array_from_proto(agent_pb2.Tensor(byte_data=b"x"), "output")

    def test_message_limits(self) -> None:
        assert dict(GRPC_CHANNEL_OPTIONS) == {
            "grpc.max_send_message_length": MAX_MESSAGE_BYTES,
            "grpc.max_receive_message_length": MAX_MESSAGE_BYTES,
        }
        assert 4 << 20 < MAX_MESSAGE_BYTES < 2**31

    @pytest.mark.parametrize(
        ("address", "target"),
        [
            ("unix:///run/a.sock", "unix:///run/a.sock"),
            ("unix:rel.sock", "unix:rel.sock"),
            ("/run/a.sock", "unix:/run/a.sock"),
            ("dns:///localhost:50051", "dns:///localhost:50051"),
        ],
    )
    def test_grpc_target(self, address: str, target: str) -> None:
        assert grpc_target(address) == target

    def test_empty_address(self) -> None:
        with pytest.raises(InvalidArgument, match="agent address is empty"):
            AgentClient("")


# -- a small echo agent on a real socket ----------------------------------------------------------------
class EchoAgent(agent_pb2_grpc.AgentServicer, extensions_pb2_grpc.AgentExtensionsServicer):
    """Just enough of the contract to exercise the client: Predict echoes ``2 * input`` per tensor."""

    def __init__(self) -> None:
        self.shm = SharedMemoryReader()
        self.models: dict[str, str] = {}
        self.predicts: list[Any] = []
        self.captures: list[Any] = []
        self.lock = threading.Lock()
        self.barrier: threading.Barrier | None = None
        self.seen_segments: list[set[int]] = []

    def _data(self, holder: Any) -> memoryview | bytes:
        if holder.WhichOneof("data") == "byte_data":
            return holder.byte_data  # type: ignore[no-any-return]
        h = holder.shared_memory_handle
        return self.shm.read_sysv(h.segment_id, h.offset, h.size)

    def _fail(self, context: Any, exc: EdgefleetError) -> Any:
        status = {s.value[0]: s for s in grpc.StatusCode}[grpc_status_number(exc.code)]
        context.abort(status, exc.message)

    def _model(self, name: str) -> agent_pb2.Model:
        spec = TensorSpec("x", DataType.FLOAT32, (1, -1))
        return agent_pb2.Model(
            url=self.models[name],
            name=name,
            input_tensor_metadatas=[metadata_from_spec(spec)],
            output_tensor_metadatas=[metadata_from_spec(TensorSpec("y", DataType.FLOAT32, (1, -1)))],
        )

    def LoadModel(self, request: Any, context: Any) -> Any:
        if request.name in self.models:
            return self._fail(context, AlreadyExists(f"alias {request.name!r} is already loaded"))
        self.models[request.name] = request.url
        return agent_pb2.LoadModelResponse(model=self._model(request.name))

    def UnLoadModel(self, request: Any, context: Any) -> Any:
        if request.name.startswith("code-"):  # lets a test pick the status code
            number = int(request.name.removeprefix("code-"))
            status = {s.value[0]: s for s in grpc.StatusCode}[number]
            context.abort(status, f"refused with {status.name}")
        if self.models.pop(request.name, None) is None:
            return self._fail(context, NotFound(f"model {request.name!r} is not loaded"))
        return agent_pb2.UnLoadModelResponse()

    def ListModels(self, request: Any, context: Any) -> Any:
        return agent_pb2.ListModelsResponse(models=[self._model(n) for n in sorted(self.models)])

    def DescribeModel(self, request: Any, context: Any) -> Any:
        if request.name not in self.models:
            return self._fail(context, NotFound(f"model {request.name!r} is not loaded"))
        return agent_pb2.DescribeModelResponse(model=self._model(request.name))

    def Predict(self, request: Any, context: Any) -> Any:
        try:
            if request.name not in self.models:
                raise NotFound(f"model {request.name!r} is not loaded")
            segments = {
                t.shared_memory_handle.segment_id
                for t in request.tensors
                if t.HasField("shared_memory_handle")
            }
            with self.lock:
                self.predicts.append(request)
                self.seen_segments.append(segments)
            out = []
            for t in request.tensors:
                md = t.tensor_metadata
                arr = array_from_bytes(self._data(t), data_type(md.data_type), md.shape)
                out.append(tensor_to_proto(b"out_" + md.name, arr * 2))
            if self.barrier is not None:  # hold calls so that several are in flight at once
                self.barrier.wait(timeout=30)
            return agent_pb2.PredictResponse(tensors=out)
        except EdgefleetError as exc:
            return self._fail(context, exc)

    def CaptureData(self, request: Any, context: Any) -> Any:
        if any(c.capture_id == request.capture_id for c in self.captures):
            return self._fail(context, AlreadyExists(f"capture id {request.capture_id!r} was already used"))
        copied = agent_pb2.CaptureDataRequest()
        copied.CopyFrom(request)
        for t in list(copied.input_tensors) + list(copied.output_tensors):  # copy shm before returning
            if t.HasField("shared_memory_handle"):
                t.byte_data = bytes(self._data(t))
        for a in list(copied.inputs) + list(copied.outputs):
            if a.HasField("shared_memory_handle"):
                a.byte_data = bytes(self._data(a))
        self.captures.append(copied)
        return agent_pb2.CaptureDataResponse()

    def GetCaptureDataStatus(self, request: Any, context: Any) -> Any:
        known = any(c.capture_id == request.capture_id for c in self.captures)
        return agent_pb2.GetCaptureDataStatusResponse(
            status=agent_pb2.SUCCESS if known else agent_pb2.NOT_FOUND
        )

    def GetServerMetadata(self, request: Any, context: Any) -> Any:
        return extensions_pb2.ServerMetadataResponse(
            name="echo",
            version="0",
            extensions=["health"],
            protocol="AWS.SageMaker.Edge.Agent",
            runtimes=["null"],
        )

    def GetHealth(self, request: Any, context: Any) -> Any:
        return extensions_pb2.HealthResponse(live=True, ready=True, state="SERVING", detail="echo")

    def GetModelStatistics(self, request: Any, context: Any) -> Any:
        if request.name and request.name not in self.models:
            return self._fail(context, NotFound(f"model {request.name!r} is not loaded"))
        names = [request.name] if request.name else sorted(self.models)
        return extensions_pb2.ModelStatisticsResponse(
            models=[
                extensions_pb2.ModelStatistics(
                    name=n, request_count=3, latency=extensions_pb2.LatencyStats(p50_ms=1.5), loaded_time=10.0
                )
                for n in names
            ]
        )


@pytest.fixture
def echo(tmp_path: Path) -> Iterator[tuple[EchoAgent, str]]:
    agent = EchoAgent()
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8), options=list(GRPC_CHANNEL_OPTIONS))
    agent_pb2_grpc.add_AgentServicer_to_server(agent, server)
    extensions_pb2_grpc.add_AgentExtensionsServicer_to_server(agent, server)
    address = f"unix://{tmp_path}/agent.sock"
    server.add_insecure_port(address)
    server.start()
    yield agent, address
    server.stop(grace=None)
    agent.shm.close()


@pytest.fixture
def client(echo: tuple[EchoAgent, str]) -> Iterator[AgentClient]:
    with AgentClient(echo[1], timeout=30) as c:
        yield c


class TestClientModels:
    def test_load_list_describe_unload(self, client: AgentClient) -> None:
        info = client.load("/models/digits", "digits")
        assert info == ModelInfo(
            name="digits",
            url="/models/digits",
            inputs=(TensorSpec("x", DataType.FLOAT32, (1, -1)),),
            outputs=(TensorSpec("y", DataType.FLOAT32, (1, -1)),),
        )
        client.load("/models/other", "other")
        assert [m.name for m in client.list()] == ["digits", "other"]
        assert client.describe("other").url == "/models/other"
        client.unload("other")
        assert [m.name for m in client.list()] == ["digits"]

    def test_errors_carry_class_code_and_the_agents_message(self, client: AgentClient) -> None:
        with pytest.raises(NotFound, match="model 'nope' is not loaded") as info:
            client.describe("nope")
        assert info.value.code is Code.NOT_FOUND
        assert grpc_status_number(info.value.code) == 5
        assert isinstance(info.value.__cause__, grpc.RpcError)
        client.load("/m", "m")
        with pytest.raises(AlreadyExists, match="alias 'm' is already loaded"):
            client.load("/m", "m")

    @pytest.mark.parametrize(
        ("number", "cls", "code"),
        [
            (3, InvalidArgument, Code.INVALID_ARGUMENT),
            (5, NotFound, Code.NOT_FOUND),
            (6, AlreadyExists, Code.ALREADY_EXISTS),
            (7, PermissionDenied, Code.PERMISSION_DENIED),
            (8, ResourceExhausted, Code.RESOURCE_EXHAUSTED),
            (9, FailedPrecondition, Code.FAILED_PRECONDITION),
            (11, OutOfRange, Code.OUT_OF_RANGE),
            (12, EdgefleetError, Code.UNIMPLEMENTED),
            (13, EdgefleetError, Code.INTERNAL),
            (2, EdgefleetError, Code.INTERNAL),
        ],
    )
    def test_every_status_code_maps_to_its_error(
        self, client: AgentClient, number: int, cls: type[EdgefleetError], code: Code
    ) -> None:
        with pytest.raises(cls, match="refused with") as info:
            client.unload(f"code-{number}")
        assert info.value.code is code

    def test_unreachable_agent(self, tmp_path: Path) -> None:
        with AgentClient(str(tmp_path / "missing.sock"), timeout=5) as c:
            with pytest.raises(Unavailable, match=r"missing.sock is unavailable"):
                c.list()
            with pytest.raises(Unavailable, match=r"did not become reachable within 0\.2 s"):
                c.wait_ready(0.2)

    def test_closed_client(self, echo: tuple[EchoAgent, str]) -> None:
        c = AgentClient(echo[1])
        c.close()
        c.close()
        with pytest.raises(FailedPrecondition, match="AgentClient is closed"):
            c.list()


class TestClientPredict:
    def test_small_inline_large_through_shared_memory(
        self, client: AgentClient, echo: tuple[EchoAgent, str]
    ) -> None:
        agent, _ = echo
        client.load("/m", "m")
        small = np.arange(10, dtype=np.float32).reshape(1, 10)
        large = np.random.default_rng(0).random((1, 3, 224, 224), dtype=np.float32)  # 588 KiB
        out = client.predict("m", {"a": small, "b": large})
        assert list(out) == ["out_a", "out_b"]
        np.testing.assert_array_equal(out["out_a"], small * 2)
        np.testing.assert_array_equal(out["out_b"], large * 2)
        kinds = [t.WhichOneof("data") for t in agent.predicts[-1].tensors]
        assert kinds == ["byte_data", "shared_memory_handle"]
        handle = agent.predicts[-1].tensors[1].shared_memory_handle
        assert (handle.offset, handle.size) == (0, large.nbytes)

    def test_positional_inputs_and_a_single_array(
        self, client: AgentClient, echo: tuple[EchoAgent, str]
    ) -> None:
        client.load("/m", "m")
        x = np.ones((2, 2), dtype=np.int64)
        out = client.predict("m", [x, x.astype(np.uint8)])
        assert [a.dtype for a in out.values()] == [np.dtype("<i8"), np.dtype("u1")]
        assert echo[0].predicts[-1].tensors[0].tensor_metadata.name == b""  # the agent matches by position
        assert list(out) == ["out_", "output_1"]  # the echo names both "out_"
        assert list(client.predict("m", x)) == ["out_"]

    def test_segments_are_reused_between_calls(
        self, client: AgentClient, echo: tuple[EchoAgent, str]
    ) -> None:
        client.load("/m", "m")
        big = np.zeros(100_000, dtype=np.float32)
        for i in range(3):
            out = client.predict("m", {"x": big + i})
            assert out["out_x"][0] == 2 * i
        assert len(set().union(*echo[0].seen_segments)) == 1

    def test_inline_tensors_beyond_grpcs_default_4_mib(self, echo: tuple[EchoAgent, str]) -> None:
        with AgentClient(echo[1], shm_threshold=None) as c:
            c.load("/m", "m")
            x = np.ones(5 << 18, dtype=np.float32)  # 5 MiB
            assert c.predict("m", {"x": x})["out_x"].sum() == 2 * x.size
            assert echo[0].predicts[-1].tensors[0].WhichOneof("data") == "byte_data"

    def test_agent_refusal(self, client: AgentClient) -> None:
        with pytest.raises(NotFound, match="model 'absent' is not loaded"):
            client.predict("absent", {"x": np.zeros(1, np.float32)})
        with pytest.raises(InvalidArgument, match="tensor 'x': numpy dtype bool has no wire data type"):
            client.predict("absent", {"x": np.zeros(1, bool)})

    def test_concurrent_calls_never_share_a_segment(self, echo: tuple[EchoAgent, str]) -> None:
        agent, address = echo
        threads_n = 4
        agent.barrier = threading.Barrier(threads_n)  # every call waits until 4 are in flight
        errors: list[BaseException] = []
        with AgentClient(address, timeout=60) as c:
            c.load("/m", "m")

            def work(worker: int) -> None:
                try:
                    for i in range(5):
                        x = np.full(80_000, worker * 100 + i, dtype=np.float32)
                        y = c.predict("m", {"x": x})["out_x"]
                        if not (y[0] == y[-1] == 2 * (worker * 100 + i)):
                            raise AssertionError(f"worker {worker} call {i} got another call's tensor")
                except BaseException as exc:
                    errors.append(exc)

            threads = [threading.Thread(target=work, args=(w,)) for w in range(threads_n)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(timeout=120)
        assert not errors
        assert len(agent.predicts) == 20
        # each round of 4 in-flight calls used 4 different segments
        for start in range(0, 20, 4):
            batch = agent.seen_segments[start : start + 4]
            assert len(set().union(*batch)) == 4

    def test_close_frees_the_segments(self, echo: tuple[EchoAgent, str]) -> None:
        agent, address = echo
        with AgentClient(address) as c:
            c.load("/m", "m")
            c.predict("m", {"x": np.zeros(300_000, dtype=np.float32)})
        (segment_id,) = agent.seen_segments[-1]
        agent.shm.sweep()  # the agent lets go of segments whose owners are gone
        with pytest.raises((sysv_ipc.ExistentialError, ValueError)):
            sysv_ipc.attach(segment_id, None, sysv_ipc.SHM_RDONLY)


class TestClientCapture:
    def test_capture_with_tensors_aux_and_timestamp(
        self, client: AgentClient, echo: tuple[EchoAgent, str]
    ) -> None:
        agent, _ = echo
        when = datetime(2024, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
        big_aux = b"z" * 300_000
        capture_id = client.capture(
            "m",
            inputs={"x": np.ones((1, 3), np.float32)},
            outputs=[np.zeros(400_000, np.uint8)],
            aux_inputs={"meta": AuxData(b'{"a": 1}', "JSON"), "note": "hé"},
            aux_outputs={"blob": big_aux},
            inference_time=when,
        )
        assert uuid.UUID(capture_id).version == 4
        req = agent.captures[-1]
        assert (req.model_name, req.capture_id) == ("m", capture_id)
        assert (req.inference_timestamp.seconds, req.inference_timestamp.nanos) == (1714979289, 123456000)
        assert [t.tensor_metadata.name for t in req.input_tensors] == [b"x"]
        assert [t.tensor_metadata.name for t in req.output_tensors] == [b"output_0"]
        assert array_from_proto(req.output_tensors[0])[1].shape == (400_000,)
        assert [(a.name, a.encoding, a.byte_data) for a in req.inputs] == [
            ("meta", agent_pb2.JSON, b'{"a": 1}'),
            ("note", agent_pb2.NONE, "hé".encode()),
        ]
        assert req.outputs[0].byte_data == big_aux
        assert client.capture_status(capture_id) == "SUCCESS"
        assert client.capture_status(str(uuid.uuid4())) == "NOT_FOUND"

    def test_duplicate_capture_id_and_float_time(
        self, client: AgentClient, echo: tuple[EchoAgent, str]
    ) -> None:
        cid = client.capture("m", "fixed-id", inference_time=1714979289.5)
        assert echo[0].captures[-1].inference_timestamp.nanos == 500_000_000
        with pytest.raises(AlreadyExists, match="capture id 'fixed-id' was already used"):
            client.capture("m", cid)

    def test_bad_capture_arguments(self, client: AgentClient) -> None:
        with pytest.raises(InvalidArgument, match="inference_time must be timezone-aware"):
            client.capture("m", inference_time=datetime(2024, 1, 1))
        with pytest.raises(InvalidArgument, match=r"auxiliary data 'a': unknown encoding 'XML'"):
            client.capture("m", aux_inputs={"a": AuxData(b"<a/>", "XML")})  # type: ignore[arg-type]
        with pytest.raises(InvalidArgument, match="auxiliary data 'a' must be bytes or str, got int"):
            client.capture("m", aux_inputs={"a": 5})  # type: ignore[dict-item]


class TestClientExtensions:
    def test_metadata_health_stats(self, client: AgentClient) -> None:
        meta = client.server_metadata()
        assert (meta.name, meta.extensions, meta.runtimes) == ("echo", ("health",), ("null",))
        health = client.health()
        assert (health.live, health.ready, health.state) == (True, True, "SERVING")
        client.load("/m", "m")
        (stats,) = client.model_stats("m")
        assert (stats.name, stats.request_count, stats.p50_ms, stats.last_inference_time) == (
            "m",
            3,
            1.5,
            None,
        )
        assert [s.name for s in client.model_stats()] == ["m"]
        with pytest.raises(NotFound, match="model 'x' is not loaded"):
            client.model_stats("x")
