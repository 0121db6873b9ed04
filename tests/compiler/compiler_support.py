"""Models and data for the compiler tests, built locally (no network)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np


@dataclass(frozen=True)
class Digits:
    """scikit-learn's bundled 8x8 digits as NCHW float32 in [0, 1], split 1400 / 397."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def load_digits_split() -> Digits:
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)
    order = np.random.default_rng(0).permutation(len(x))
    x, y = x[order], y[order].astype(np.int64)
    return Digits(x[:1400], y[:1400], x[1400:], y[1400:])


def train_digits_cnn(digits: Digits, epochs: int = 6) -> object:
    """A small CNN trained on digits (about 97-99 % test accuracy in a few seconds)."""
    import torch

    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(8, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Flatten(),
        torch.nn.Linear(16 * 4 * 4, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 10),
    )
    optimiser = torch.optim.Adam(net.parameters(), lr=3e-3)
    xs, ys = torch.from_numpy(digits.x_train), torch.from_numpy(digits.y_train)
    generator = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny batches: one thread is 2-4x faster than two
    try:
        for _ in range(epochs):
            order = torch.randperm(len(xs), generator=generator)
            for start in range(0, len(xs), 32):
                batch = order[start : start + 32]
                optimiser.zero_grad()
                loss = torch.nn.functional.cross_entropy(net(xs[batch]), ys[batch])
                loss.backward()
                optimiser.step()
    finally:
        torch.set_num_threads(threads)
    return net.eval()


def export_onnx(module: object, path: Path, shape: tuple[int, ...], dynamic_batch: bool = True) -> Path:
    """Export a torch module to ONNX opset 17 (input ``x``, output ``y``)."""
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            module,  # type: ignore[arg-type]
            (torch.zeros(shape),),
            str(path),
            dynamo=False,
            opset_version=17,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic_batch else None,
        )
    return path


def make_mlp_onnx(path: Path, features: int = 4, classes: int = 3, seed: int = 0) -> Path:
    """``y = relu(x @ W1 + b1) @ W2 + b2`` with a dynamic batch, via onnx.helper."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((features, 16)).astype(np.float32), "W1"),
        numpy_helper.from_array(rng.standard_normal(16).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.standard_normal((16, classes)).astype(np.float32), "W2"),
        numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Gemm", ["x", "W1", "b1"], ["h"]),
            helper.make_node("Relu", ["h"], ["r"]),
            helper.make_node("Gemm", ["r", "W2", "b2"], ["y"]),
        ],
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", classes])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def make_custom_op_onnx(path: Path, op_type: str = "FancyOp", domain: str = "com.example") -> Path:
    """A graph with an operator no runtime implements."""
    import onnx
    from onnx import TensorProto, helper

    opsets = [helper.make_opsetid("", 17)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    graph = helper.make_graph(
        [helper.make_node(op_type, ["x"], ["y"], domain=domain)],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=opsets)
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def make_tflite_fc(path: Path, weights: np.ndarray, bias: np.ndarray, description: str = "tiny fc") -> Path:
    """A one-layer FULLY_CONNECTED ``.tflite`` (input ``x`` [1, in], output ``y`` [1, out]) written
    with the flatbuffer schema ai-edge-litert ships."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as s

    out_features, in_features = weights.shape

    def tensor(shape: list[int], buffer: int, name: str) -> object:
        t = s.TensorT()
        t.shape, t.type, t.buffer, t.name = shape, s.TensorType.FLOAT32, buffer, name
        return t

    def buffer(data: bytes | None) -> object:
        b = s.BufferT()
        b.data = None if data is None else list(data)
        return b

    model = s.ModelT()
    model.version = 3
    model.description = description
    model.buffers = [
        buffer(None),
        buffer(None),
        buffer(weights.astype(np.float32).tobytes()),
        buffer(bias.astype(np.float32).tobytes()),
        buffer(None),
        buffer(b"2.3.0\0\0\0\0\0\0\0\0\0\0\0"),
    ]
    code = s.OperatorCodeT()
    code.builtinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.deprecatedBuiltinCode = s.BuiltinOperator.FULLY_CONNECTED
    code.version = 1
    model.operatorCodes = [code]
    graph = s.SubGraphT()
    graph.tensors = [
        tensor([1, in_features], 1, "x"),
        tensor([out_features, in_features], 2, "w"),
        tensor([out_features], 3, "b"),
        tensor([1, out_features], 4, "y"),
    ]
    graph.inputs, graph.outputs, graph.name = [0], [3], "main"
    op = s.OperatorT()
    op.opcodeIndex, op.inputs, op.outputs = 0, [0, 1, 2], [3]
    op.builtinOptionsType = s.BuiltinOptions.FullyConnectedOptions
    op.builtinOptions = s.FullyConnectedOptionsT()
    graph.operators = [op]
    model.subgraphs = [graph]
    meta = s.MetadataT()
    meta.name, meta.buffer = "min_runtime_version", 5
    model.metadata = [meta]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path
