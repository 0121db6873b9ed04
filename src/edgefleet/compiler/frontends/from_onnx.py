"""ONNX front-end: check the graph and apply ``--input`` declarations (pinning dynamic dimensions)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import onnx

from edgefleet.compiler import onnx_graph
from edgefleet.compiler.frontends import FrontendResult
from edgefleet.compiler.noise import short_reason
from edgefleet.compiler.signature import InputSpec
from edgefleet.compiler.types import LogFn
from edgefleet.core.errors import InvalidArgument

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
    batch_declared: Sequence[InputSpec] = (),
) -> FrontendResult:
    """Shared tail of the front-ends that produce ONNX: check operators, apply shapes, save, describe.

    The declared shapes pin the graph's dynamic dimensions -- unless ONNX Runtime cannot load the
    pinned graph while it loads the model as given (shape inference through ``If``/``Loop`` bodies
    can fail on a dimension that became fixed): then the graph keeps its own shapes, the declared
    ones are still used for the data and the measurements, and a warning says so.
    """
    from edgefleet.compiler.graph_passes import check_loadable

    onnx_graph.check_operators(model)
    axes = onnx_graph.batch_axes(model, [*declared, *batch_declared])
    warnings: list[str] = []
    path = work_dir / MODEL_FILE
    if declared:
        original = onnx.ModelProto()
        original.CopyFrom(model)
        specs = onnx_graph.reconcile_and_set_inputs(model, declared)
        onnx_graph.save(model, path)
        try:
            check_loadable(path)
        except InvalidArgument as exc:
            onnx_graph.save(original, path)
            try:
                check_loadable(path)
            except InvalidArgument:
                raise exc from None
            model = original
            warnings.append(
                "the --input shapes were not written into the graph: ONNX Runtime cannot load it with them "
                # ONNX Runtime's message names the temporary file first; its innermost cause is the news
                f"({short_reason(exc.message.rsplit('failed:', 1)[-1])}); the model keeps its own dynamic dimensions"
            )
    else:
        specs = onnx_graph.inputs(model)
        onnx_graph.save(model, path)
        check_loadable(path)
    return FrontendResult(
        format="onnx",
        path=path,
        inputs=tuple(specs),
        outputs=tuple(onnx_graph.outputs(model)),
        tool_versions={"onnx": str(onnx.__version__), **tool_versions},
        notes=tuple(notes),
        batch_axes=axes,
        warnings=tuple(warnings),
    )
