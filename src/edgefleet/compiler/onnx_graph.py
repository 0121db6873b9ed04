"""Reading, checking and describing ONNX graphs (the compiler's intermediate form).

Needs the ``onnx`` package (the ``compiler`` extra). Foreign errors from ``onnx`` are translated
here: a file that does not parse is INVALID_ARGUMENT, an operator no runtime implements is
UNIMPLEMENTED (:class:`~edgefleet.compiler.types.UnsupportedModel`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx
import onnx.defs

from edgefleet.compiler.signature import InputSpec, reconcile_inputs
from edgefleet.compiler.types import UnsupportedModel
from edgefleet.core.errors import InvalidArgument
from edgefleet.core.tensors import ONNX_ELEM_TYPES, DataType, TensorSpec
from edgefleet.packager.modelmeta import ort_for_opset

_TO_ELEM = {v: k for k, v in ONNX_ELEM_TYPES.items()}
# Operator domains whose operators ONNX Runtime's CPU provider implements.
_STANDARD_DOMAINS = ("", "ai.onnx", "ai.onnx.ml")
RUNTIME_DOMAINS = (*_STANDARD_DOMAINS, "com.microsoft")


def load(path: Path) -> onnx.ModelProto:
    """Parse and check an ONNX file; INVALID_ARGUMENT if it is corrupt, UNIMPLEMENTED for unknown ops."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # protobuf DecodeError, OSError on external data, ...
        raise InvalidArgument(f"model file {path.name} is not a valid ONNX model: {exc}") from exc
    if model.ir_version <= 0 or not model.graph.node or not model.graph.output:
        raise InvalidArgument(
            f"model file {path.name} is not a valid ONNX model: it parses but has no IR version, nodes or outputs"
        )
    check_operators(model)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise InvalidArgument(f"model file {path.name} is not a valid ONNX model: {exc}") from exc
    return model


def save(model: onnx.ModelProto, path: Path) -> Path:
    """Write ``model`` to ``path`` (weights over 2 GB go to an external data file next to it)."""
    large = model.ByteSize() > 2_000_000_000
    onnx.save(model, str(path), save_as_external_data=large, location=f"{path.name}.data" if large else None)
    return path


def check_operators(model: onnx.ModelProto, domains: Sequence[str] = RUNTIME_DOMAINS) -> None:
    """UNIMPLEMENTED naming every operator that is not a known operator of an implemented domain."""
    unknown: set[str] = set()
    opsets = {o.domain: o.version for o in model.opset_import}
    local = {(f.domain, f.name) for f in model.functions}
    for node in _all_nodes(model.graph):
        if (node.domain, node.op_type) in local:
            continue
        domain = node.domain or ""
        if domain not in domains:
            unknown.add(f"{node.op_type} (domain {domain})")
        elif domain in _STANDARD_DOMAINS and not onnx.defs.has(node.op_type, domain):
            unknown.add(f"{node.op_type} (domain {domain or 'ai.onnx'}, opset {opsets.get(domain, '?')})")
    if unknown:
        raise UnsupportedModel(
            f"unsupported operator(s): {', '.join(sorted(unknown))}; no edgefleet runtime implements them "
            f"(supported: the standard ONNX operators of domains ai.onnx and ai.onnx.ml, and ONNX Runtime's "
            f"com.microsoft contrib operators)"
        )


def prune_opset_imports(model: onnx.ModelProto) -> None:
    """Drop opset imports of domains no node (or local function) uses; the default domain stays."""
    used = {node.domain or "" for node in _all_nodes(model.graph)}
    for function in model.functions:
        used.update(node.domain or "" for node in function.node)
    used.add("")
    keep = [o for o in model.opset_import if (o.domain or "") in used or o.domain == "ai.onnx"]
    del model.opset_import[:]
    model.opset_import.extend(keep)


def _all_nodes(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes = []
    for node in graph.node:
        nodes.append(node)
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                nodes.extend(_all_nodes(attr.g))
            for sub in attr.graphs:
                nodes.extend(_all_nodes(sub))
    return nodes


def _spec(value: onnx.ValueInfoProto) -> TensorSpec:
    tensor_type = value.type.tensor_type
    dtype = ONNX_ELEM_TYPES.get(tensor_type.elem_type)
    if dtype is None:
        raise UnsupportedModel(
            f"tensor {value.name!r} has ONNX element type "
            f"{onnx.TensorProto.DataType.Name(tensor_type.elem_type)}, which the agent protocol cannot carry "
            f"(supported: {', '.join(t.name for t in DataType)})"
        )
    shape = tuple(
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1 for d in tensor_type.shape.dim
    )
    return TensorSpec(value.name, dtype, shape)


def inputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph's real inputs (initialisers listed as inputs are not)."""
    weights = {i.name for i in model.graph.initializer}
    return [_spec(v) for v in model.graph.input if v.name not in weights]


def outputs(model: onnx.ModelProto) -> list[TensorSpec]:
    """The graph's outputs."""
    return [_spec(v) for v in model.graph.output]


def set_input_shapes(model: onnx.ModelProto, specs: Sequence[TensorSpec]) -> None:
    """Rewrite the graph inputs' shapes in place (-1 stays symbolic)."""
    by_name = {s.name: s for s in specs}
    for value in model.graph.input:
        spec = by_name.get(value.name)
        if spec is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for i, want in enumerate(spec.shape):
            if i >= len(dims):
                dims.add()
            if want > 0:
                dims[i].ClearField("dim_param")
                dims[i].dim_value = want
            elif not dims[i].dim_param:
                dims[i].dim_param = f"{value.name}_dim{i}"


def reconcile_and_set_inputs(model: onnx.ModelProto, declared: Sequence[InputSpec]) -> list[TensorSpec]:
    """Apply ``--input`` declarations to the model's inputs (see :func:`reconcile_inputs`), in place."""
    specs = reconcile_inputs(inputs(model), declared)
    set_input_shapes(model, specs)
    return specs


# Recurrent operators: input index -> batch axis for layout 0 (ONNX's default, [seq, batch, ...]
# for X and [directions, batch, hidden] for the states); layout 1 puts the batch first.
_RECURRENT_BATCH_INPUTS = {"LSTM": (0, 5, 6), "GRU": (0, 5), "RNN": (0, 5)}


def batch_axes(model: onnx.ModelProto, declared: Sequence[InputSpec] = ()) -> dict[str, int | None]:
    """Which axis of each graph input is the batch (samples) axis; None for an input without one.

    A declaration with ``batch=`` wins. Otherwise: a rank-0 input has none; an input fed to a
    recurrent operator (LSTM/GRU/RNN, also inside If/Loop bodies) as its sequence or initial state
    is batched where that operator's ``layout`` says (axis 1 by default); an input sharing a
    symbolic dimension name with another input's batch axis is batched on that dimension; anything
    else is batched on axis 0 (the common case, and what data files are assumed to follow).
    """
    weights = {i.name for i in model.graph.initializer}
    values = [v for v in model.graph.input if v.name not in weights]
    given = {d.name: d.batch_axis for d in declared if d.batch_declared}
    axes: dict[str, int | None] = {}
    for value in values:
        tensor = value.type.tensor_type
        if value.name in given:
            axes[value.name] = given[value.name]
        elif tensor.HasField("shape") and len(tensor.shape.dim) == 0:
            axes[value.name] = None
    for node in _all_nodes(model.graph):
        positions = (
            _RECURRENT_BATCH_INPUTS.get(node.op_type) if (node.domain or "") in ("", "ai.onnx") else None
        )
        if not positions:
            continue
        layout = next((a.i for a in node.attribute if a.name == "layout"), 0)
        names = {v.name for v in values}
        for index in positions:
            if index < len(node.input) and node.input[index] in names and node.input[index] not in axes:
                axes[node.input[index]] = 0 if layout else 1
    symbols = {
        value.type.tensor_type.shape.dim[axis].dim_param
        for value in values
        if (axis := axes.get(value.name)) is not None and axis < len(value.type.tensor_type.shape.dim)
    } - {""}
    pending = [v for v in values if v.name not in axes]
    if not symbols:  # nothing said yet: the batch is whatever name leads the other inputs' shapes
        symbols = {
            v.type.tensor_type.shape.dim[0].dim_param for v in pending if v.type.tensor_type.shape.dim
        } - {""}
    for value in pending:
        dims = value.type.tensor_type.shape.dim
        shared = [i for i, d in enumerate(dims) if d.dim_param and d.dim_param in symbols]
        axes[value.name] = shared[0] if len(shared) == 1 else 0
    return axes


def elem_type(dtype: DataType) -> int:
    """The ONNX element type for a wire data type."""
    return _TO_ELEM[dtype]


def opset(model: onnx.ModelProto, domain: str = "") -> int:
    """The model's opset for ``domain`` (0 when the domain is not imported)."""
    versions = [
        o.version
        for o in model.opset_import
        if o.domain == domain or (domain == "" and o.domain == "ai.onnx")
    ]
    return max(versions, default=0)


def ort_min_version(model: onnx.ModelProto, installed: str) -> str:
    """The oldest ONNX Runtime that can run ``model``.

    Graphs whose nodes use contrib operators (``com.microsoft``, from ORT's own optimiser) or an
    opset newer than the table need the installed release's major.minor. (ONNX Runtime's optimiser
    declares extra opset domains it does not use; only the nodes' domains count.)
    """
    exact = ".".join(installed.split(".")[:2])
    if any((node.domain or "") not in _STANDARD_DOMAINS for node in _all_nodes(model.graph)):
        return exact
    return ort_for_opset(opset(model)) or exact


def has_ops(model: onnx.ModelProto, op_types: Sequence[str]) -> bool:
    """True when any node of the main graph is one of ``op_types``."""
    wanted = set(op_types)
    return any(node.op_type in wanted for node in model.graph.node)


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """A short summary for logs: node count, opsets, producer."""
    return {
        "nodes": len(model.graph.node),
        "opsets": {o.domain or "ai.onnx": o.version for o in model.opset_import},
        "producer": f"{model.producer_name} {model.producer_version}".strip(),
    }
