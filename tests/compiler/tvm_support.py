"""Tiny ONNX models and helpers shared by the TVM tests (built locally with onnx.helper)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from edgefleet.compiler.evaluate import candidate_manifest
from edgefleet.compiler.targets import get_target
from edgefleet.compiler.types import BuildOptions, CandidateArtifact, TargetSpec
from edgefleet.runtimes.base import LoadedModel, RuntimeOptions, get_backend
from edgefleet.runtimes.tvm import TVMArtifactInfo, metadata_path

CNN_SHAPE = (1, 1, 8, 8)
DENSE_SHAPE = (1, 16)


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_cnn_onnx(path: Path, seed: int = 0) -> Path:
    """Conv -> Relu -> Flatten -> Gemm -> Softmax on ``x`` [1, 1, 8, 8]; output ``probs`` [1, 10]."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((4, 1, 3, 3)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "B"),
        numpy_helper.from_array(rng.standard_normal((10, 4 * 6 * 6)).astype(np.float32) * 0.1, "G"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], kernel_shape=[3, 3]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("Gemm", ["f", "G"], ["logits"], transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=1),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(CNN_SHAPE))],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, [1, 10])],
        weights,
    )
    return _save(graph, path)


def make_dense_onnx(path: Path, seed: int = 0) -> Path:
    """relu(a @ W + b) on ``a`` [1, 16] (TVM fuses it into one kernel); output ``h`` [1, 8]."""
    rng = np.random.default_rng(seed)
    weights = [
        numpy_helper.from_array(rng.standard_normal((16, 8)).astype(np.float32), "W"),
        numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), "b"),
    ]
    nodes = [
        helper.make_node("MatMul", ["a", "W"], ["m"]),
        helper.make_node("Add", ["m", "b"], ["s"]),
        helper.make_node("Relu", ["s"], ["h"]),
    ]
    graph = helper.make_graph(
        nodes,
        "dense",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(DENSE_SHAPE))],
        [helper.make_tensor_value_info("h", TensorProto.FLOAT, [1, 8])],
        weights,
    )
    return _save(graph, path)


def make_two_output_onnx(path: Path) -> Path:
    """``a`` [N, 5] -> ``r`` = relu(a) (float) and ``idx`` = argmax(a, 1) (int64)."""
    nodes = [
        helper.make_node("Relu", ["a"], ["r"]),
        helper.make_node("ArgMax", ["a"], ["idx"], axis=1, keepdims=0),
    ]
    graph = helper.make_graph(
        nodes,
        "two",
        [helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 5])],
        [
            helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 5]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["N"]),
        ],
    )
    return _save(graph, path)


def make_det_onnx(path: Path) -> Path:
    """A valid ONNX graph using ``Det``, an operator TVM's Relax ONNX importer does not support."""
    graph = helper.make_graph(
        [helper.make_node("Det", ["m"], ["d"])],
        "det",
        [helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, 3, 3])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, [2])],
    )
    return _save(graph, path)


def build(
    onnx_path: Path,
    work_dir: Path,
    shapes: dict[str, tuple[int, ...]],
    target: str | TargetSpec = "linux-x86_64",
    **options: object,
) -> CandidateArtifact:
    """``build_tvm`` into a fresh ``work_dir`` with ``options`` overriding BuildOptions' defaults."""
    from edgefleet.compiler.backends.tvm import build_tvm

    spec = get_target(target) if isinstance(target, str) else target
    work_dir.mkdir(parents=True, exist_ok=False)
    build_options = dataclasses.replace(BuildOptions(work_dir=work_dir, input_shapes=shapes), **options)
    return build_tvm(onnx_path, spec, build_options, lambda line: None)


def info(artifact: CandidateArtifact) -> TVMArtifactInfo:
    """The artifact's sidecar."""
    return TVMArtifactInfo.read(artifact.directory / metadata_path(artifact.model_file))


def load(artifact: CandidateArtifact, threads: int = 1, concurrency: int = 4) -> LoadedModel:
    """Load ``artifact`` through the runtime registry, as the agent would."""
    meta = info(artifact)
    target = get_target("linux-aarch64" if meta.arch == "aarch64" else "linux-x86_64")
    manifest = candidate_manifest(artifact, target, meta.inputs, meta.outputs)
    return get_backend("tvm").load(
        artifact.directory, manifest, RuntimeOptions(intra_op_threads=threads, concurrency=concurrency)
    )


def reference(onnx_path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """ONNX Runtime's outputs for ``feeds``."""
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    result: list[np.ndarray] = session.run(None, feeds)
    return result
