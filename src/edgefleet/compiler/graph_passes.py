"""ONNX-to-ONNX optimisation passes: simplification, ONNX Runtime offline optimisation, int8 static
QDQ quantisation and fp16 conversion. Each reads one file and writes another.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgefleet.compiler import onnx_graph
from edgefleet.compiler.dataset import Dataset
from edgefleet.compiler.noise import captured_output, record_detail, short_reason
from edgefleet.compiler.types import CandidateUnavailable, LogFn, UnsupportedModel
from edgefleet.core.errors import EdgefleetError, InvalidArgument

_log = logging.getLogger(__name__)
# Operators whose weights int8 quantisation targets; a graph without them gains nothing.
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
# DequantizeLinear's ``axis`` (per-channel weights) arrived in opset 13.
PER_CHANNEL_OPSET = 13


def simplify(src: Path, dst: Path, log: LogFn) -> Path:
    """onnxsim constant folding and redundant-node elimination; returns ``src`` unchanged if onnxsim
    cannot simplify this graph (e.g. tree-ensemble operators), its result fails onnxsim's check, or
    ONNX Runtime cannot load its result (the pass is then skipped for this model, with a warning)."""
    try:
        import onnxsim  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        log("onnxsim is not installed: graph simplification skipped (pip install 'edgefleet[compiler]')")
        return src
    model = onnx.load(str(src))
    before = len(model.graph.node)
    try:
        # onnxsim prints progress tables on stdout and its C++ side warnings on stderr
        with captured_output("onnxsim"):
            simplified, ok = onnxsim.simplify(model, check_n=1)
    except Exception as exc:  # onnxsim raises RuntimeError/ValueError/onnx errors on graphs it cannot handle
        log(f"graph simplification skipped: onnxsim failed ({short_reason(str(exc)) or repr(exc)})")
        record_detail(f"onnxsim failed: {exc}")
        return src
    if not ok:
        log("graph simplification skipped: onnxsim's output did not match the original on random inputs")
        return src
    onnx_graph.save(simplified, dst)
    try:
        check_loadable(dst)
    except EdgefleetError as exc:
        raise PassSkipped(
            "graph simplification", f"ONNX Runtime cannot load onnxsim's output: {exc.message}"
        ) from exc
    log(f"simplified the graph: {before} -> {len(simplified.graph.node)} nodes")
    return dst


class PassSkipped(EdgefleetError):
    """An optimisation pass produced a graph that does not load: the pass is skipped for this model."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"{name} skipped: {detail}")
        self.name = name
        self.detail = detail

    @property
    def warning(self) -> str:
        """The one-line warning for the report and the progress output."""
        return f"{self.name} skipped for this model: {short_reason(self.detail)}"


def tool_versions() -> dict[str, str]:
    """Versions of the tools these passes use (those installed)."""
    from importlib.metadata import PackageNotFoundError, version

    found = {"onnx": str(onnx.__version__), "onnxruntime": str(ort.__version__)}
    try:
        found["onnxsim"] = version("onnxsim")
    except PackageNotFoundError:
        pass
    return found


def ort_offline_optimise(src: Path, dst: Path) -> Path:
    """Save ONNX Runtime's *basic* graph optimisations (constant folding, redundant nodes).

    Basic-level rewrites keep standard ONNX operators, so the artifact runs on any ONNX Runtime
    that supports its opset. The *extended* level adds ONNX Runtime contrib operators (tying the
    artifact to the compiling release) and the *all* level layout changes specific to the
    compiling machine's CPU, which ONNX Runtime documents as unsafe to ship to other hardware;
    both are left to load time on the device, where they are applied anyway. Raises
    :class:`PassSkipped` when ONNX Runtime cannot optimise this graph or cannot load the result.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    try:
        with captured_output("onnxruntime"):
            ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
        # ONNX Runtime stamps every opset domain it knows (ai.onnx.ml 5, training, contrib...) on the
        # saved graph; older runtimes may refuse versions they do not know, so keep only those used.
        model = onnx.load(str(dst))
        onnx_graph.prune_opset_imports(model)
        onnx_graph.save(model, dst)
        check_loadable(dst)
    except EdgefleetError as exc:
        raise PassSkipped("ONNX Runtime offline optimisation", exc.message) from exc
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented
        raise PassSkipped(
            "ONNX Runtime offline optimisation", str(translate_ort_error(exc, src.name))
        ) from exc
    return dst


def check_loadable(path: Path) -> None:
    """UNIMPLEMENTED if ONNX Runtime lacks a kernel for an operator of ``path``; INVALID_ARGUMENT if the
    graph does not load (bad shapes, type errors)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        with captured_output("onnxruntime"):
            ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented
        raise translate_ort_error(exc, path.name) from exc


def translate_ort_error(exc: Exception, name: str) -> Exception:
    """Map an ONNX Runtime load error to UNIMPLEMENTED (missing kernel) or INVALID_ARGUMENT."""
    message = str(exc)
    if "NOT_IMPLEMENTED" in message or "Could not find an implementation" in message:
        return UnsupportedModel(
            f"unsupported operator: ONNX Runtime {ort.__version__} cannot run {name}: {message}"
        )
    return InvalidArgument(f"ONNX Runtime cannot load {name}: {message}")


class _Reader:
    """ONNX Runtime ``CalibrationDataReader`` over the calibration set, batch by batch.

    It supports the strided protocol (``__len__`` + ``set_range``), with which ONNX Runtime folds
    min/max ranges every few batches instead of holding every intermediate tensor of the whole
    calibration set in memory (gigabytes for an ImageNet-sized CNN).
    """

    def __init__(self, data: Dataset, batch: int, fixed: bool) -> None:
        self._batches = [b for _, b in data.batches(batch, partial=not fixed)]
        self._window: list[dict[str, np.ndarray]] = list(self._batches)

    def __len__(self) -> int:
        return len(self._batches)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._window = self._batches[start_index:end_index]

    def get_next(self) -> dict[str, np.ndarray] | None:
        return self._window.pop(0) if self._window else None


def _stride(batches: int, most: int = 4) -> int:
    """The largest divisor of ``batches`` not above ``most`` (ONNX Runtime needs an exact division)."""
    return max(d for d in range(1, min(most, batches) + 1) if batches % d == 0)


@dataclass(frozen=True)
class Int8Graph:
    """A calibrated QDQ graph: where it is, what was done to get it, and which nodes stayed float."""

    path: Path
    notes: tuple[str, ...] = ()
    per_channel: bool = True
    excluded: tuple[str, ...] = ()


def quantizable_nodes(path: Path) -> list[str]:
    """Names of the nodes int8 quantisation gives int8 weights (Conv/MatMul/Gemm...), in graph order."""
    model = onnx.load(str(path), load_external_data=False)
    return [n.name for n in model.graph.node if n.op_type in QUANTIZABLE_OPS and n.name]


def name_nodes(src: Path, dst: Path) -> Path:
    """``src`` with every unnamed main-graph node named (``<op>_<index>``), so nodes can be excluded
    from quantisation by name; ``src`` itself when every node has a name already."""
    model = onnx.load(str(src))
    if all(n.name for n in model.graph.node):
        return src
    taken = {n.name for n in model.graph.node}
    for index, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{index}"
            while name in taken:
                name += "_"
            node.name = name
            taken.add(name)
    onnx_graph.save(model, dst)
    return dst


def quantize_int8(
    src: Path,
    dst: Path,
    calibration: Dataset,
    reduce_range: bool,
    log: LogFn,
    nodes_to_exclude: Sequence[str] = (),
) -> Int8Graph:
    """Static int8 quantisation in QDQ form: per-channel int8 weights, uint8 activations whose ranges
    are calibrated (min/max) on ``calibration``; ``nodes_to_exclude`` stay in float.

    ``reduce_range`` quantises weights to 7 bits, which avoids the int16 saturation of u8*s8
    products on x86 CPUs without VNNI (ONNX Runtime's documented caveat). Per-channel weights need
    ``DequantizeLinear``'s ``axis`` (opset 13): an older graph is first upgraded to opset 13 when
    the upgraded graph loads and computes the same outputs, else quantised per tensor. The result
    must load in ONNX Runtime, else :class:`~edgefleet.compiler.types.CandidateUnavailable`.
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    if not onnx_graph.has_ops(model, QUANTIZABLE_OPS):
        raise UnsupportedModel(
            f"int8 quantisation needs {'/'.join(QUANTIZABLE_OPS)} operators with weights; this graph has none"
        )
    batch, fixed = calibration.batch_size(onnx_graph.inputs(model), 8)
    notes: list[str] = []
    per_channel = True
    opset = onnx_graph.opset(model)
    upgraded = dst.with_name(dst.stem + "-opset13.onnx")
    if 0 < opset < PER_CHANNEL_OPSET:
        reader = _Reader(calibration, batch, fixed)
        try:
            _upgrade_opset(src, upgraded, reader.get_next())
            src = upgraded
            notes.append(
                f"opset {opset} upgraded to {PER_CHANNEL_OPSET} for per-channel int8 weights "
                "(the upgraded graph loads and gives the same outputs)"
            )
        except Exception as exc:  # the converter raises many types; any failure means "not safe"
            per_channel = False
            notes.append(
                f"per-tensor int8 weights: opset {opset} has no per-channel DequantizeLinear (axis needs opset "
                f"{PER_CHANNEL_OPSET}) and upgrading is not safe for this graph ({short_reason(str(exc))})"
            )
        log(notes[-1])
    prepared = dst.with_name(dst.stem + "-prepared.onnx")
    try:
        with captured_output("onnxruntime quantisation pre-processing"):
            quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # pre-processing is an optimisation: quantise the original if it fails
        log(f"quantisation pre-processing skipped ({short_reason(str(exc))})")
        record_detail(f"quantisation pre-processing failed: {exc}")
        prepared = src
    log(
        f"calibrating int8 ranges on {calibration.size} sample(s) from {calibration.source}"
        + (f", {len(nodes_to_exclude)} node(s) kept in float" if nodes_to_exclude else "")
    )
    reader = _Reader(calibration, batch, fixed)
    if not len(reader):
        raise InvalidArgument(
            f"calibration data {calibration.source}: {calibration.size} sample(s) do not fill one batch of {batch}"
        )

    def quantize(**extra: object) -> None:
        reader.set_range(0, len(reader))
        with captured_output("onnxruntime quantiser"):
            quantize_static(
                str(prepared),
                str(dst),
                reader,
                quant_format=QuantFormat.QDQ,
                per_channel=per_channel,
                reduce_range=reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                calibrate_method=CalibrationMethod.MinMax,
                nodes_to_exclude=list(nodes_to_exclude),
                extra_options={"CalibStridedMinMax": _stride(len(reader)), **extra},
            )

    try:
        try:
            quantize()
        except ValueError as exc:
            # ONNX Runtime's per-channel weight-scale adjustment for int32 biases compares whole
            # arrays on some Gemm graphs (e.g. scikit-learn MLPs) and raises "truth value of an
            # array is ambiguous"; without that adjustment the graph quantises correctly.
            if "truth value of an array" not in str(exc):
                raise
            log("int8: ONNX Runtime's bias-scale adjustment failed on this graph; quantising without it")
            quantize(QDQDisableWeightAdjustForInt32Bias=True)
    except (UnsupportedModel, InvalidArgument):
        raise
    except Exception as exc:  # onnxruntime's quantiser raises ValueError/RuntimeError/KeyError
        raise EdgefleetError(f"int8 quantisation failed: {exc}") from exc
    finally:
        for temporary in (prepared, upgraded):
            if temporary != dst:
                temporary.unlink(missing_ok=True)
    try:
        check_loadable(dst)
    except EdgefleetError as exc:
        raise CandidateUnavailable(f"the int8 graph does not load in ONNX Runtime: {exc.message}") from exc
    notes.append("static int8 QDQ, " + ("per-channel" if per_channel else "per-tensor") + " weights")
    return Int8Graph(dst, tuple(notes), per_channel, tuple(nodes_to_exclude))


def node_sensitivity(fp32: Path, int8: Path, feeds: dict[str, np.ndarray]) -> list[str]:
    """The quantisable nodes of ``fp32``, most sensitive to int8 first.

    Both graphs are run on ``feeds`` with every float tensor they share exposed; a node's
    sensitivity is the relative error the int8 graph shows at its output minus the largest at its
    inputs: the error that node adds rather than the error it inherits.
    """
    base = onnx.load(str(fp32))
    quant = onnx.load(str(int8))
    produced = {o for n in quant.graph.node for o in n.output}
    wanted = [
        o
        for n in base.graph.node
        for o in n.output
        if o in produced and o not in {v.name for v in base.graph.output}
    ]
    results = []
    for model in (base, quant):
        probe = onnx.ModelProto()
        probe.CopyFrom(model)
        probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in wanted)
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        with captured_output("onnxruntime"):
            session = ort.InferenceSession(
                probe.SerializeToString(), options, providers=["CPUExecutionProvider"]
            )
            names = [o.name for o in session.get_outputs()]
            results.append(dict(zip(names, session.run(None, feeds), strict=True)))
    error: dict[str, float] = {}
    for name, ref in results[0].items():
        got = results[1].get(name)
        ref_array, got_array = np.asarray(ref), np.asarray(got)
        if got is None or ref_array.dtype.kind != "f" or ref_array.shape != got_array.shape:
            continue
        scale = float(np.linalg.norm(ref_array)) + 1e-12
        error[name] = float(np.linalg.norm(got_array.astype(np.float64) - ref_array)) / scale
    added = {
        n.name: error.get(n.output[0], 0.0) - max((error.get(i, 0.0) for i in n.input), default=0.0)
        for n in base.graph.node
        if n.op_type in QUANTIZABLE_OPS and n.name
    }
    order = list(added)
    # ties (e.g. the last node, whose output is a graph output and not probed) go last-layer first
    return sorted(order, key=lambda name: (-added[name], -order.index(name)))


def _upgrade_opset(src: Path, dst: Path, sample: dict[str, np.ndarray] | None) -> None:
    """Write ``src`` converted to opset 13; raises unless the result loads and matches on ``sample``."""
    from onnx import version_converter

    model = onnx.load(str(src))
    with captured_output("onnx version converter"):
        converted = version_converter.convert_version(model, PER_CHANNEL_OPSET)
    onnx.checker.check_model(converted)
    onnx_graph.save(converted, dst)
    check_loadable(dst)
    if sample is None:
        return
    options = ort.SessionOptions()
    options.log_severity_level = 3
    before = ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"]).run(None, sample)
    after = ort.InferenceSession(str(dst), options, providers=["CPUExecutionProvider"]).run(None, sample)
    for old, new in zip(before, after, strict=True):
        if not np.allclose(np.asarray(old), np.asarray(new), rtol=1e-5, atol=1e-6):
            raise ValueError("the opset-13 graph computes different outputs")


def convert_fp16(src: Path, dst: Path) -> Path:
    """Weights and compute in float16; inputs and outputs keep their float32 type."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    try:
        with captured_output("fp16 converter"):
            converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:  # the converter raises ValueError/AssertionError on graphs it cannot handle
        raise UnsupportedModel(f"fp16 conversion failed: {exc}") from exc
    onnx_graph.save(converted, dst)
    try:
        check_loadable(dst)
    except EdgefleetError as exc:
        raise CandidateUnavailable(f"the fp16 graph does not load in ONNX Runtime: {exc.message}") from exc
    return dst
