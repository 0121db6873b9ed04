"""edgefleet.client.AgentClient end to end against a real agent process on a real Unix socket.

One agent and one client serve the module; the shared-memory clean-up test starts an agent of its
own so it can stop it and see the kernel free every segment the client created.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from support import (
    AgentProcess,
    build,
    build_null,
    make_image_onnx,
    make_linear_onnx,
    running_agent,
    short_socket_dir,
    unpack,
)

from edgefleet.client import DEFAULT_SHM_THRESHOLD, AgentClient, AuxData, ModelInfo, error_from_rpc
from edgefleet.core.errors import (
    AlreadyExists,
    Code,
    EdgefleetError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    ResourceExhausted,
    Unavailable,
    Unimplemented,
    grpc_status_number,
)
from edgefleet.core.tensors import DataType, TensorSpec

SHM_DEST = 0o1000  # the "marked for removal" bit of a System V segment's mode


# -- System V segments as the kernel lists them ---------------------------------------------------------
@dataclass(frozen=True)
class Segment:
    shmid: int
    mode: int
    size: int
    creator_pid: int
    attached: int


def segments_created_by(pid: int) -> dict[int, Segment]:
    """The System V segments ``pid`` created that still exist (what ``ipcs -m -p`` shows)."""
    lines = Path("/proc/sysvipc/shm").read_text().splitlines()
    header = lines[0].split()
    out = {}
    for line in lines[1:]:
        row = dict(zip(header, line.split(), strict=True))
        if int(row["cpid"]) == pid:
            seg = Segment(int(row["shmid"]), int(row["perms"], 8), int(row["size"]), pid, int(row["nattch"]))
            out[seg.shmid] = seg
    return out


def sysv_mappings(pid: int) -> int:
    """How many System V segments ``pid`` has attached."""
    return sum(1 for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/SYSV" in line)


def wait_capture(client: AgentClient, capture_id: str, timeout: float = 60) -> str:
    """Poll the capture's status until it leaves IN_PROGRESS (the API offers nothing to wait on)."""
    deadline = time.monotonic() + timeout
    while (status := client.capture_status(capture_id)) == "IN_PROGRESS":
        if time.monotonic() > deadline:
            raise AssertionError(f"capture {capture_id} still IN_PROGRESS after {timeout} s")
        time.sleep(0.02)
    return status


# -- fixtures -------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Packages:
    linear: Path
    image: Path
    tampered: Path
    huge: Path
    linear_onnx: Path
    image_onnx: Path


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("client-e2e")


@pytest.fixture(scope="module")
def packages(workdir: Path, keys: Path) -> Packages:
    pkgs, unpacked = workdir / "pkgs", workdir / "unpacked"
    linear = build(make_linear_onnx(workdir / "linear.onnx"), keys, pkgs, name="linear", version="1.0")
    image = build(make_image_onnx(workdir / "image.onnx"), keys, pkgs, name="image", version="2.0")
    tampered = unpack(linear, unpacked / "tampered")
    data = bytearray((tampered / "linear.onnx").read_bytes())
    data[-1] ^= 0x01
    (tampered / "linear.onnx").write_bytes(bytes(data))
    return Packages(
        linear=unpack(linear, unpacked / "linear"),
        image=unpack(image, unpacked / "image"),
        tampered=tampered,
        huge=unpack(build_null(keys, pkgs, name="huge", memory_bytes=1 << 42), unpacked / "huge"),
        linear_onnx=workdir / "linear.onnx",
        image_onnx=workdir / "image.onnx",
    )


@pytest.fixture(scope="module")
def agent(workdir: Path, trust: Path) -> Iterator[AgentProcess]:
    with running_agent(
        workdir,
        trust,
        agent={"memory_budget_mb": 512},
        capture={"push_period_seconds": 0.2, "batch_size": 1},
    ) as proc:
        yield proc


@pytest.fixture(scope="module")
def client(agent: AgentProcess) -> Iterator[AgentClient]:
    with AgentClient(agent.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def models(client: AgentClient, packages: Packages) -> dict[str, ModelInfo]:
    """``lin`` (x [N, 4] -> y [N, 3]) and ``img`` (image [1, 3, 224, 224] -> logits [1, 10]), loaded."""
    return {
        "lin": client.load(str(packages.linear), "lin"),
        "img": client.load(str(packages.image), "img"),
    }


@pytest.fixture(scope="module")
def ort_linear(packages: Packages) -> ort.InferenceSession:
    return ort.InferenceSession(str(packages.linear_onnx))


@pytest.fixture(scope="module")
def ort_image(packages: Packages) -> ort.InferenceSession:
    return ort.InferenceSession(str(packages.image_onnx))


def names(client: AgentClient) -> set[str]:
    return {m.name for m in client.list()}


# -- models ---------------------------------------------------------------------------------------------
def test_load_list_describe_unload(client: AgentClient, packages: Packages) -> None:
    info = client.load(str(packages.linear), "tmp-lin")
    assert info == ModelInfo(
        name="tmp-lin",
        url=str(packages.linear),
        inputs=(TensorSpec("x", DataType.FLOAT32, (-1, 4)),),
        outputs=(TensorSpec("y", DataType.FLOAT32, (-1, 3)),),
    )
    assert "tmp-lin" in names(client)
    assert client.describe("tmp-lin") == info

    client.unload("tmp-lin")

    assert "tmp-lin" not in names(client)
    with pytest.raises(NotFound, match="tmp-lin"):
        client.describe("tmp-lin")
    # the alias is free again
    assert client.load(str(packages.linear), "tmp-lin") == info
    client.unload("tmp-lin")


# -- predict --------------------------------------------------------------------------------------------
def test_predict_small_goes_inline_and_matches_onnxruntime(
    client: AgentClient, models: dict[str, ModelInfo], ort_linear: ort.InferenceSession
) -> None:
    x = np.random.default_rng(1).standard_normal((6, 4)).astype(np.float32)
    expected = ort_linear.run(None, {"x": x})[0]
    before = segments_created_by(os.getpid())

    by_name = client.predict("lin", {"x": x})
    by_position = client.predict("lin", x)

    assert list(by_name) == ["y"]
    np.testing.assert_array_equal(by_name["y"], expected)
    np.testing.assert_array_equal(by_position["y"], expected)
    assert x.nbytes <= DEFAULT_SHM_THRESHOLD
    assert segments_created_by(os.getpid()).keys() == before.keys(), "a small tensor used shared memory"


def test_predict_large_goes_through_shared_memory_and_matches_onnxruntime(
    client: AgentClient, agent: AgentProcess, models: dict[str, ModelInfo], ort_image: ort.InferenceSession
) -> None:
    image = np.random.default_rng(2).random((1, 3, 224, 224), dtype=np.float32)
    assert image.nbytes > DEFAULT_SHM_THRESHOLD
    expected = ort_image.run(None, {"image": image})[0]
    before = segments_created_by(os.getpid())

    with AgentClient(agent.address, timeout=60) as fresh:  # a pool with no idle segment yet
        out = fresh.predict("img", {"image": image})
        new = [s for s in segments_created_by(os.getpid()).values() if s.shmid not in before]
    with AgentClient(agent.address, timeout=60, shm_threshold=None) as inline_client:
        inline = inline_client.predict("img", {"image": image})

    np.testing.assert_array_equal(out["logits"], expected)
    np.testing.assert_array_equal(inline["logits"], expected)
    assert new, "a tensor above the threshold did not go through a System V segment"
    assert all(s.size >= image.nbytes and s.mode & SHM_DEST for s in new), new


def test_concurrent_predicts_on_one_client(
    client: AgentClient,
    models: dict[str, ModelInfo],
    ort_linear: ort.InferenceSession,
    ort_image: ort.InferenceSession,
) -> None:
    rng = np.random.default_rng(3)
    jobs: list[tuple[str, str, np.ndarray, str, np.ndarray]] = []
    for i in range(48):
        if i % 2:
            x = rng.random((1, 3, 224, 224), dtype=np.float32)
            jobs.append(("img", "image", x, "logits", ort_image.run(None, {"image": x})[0]))
        else:
            x = rng.standard_normal((1 + i, 4)).astype(np.float32)
            jobs.append(("lin", "x", x, "y", ort_linear.run(None, {"x": x})[0]))
    start = threading.Barrier(8)

    def run(worker: int) -> list[bool]:
        start.wait()
        results = []
        for model, in_name, x, out_name, expected in jobs[worker::8]:
            out = client.predict(model, {in_name: x})
            results.append(bool(np.array_equal(out[out_name], expected)))
        return results

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = [ok for worker in pool.map(run, range(8)) for ok in worker]

    assert results == [True] * len(jobs), "some concurrent callers got another call's outputs"


# -- capture --------------------------------------------------------------------------------------------
def test_capture_and_capture_status(client: AgentClient, models: dict[str, ModelInfo]) -> None:
    x = np.arange(8, dtype=np.float32).reshape(2, 4)
    big_aux = bytes(range(256)) * 1200  # 300 KiB: through shared memory
    capture_id = client.capture(
        "lin",
        inputs={"x": x},
        outputs={"y": x[:, :3] * 2},
        aux_inputs={"meta": AuxData(b'{"camera": 3}', "JSON"), "table": AuxData(b"a,b\n1,2\n", "CSV")},
        aux_outputs={"blob": AuxData(big_aux, "NONE"), "note": "plain text"},
    )
    explicit = str(uuid.uuid4())

    assert uuid.UUID(capture_id).version == 4
    assert client.capture("lin", explicit, inputs=[x], inference_time=time.time() - 1) == explicit
    assert wait_capture(client, capture_id) == "SUCCESS"
    assert wait_capture(client, explicit) == "SUCCESS"
    assert client.capture_status(str(uuid.uuid4())) == "NOT_FOUND"
    with pytest.raises(AlreadyExists, match=explicit):
        client.capture("lin", explicit, inputs=[x])
    assert client.capture_status(explicit) == "SUCCESS"


# -- extensions -----------------------------------------------------------------------------------------
def test_server_metadata_and_health(client: AgentClient) -> None:
    meta = client.server_metadata()
    health = client.health()

    assert meta.name and meta.version and meta.protocol
    assert {"server-metadata", "health", "model-statistics"} <= set(meta.extensions)
    assert {"onnxruntime", "null"} <= set(meta.runtimes)
    assert (health.live, health.ready, health.state) == (True, True, "SERVING")


def test_model_stats(client: AgentClient, packages: Packages) -> None:
    client.load(str(packages.linear), "stats")
    try:
        x = np.ones((3, 4), np.float32)
        for _ in range(3):
            client.predict("stats", {"x": x})
        with pytest.raises(InvalidArgument, match="shape"):
            client.predict("stats", {"x": np.ones((3, 5), np.float32)})

        (stats,) = client.model_stats("stats")
        everything = {s.name for s in client.model_stats()}
    finally:
        client.unload("stats")

    assert (stats.name, stats.model_name, stats.model_version) == ("stats", "linear", "1.0")
    # three good calls; the refused one may count as a request with an error or not at all
    assert (stats.request_count, stats.error_count) in ((3, 0), (4, 1))
    assert stats.last_inference_time is not None and stats.last_inference_time <= time.time()
    assert 0 < stats.p50_ms <= stats.p95_ms <= stats.p99_ms
    assert (stats.in_flight, stats.queued) == (0, 0)
    assert stats.memory_bytes > 0 and stats.loaded_time > 0
    assert "stats" in everything
    with pytest.raises(NotFound, match="stats"):
        client.model_stats("stats")


# -- typed errors ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failure:
    call: Callable[[AgentClient, Packages], object]
    error: type[EdgefleetError]
    code: Code
    grpc_code: grpc.StatusCode
    match: str


X = np.ones((2, 4), np.float32)
FAILURES = {
    "load-bad-alias": Failure(
        lambda c, p: c.load(str(p.linear), "bad_alias"),
        InvalidArgument,
        Code.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        "bad_alias",
    ),
    "load-missing-package": Failure(
        lambda c, p: c.load(str(p.linear.parent / "nothing-here"), "missing"),
        NotFound,
        Code.NOT_FOUND,
        grpc.StatusCode.NOT_FOUND,
        "nothing-here",
    ),
    "load-alias-taken": Failure(
        lambda c, p: c.load(str(p.linear), "lin"),
        AlreadyExists,
        Code.ALREADY_EXISTS,
        grpc.StatusCode.ALREADY_EXISTS,
        "'lin'",
    ),
    "load-over-memory-budget": Failure(
        lambda c, p: c.load(str(p.huge), "huge"),
        ResourceExhausted,
        Code.RESOURCE_EXHAUSTED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
        "budget",
    ),
    "load-tampered-package": Failure(
        lambda c, p: c.load(str(p.tampered), "tampered"),
        FailedPrecondition,
        Code.FAILED_PRECONDITION,
        grpc.StatusCode.FAILED_PRECONDITION,
        "linear.onnx",
    ),
    "unload-unknown": Failure(
        lambda c, p: c.unload("nosuch"), NotFound, Code.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "nosuch"
    ),
    "describe-unknown": Failure(
        lambda c, p: c.describe("nosuch"), NotFound, Code.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "nosuch"
    ),
    "predict-unknown-model": Failure(
        lambda c, p: c.predict("nosuch", {"x": X}),
        NotFound,
        Code.NOT_FOUND,
        grpc.StatusCode.NOT_FOUND,
        "nosuch",
    ),
    "predict-wrong-shape": Failure(
        lambda c, p: c.predict("lin", {"x": np.ones((2, 5), np.float32)}),
        InvalidArgument,
        Code.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape",
    ),
    "predict-wrong-dtype": Failure(
        lambda c, p: c.predict("lin", {"x": X.astype(np.float64)}),
        InvalidArgument,
        Code.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        "FLOAT64",
    ),
    "predict-wrong-count": Failure(
        lambda c, p: c.predict("lin", [X, X]),
        InvalidArgument,
        Code.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        "input tensor",
    ),
    "capture-malformed-id": Failure(
        lambda c, p: c.capture("lin", "not-a-uuid", inputs=[X]),
        InvalidArgument,
        Code.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        "not-a-uuid",
    ),
    "capture-future-timestamp": Failure(
        lambda c, p: c.capture("lin", inputs=[X], inference_time=time.time() + 3600),
        OutOfRange,
        Code.OUT_OF_RANGE,
        grpc.StatusCode.OUT_OF_RANGE,
        "future",
    ),
    "capture-model-not-loaded": Failure(
        lambda c, p: c.capture("nosuch", inputs=[X]),
        NotFound,
        Code.NOT_FOUND,
        grpc.StatusCode.NOT_FOUND,
        "nosuch",
    ),
    "model-stats-unknown": Failure(
        lambda c, p: c.model_stats("nosuch"), NotFound, Code.NOT_FOUND, grpc.StatusCode.NOT_FOUND, "nosuch"
    ),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_typed_errors_carry_the_grpc_code(
    client: AgentClient, packages: Packages, models: dict[str, ModelInfo], case: str
) -> None:
    failure = FAILURES[case]
    loaded_before = client.list()

    with pytest.raises(failure.error, match=failure.match) as info:
        failure.call(client, packages)

    err = info.value
    assert err.code is failure.code
    assert grpc_status_number(err.code) == failure.grpc_code.value[0]
    if case.startswith(("predict-", "capture-")):
        # Predict and CaptureData went over the agent's fast path, which answers with the same
        # status numbers (the test below asks gRPC the same): no gRPC error behind it
        assert err.__cause__ is None and client.fast_path_connections > 0
    else:
        assert isinstance(err.__cause__, grpc.RpcError)
        assert err.__cause__.code() == failure.grpc_code
    assert client.list() == loaded_before, "a failed call changed what is loaded"


@pytest.mark.parametrize("case", [c for c in FAILURES if c.startswith(("predict-", "capture-"))])
def test_typed_errors_over_grpc_match_the_fast_path(
    client: AgentClient, packages: Packages, models: dict[str, ModelInfo], case: str
) -> None:
    failure = FAILURES[case]
    with AgentClient(client.address, timeout=30, fast_path=False) as via_grpc:
        with pytest.raises(failure.error, match=failure.match) as info:
            failure.call(via_grpc, packages)
        assert via_grpc.fast_path_calls == 0
    err = info.value
    assert err.code is failure.code
    assert isinstance(err.__cause__, grpc.RpcError)
    assert err.__cause__.code() == failure.grpc_code


def test_unreachable_agent_is_unavailable() -> None:
    socket = short_socket_dir() / "nobody.sock"
    with (
        AgentClient(f"unix://{socket}", timeout=5) as nobody,
        pytest.raises(Unavailable, match="unavailable") as info,
    ):
        nobody.list()
    assert info.value.code is Code.UNAVAILABLE
    assert grpc_status_number(info.value.code) == grpc.StatusCode.UNAVAILABLE.value[0]
    socket.parent.rmdir()


def test_closed_client_refuses_calls(agent: AgentProcess) -> None:
    c = AgentClient(agent.address)
    c.close()
    c.close()  # idempotent
    with pytest.raises(FailedPrecondition, match="closed"):
        c.list()


# -- shared memory clean-up -----------------------------------------------------------------------------
def test_close_leaves_no_shared_memory_behind(tmp_path: Path, trust: Path, packages: Packages) -> None:
    pid = os.getpid()
    mappings_before = sysv_mappings(pid)
    with running_agent(tmp_path, trust) as own_agent:
        before = segments_created_by(pid)
        client = AgentClient(own_agent.address, timeout=60)
        client.load(str(packages.image), "img")
        rng = np.random.default_rng(4)
        images = [rng.random((1, 3, 224, 224), dtype=np.float32) for _ in range(12)]
        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(lambda image: client.predict("img", {"image": image}), images))
        created = {k: v for k, v in segments_created_by(pid).items() if k not in before}
        assert created, "the large predicts used no shared memory"
        assert sysv_mappings(pid) > mappings_before

        client.close()

        assert sysv_mappings(pid) == mappings_before, "the closed client is still attached to a segment"
        left = {k: v for k, v in segments_created_by(pid).items() if k in created}
        # what is left is only the agent's read-only attachment, and the kernel frees it with that
        assert all(s.mode & SHM_DEST and s.attached <= 1 for s in left.values()), left
    assert not set(segments_created_by(pid)) & set(created), "segments outlived the client and the agent"


def test_an_rpc_the_agent_lacks_is_unimplemented(agent: AgentProcess) -> None:
    """UNIMPLEMENTED (which had no class) from the real agent comes back as its class."""
    channel = agent.channel()
    try:
        missing = channel.unary_unary("/AWS.SageMaker.Edge.Agent/NoSuchRpc")
        with pytest.raises(grpc.RpcError, match=r".") as raw:
            missing(b"", timeout=60)
        err = error_from_rpc(raw.value, agent.address)
        assert type(err) is Unimplemented and err.code is Code.UNIMPLEMENTED
    finally:
        channel.close()
