"""Helpers shared by the tests: tiny models built locally, packages, and real agent processes."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np

from edgefleet.core.tensors import DataType, TensorSpec
from edgefleet.protocol.agent.proto import agent_pb2, agent_pb2_grpc, extensions_pb2, extensions_pb2_grpc

REPO = Path(__file__).resolve().parents[1]

# Where helpers put scratch directories: pytest's base temporary directory, set by the root
# conftest for the session, so that tests write nothing outside pytest's tmp paths.
_scratch_root: Path | None = None


def use_scratch_root(path: Path) -> None:
    """Make ``path`` (pytest's base temporary directory) the parent of every scratch directory."""
    global _scratch_root
    _scratch_root = path


def scratch_dir(prefix: str) -> Path:
    """A new directory under pytest's base temporary directory."""
    if _scratch_root is None:
        raise RuntimeError("the root conftest sets the scratch root; import support from tests only")
    return Path(tempfile.mkdtemp(prefix=prefix, dir=_scratch_root))


def make_linear_onnx(
    path: Path, *, in_features: int = 4, out_features: int = 3, seed: int = 0, dynamic_batch: bool = True
) -> Path:
    """``y = x @ W + b`` as an ONNX file (float32), input ``x`` [N, in], output ``y`` [N, out]."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((in_features, out_features)).astype(np.float32)
    bias = rng.standard_normal(out_features).astype(np.float32)
    batch: int | str = "N" if dynamic_batch else 1
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, in_features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, out_features])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def make_image_onnx(path: Path, *, channels: int = 3, size: int = 224) -> Path:
    """A small image model (ReduceMean over H, W then a linear layer): input [1, C, H, W] float32."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = rng.standard_normal((channels, 10)).astype(np.float32)
    graph = helper.make_graph(
        [
            helper.make_node("ReduceMean", ["image", "axes"], ["pooled"], keepdims=0),
            helper.make_node("MatMul", ["pooled", "W"], ["logits"]),
        ],
        "image",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 10])],
        [
            numpy_helper.from_array(weight, "W"),
            numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes"),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    path.write_bytes(model.SerializeToString())
    return path


def big_side(megabytes: int) -> int:
    """The square weight matrix side of :func:`make_big_onnx`."""
    return int((megabytes * 1024 * 1024 / 4) ** 0.5)


def make_big_onnx(path: Path, *, megabytes: int = 40) -> Path:
    """A model whose weights take ``megabytes`` MiB (for memory tests); input ``x`` [N, big_side]."""
    side = big_side(megabytes)
    return make_linear_onnx(path, in_features=side, out_features=side, seed=3)


def make_conv_onnx(path: Path, *, layers: int = 4, channels: int = 512) -> Path:
    """``layers`` 3x3 convolutions with ReLU (float32 weights, 9.4 MiB each at 512 channels): a model
    whose loading, like a real CNN's, rewrites its weights (ONNX Runtime's layout optimisation).
    Input ``x`` [1, channels, 8, 8], output ``y`` of the same shape."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    nodes, weights, current = [], [], "x"
    for i in range(layers):
        weight = (rng.standard_normal((channels, channels, 3, 3)) * 0.01).astype(np.float32)
        weights.append(numpy_helper.from_array(weight, f"W{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("Conv", [current, f"W{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [out]))
        current = out
    shape = [1, channels, 8, 8]
    graph = helper.make_graph(
        nodes,
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        weights,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def null_model_file(path: Path, **config: Any) -> Path:
    """A model file for the null runtime (see edgefleet.runtimes.null)."""
    path.write_text(json.dumps({"op": "identity", **config}))
    return path


SPEC_IN = (TensorSpec("x", DataType.FLOAT32, (-1, 4)),)
SPEC_OUT = (TensorSpec("y", DataType.FLOAT32, (-1, 4)),)


def make_slow_onnx(path: Path, *, size: int = 1024, depth: int = 24) -> Path:
    """``y = x @ W @ W ... (depth times)``: about 0.2-0.5 s per run on 2 cores."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    weight = numpy_helper.from_array(
        (rng.standard_normal((size, size)) / np.sqrt(size)).astype(np.float32), "W"
    )
    names = ["x", *[f"h{i}" for i in range(1, depth)], "y"]
    nodes = [helper.make_node("MatMul", [names[i], "W"], [names[i + 1]]) for i in range(depth)]
    graph = helper.make_graph(
        nodes,
        "slow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [size, size])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def build(
    model: Path,
    key_dir: Path,
    out_dir: Path,
    *,
    name: str = "model",
    version: str = "1.0",
    **kwargs: Any,
) -> Path:
    """Build a signed package with edgefleet's packager."""
    from edgefleet.packager.build import build_package

    return build_package(model, name=name, version=version, key_dir=key_dir, out_dir=out_dir, **kwargs)


def build_null(
    key_dir: Path,
    out_dir: Path,
    *,
    name: str = "nullmodel",
    version: str = "1.0",
    inputs: Sequence[TensorSpec] = SPEC_IN,
    outputs: Sequence[TensorSpec] = SPEC_OUT,
    **config: Any,
) -> Path:
    """A signed null-runtime package."""
    work = scratch_dir("nullmodel-")
    model = null_model_file(work / "model.json", **config)
    try:
        return build(
            model,
            key_dir,
            out_dir,
            name=name,
            version=version,
            runtime="null",
            inputs=tuple(inputs),
            outputs=tuple(outputs),
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


def unpack(archive: Path, dest: Path) -> Path:
    """Unpack a package with the safe unpacker."""
    from edgefleet.core.package import unpack_package

    return unpack_package(archive, dest)


CHANNEL_OPTIONS = [("grpc.max_receive_message_length", 1 << 30), ("grpc.max_send_message_length", 1 << 30)]


@dataclass
class AgentProcess:
    """A real ``edgefleet agent`` process on a real Unix socket."""

    socket: Path
    config_path: Path
    data_dir: Path
    capture_dir: Path
    log_path: Path
    proc: subprocess.Popen[bytes]
    channels: list[grpc.Channel] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"unix://{self.socket}"

    def channel(self) -> grpc.Channel:
        channel = grpc.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self.channels.append(channel)
        return channel

    def stub(self) -> agent_pb2_grpc.AgentStub:
        return agent_pb2_grpc.AgentStub(self.channel())

    def ext(self) -> extensions_pb2_grpc.AgentExtensionsStub:
        return extensions_pb2_grpc.AgentExtensionsStub(self.channel())

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        for channel in self.channels:
            channel.close()
        self.channels.clear()
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise AssertionError(f"agent did not stop on {sig}; log:\n{self.log()}") from None
        return self.proc.returncode

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


def short_socket_dir() -> Path:
    """A short directory for sockets (Unix socket paths are limited to 107 bytes): one under
    pytest's base temporary directory (``/tmp/pytest-of-USER/pytest-N``), not a test's own
    tmp_path, whose name grows with the test's name."""
    directory = scratch_dir("s")
    if len(str(directory)) > 80:
        raise RuntimeError(f"{directory} is too long for Unix socket paths: give pytest a shorter --basetemp")
    return directory


def write_native_config(
    path: Path,
    *,
    trust_dir: Path | None,
    data_dir: Path,
    capture_dir: Path,
    agent: dict[str, Any] | None = None,
    capture: dict[str, Any] | None = None,
    device: dict[str, Any] | None = None,
) -> Path:
    config: dict[str, Any] = {
        "device": {"name": "test-device", "fleet": "test-fleet", **(device or {})},
        "agent": {
            "data_dir": str(data_dir),
            **({"trust_dir": str(trust_dir)} if trust_dir else {}),
            **(agent or {}),
        },
        "capture": {
            "disk_path": str(capture_dir),
            "push_period_seconds": 0.2,
            "fsync": True,
            **(capture or {}),
        },
    }
    path.write_text(json.dumps(config))
    return path


def spawn_agent(
    config_path: Path, socket: Path, log_path: Path, *, force: bool = True, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``edgefleet agent``; its default data directory is kept under the config's folder."""
    env = {"XDG_DATA_HOME": str(config_path.parent / "xdg-data"), **(env or {})}
    args = [sys.executable, "-m", "edgefleet", "agent", "-a", f"unix://{socket}", "-c", str(config_path)]
    if force:
        args.append("-f")
    with log_path.open("ab") as log_file:
        return subprocess.Popen(
            args, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}, cwd=REPO
        )


def wait_for(condition: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Wait until ``condition()`` is truthy and return its value: an event waited on (checked every
    20 ms), with a timeout generous enough for a busy machine, never a timing assertion."""
    deadline = time.monotonic() + timeout
    while not (value := condition()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.02)
    return value


def wait_ready(agent: AgentProcess, timeout: float = 60) -> None:
    """Wait until the agent reports ready over its health extension."""
    deadline = time.monotonic() + timeout
    channel = grpc.insecure_channel(agent.address)
    stub = extensions_pb2_grpc.AgentExtensionsStub(channel)
    try:
        while True:
            if agent.proc.poll() is not None:
                raise AssertionError(f"agent exited with {agent.proc.returncode}; log:\n{agent.log()}")
            try:
                if stub.GetHealth(extensions_pb2.HealthRequest(), timeout=2).ready:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"agent not ready after {timeout}s; log:\n{agent.log()}")
            time.sleep(0.02)
    finally:
        channel.close()


@contextmanager
def running_agent(
    workdir: Path,
    trust_dir: Path | None,
    *,
    agent: dict[str, Any] | None = None,
    capture: dict[str, Any] | None = None,
    config_path: Path | None = None,
) -> Iterator[AgentProcess]:
    """Start an agent with a native config under ``workdir``; stop it (SIGTERM) afterwards."""
    proc = start(workdir, trust_dir, agent=agent, capture=capture, config_path=config_path)
    try:
        yield proc
    finally:
        if proc.proc.poll() is None:
            proc.stop()
        shutil.rmtree(proc.socket.parent, ignore_errors=True)


def start(
    workdir: Path,
    trust_dir: Path | None,
    *,
    agent: dict[str, Any] | None = None,
    capture: dict[str, Any] | None = None,
    config_path: Path | None = None,
    socket: Path | None = None,
    device: dict[str, Any] | None = None,
) -> AgentProcess:
    data_dir = workdir / "agent-data"
    capture_dir = workdir / "captures"
    if config_path is None:
        config_path = write_native_config(
            workdir / "agent.json",
            trust_dir=trust_dir,
            data_dir=data_dir,
            capture_dir=capture_dir,
            agent=agent,
            capture=capture,
            device=device,
        )
    socket = socket or short_socket_dir() / "agent.sock"
    log_path = workdir / "agent.log"
    process = AgentProcess(
        socket, config_path, data_dir, capture_dir, log_path, spawn_agent(config_path, socket, log_path)
    )
    wait_ready(process)
    return process


def tensor(name: str, array: np.ndarray) -> agent_pb2.Tensor:
    """An inline request tensor with full metadata, the way vendor clients send it."""
    array = np.ascontiguousarray(array)
    return agent_pb2.Tensor(
        tensor_metadata=agent_pb2.TensorMetadata(
            name=name.encode(), data_type=int(DataType.from_numpy(array.dtype)), shape=list(array.shape)
        ),
        byte_data=array.tobytes(),
    )


def output_array(t: agent_pb2.Tensor) -> np.ndarray:
    md = t.tensor_metadata
    return np.frombuffer(t.byte_data, dtype=DataType(md.data_type).numpy).reshape(tuple(md.shape))


def assert_quiet_on_closed_pipe(command: list[str], env: dict[str, str] | None = None) -> None:
    """Run ``command`` with stdout a pipe whose reader is gone before it writes (``| head`` that
    exited): it must end without a word on stderr."""
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    assert process.stdout is not None and process.stderr is not None
    process.stdout.close()  # the only reader: every write of the command now fails with EPIPE
    err = process.stderr.read()
    process.stderr.close()
    code = process.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipeError" not in err and "Exception ignored" not in err, err
    assert err == ""
    # 141 as a tool stopped by SIGPIPE (what a shell's pipefail reports); argparse's help printer
    # ignores a failed write itself and exits 0
    assert code == (0 if "--help" in command else 141)


def read_exact(conn: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from ``conn``; ConnectionError if the peer closes first."""
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {n} bytes")
        data += chunk
    return data


def frame_reply(conn: socket.socket) -> tuple[int, bytes]:
    """One fast-path reply frame from ``conn``: (status byte, payload)."""
    (length,) = struct.unpack("<I", read_exact(conn, 4))
    body = read_exact(conn, length)
    return body[0], body[1:]
