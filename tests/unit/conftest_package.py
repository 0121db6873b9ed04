"""Helpers shared by the package tests (imported explicitly; not a pytest conftest).

Real models built in code: a tiny ONNX classifier (MatMul + Add + Softmax) with onnx.helper,
and a tiny TFLite ADD model written with the flatbuffer schema that ai-edge-litert ships.
"""

from __future__ import annotations

import io
import tarfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np


def make_onnx_classifier(
    path: Path,
    *,
    features: int = 4,
    classes: int = 3,
    opset: int = 17,
    input_elem_type: int | None = None,
    seed: int = 0,
) -> Path:
    """Write ``logits = softmax(x @ W + b)`` with a dynamic batch dimension to ``path``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    weights = numpy_helper.from_array(rng.standard_normal((features, classes)).astype(np.float32), "W")
    bias = numpy_helper.from_array(rng.standard_normal(classes).astype(np.float32), "b")
    elem = TensorProto.FLOAT if input_elem_type is None else input_elem_type
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "W"], ["xw"]),
            helper.make_node("Add", ["xw", "b"], ["logits"]),
            helper.make_node("Softmax", ["logits"], ["probabilities"], axis=-1),
        ],
        "classifier",
        [helper.make_tensor_value_info("x", elem, ["batch", features])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["batch", classes])],
        initializer=[weights, bias],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if input_elem_type is None:
        onnx.checker.check_model(model)
    path.write_bytes(model.SerializeToString())
    return path


def make_tflite_add(path: Path, *, tensor_type: str = "FLOAT32") -> Path:
    """Write a one-op TFLite model ``sum = a + b`` (shape [-1, 4]) to ``path``."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as schema

    def tensor(name: str) -> schema.TensorT:
        t = schema.TensorT()
        t.name = name
        t.shape = [1, 4]
        t.shapeSignature = [-1, 4]
        t.type = getattr(schema.TensorType, tensor_type)
        t.buffer = 0
        return t

    code = schema.OperatorCodeT()
    code.builtinCode = schema.BuiltinOperator.ADD
    code.deprecatedBuiltinCode = schema.BuiltinOperator.ADD
    code.version = 1
    op = schema.OperatorT()
    op.opcodeIndex = 0
    op.inputs = [0, 1]
    op.outputs = [2]
    op.builtinOptionsType = schema.BuiltinOptions.AddOptions
    op.builtinOptions = schema.AddOptionsT()
    subgraph = schema.SubGraphT()
    subgraph.name = "main"
    subgraph.tensors = [tensor("a"), tensor("b"), tensor("sum")]
    subgraph.inputs = [0, 1]
    subgraph.outputs = [2]
    subgraph.operators = [op]
    model = schema.ModelT()
    model.version = 3
    model.description = "edgefleet test"
    model.operatorCodes = [code]
    model.buffers = [schema.BufferT()]
    model.subgraphs = [subgraph]
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.write_bytes(bytes(builder.Output()))
    return path


@dataclass
class Member:
    """One member of a hand-crafted (possibly malicious) tar archive."""

    name: str
    data: bytes = b""
    type: bytes = tarfile.REGTYPE
    linkname: str = ""
    size: int | None = None


def write_tar_gz(path: Path, members: Iterable[Member]) -> Path:
    """Write ``members`` as a .tar.gz exactly as given (no safety checks: tests craft attacks)."""
    with tarfile.open(path, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        for member in members:
            info = tarfile.TarInfo(member.name)
            info.type = member.type
            info.linkname = member.linkname
            info.mode = 0o644
            if member.type in (tarfile.REGTYPE, tarfile.AREGTYPE):
                info.size = len(member.data) if member.size is None else member.size
                tar.addfile(info, io.BytesIO(member.data))
            else:
                tar.addfile(info)
    return path


def read_tar_members(path: Path) -> list[Member]:
    """The regular-file members of a package archive, in order."""
    members: list[Member] = []
    with tarfile.open(path, "r:gz") as tar:
        for info in tar.getmembers():
            fh = tar.extractfile(info)
            members.append(Member(info.name, fh.read() if fh else b"", info.type, info.linkname))
    return members
