"""ONNX front-end: check the graph and apply ``--input`` declarations (pinning dynamic dimensions)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from edgefleet.compiler import onnx_graph
from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import LogFn

MODEL_FILE = "model.onnx"


def convert(model_path: Path, declared: Sequence[InputSpec], work_dir: Path, log: LogFn) -> FrontendResult:
    """Load and check ``model_path``; write it with the declared input shapes to ``work_dir``."""
    model = onnx_graph.load(model_path)
    log(f"read ONNX model {model_path.name}: {onnx_graph.describe(model)}")
    return finish(model, declared, work_dir, {}, ())


def finish(
    model: onnx.ModelProto,
    declared: Sequence[InputSpec],
    work_dir: Path,
    tool_versions: dict[str, str],
    notes: Sequence[str],
) -> FrontendResult:
    """Shared tail of the front-ends that produce ONNX: check operators, apply shapes, save, describe."""
    onnx_graph.check_operators(model)
    specs = onnx_graph.reconcile_and_set_inputs(model, declared) if declared else onnx_graph.inputs(model)
    path = onnx_graph.save(model, work_dir / MODEL_FILE)
    return FrontendResult(
        format="onnx",
        path=path,
        inputs=tuple(specs),
        outputs=tuple(onnx_graph.outputs(model)),
        tool_versions={"onnx": str(onnx.__version__), **tool_versions},
        notes=tuple(notes),
    )
