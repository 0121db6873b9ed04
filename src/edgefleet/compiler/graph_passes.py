"""ONNX-to-ONNX optimisation passes: simplification, ONNX Runtime offline optimisation, int8 static
QDQ quantisation and fp16 conversion. Each reads one file and writes another.
"""

from __future__ import annotations

import contextlib
import io
import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from edgefleet.compiler import onnx_graph
from edgefleet.compiler.dataset import Dataset
from edgefleet.compiler.types import LogFn, UnsupportedModel
from edgefleet.core.errors import EdgefleetError, InvalidArgument

_log = logging.getLogger(__name__)
# Operators whose weights int8 quantisation targets; a graph without them gains nothing.
QUANTIZABLE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")


def simplify(src: Path, dst: Path, log: LogFn) -> Path:
    """onnxsim constant folding and redundant-node elimination; returns ``src`` unchanged if onnxsim
    cannot simplify this graph (e.g. tree-ensemble operators) or its result fails onnxsim's check."""
    try:
        import onnxsim  # type: ignore[import-untyped, unused-ignore]
    except ImportError:
        log("onnxsim is not installed: graph simplification skipped (pip install 'edgefleet[compiler]')")
        return src
    model = onnx.load(str(src))
    before = len(model.graph.node)
    try:
        # onnxsim prints progress tables on stdout; the CLI owns stdout.
        with contextlib.redirect_stdout(io.StringIO()):
            simplified, ok = onnxsim.simplify(model, check_n=1)
    except Exception as exc:  # onnxsim raises RuntimeError/ValueError/onnx errors on graphs it cannot handle
        log(
            f"graph simplification skipped: onnxsim failed ({str(exc).splitlines()[0] if str(exc) else exc!r})"
        )
        return src
    if not ok:
        log("graph simplification skipped: onnxsim's output did not match the original on random inputs")
        return src
    onnx_graph.save(simplified, dst)
    log(f"simplified the graph: {before} -> {len(simplified.graph.node)} nodes")
    return dst


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
    both are left to load time on the device, where they are applied anyway.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    options.optimized_model_filepath = str(dst)
    options.log_severity_level = 3
    try:
        ort.InferenceSession(str(src), sess_options=options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's Fail/InvalidGraph/NotImplemented
        raise translate_ort_error(exc, src.name) from exc
    # ONNX Runtime stamps every opset domain it knows (ai.onnx.ml 5, training, contrib...) on the
    # saved graph; older runtimes may refuse versions they do not know, so keep only those used.
    model = onnx.load(str(dst))
    onnx_graph.prune_opset_imports(model)
    onnx_graph.save(model, dst)
    return dst


def check_loadable(path: Path) -> None:
    """UNIMPLEMENTED if ONNX Runtime lacks a kernel for an operator of ``path``; INVALID_ARGUMENT if the
    graph does not load (bad shapes, type errors)."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
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

    def __init__(self, data: Dataset, batch: int) -> None:
        self._batches = [b for _, b in data.batches(batch, partial=batch > 1)]
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


def quantize_int8(src: Path, dst: Path, calibration: Dataset, reduce_range: bool, log: LogFn) -> Path:
    """Static int8 quantisation in QDQ form: per-channel int8 weights, uint8 activations whose ranges
    are calibrated (min/max) on ``calibration``.

    ``reduce_range`` quantises weights to 7 bits, which avoids the int16 saturation of u8*s8
    products on x86 CPUs without VNNI (ONNX Runtime's documented caveat).
    """
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    model = onnx.load(str(src))
    if not onnx_graph.has_ops(model, QUANTIZABLE_OPS):
        raise UnsupportedModel(
            f"int8 quantisation needs {'/'.join(QUANTIZABLE_OPS)} operators with weights; this graph has none"
        )
    batch_dims = [s.shape[0] if s.shape else 1 for s in onnx_graph.inputs(model)]
    batch = 8 if all(d < 0 for d in batch_dims) else max(1, batch_dims[0])
    prepared = dst.with_name(dst.stem + "-prepared.onnx")
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
    except Exception as exc:  # pre-processing is an optimisation: quantise the original if it fails
        log(f"quantisation pre-processing skipped ({exc})")
        prepared = src
    log(f"calibrating int8 ranges on {calibration.size} sample(s) from {calibration.source}")
    reader = _Reader(calibration, batch)
    if not len(reader):
        raise InvalidArgument(
            f"calibration data {calibration.source}: {calibration.size} sample(s) do not fill one batch of {batch}"
        )

    def quantize(**extra: object) -> None:
        reader.set_range(0, len(reader))
        quantize_static(
            str(prepared),
            str(dst),
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            reduce_range=reduce_range,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
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
        if prepared != src:
            prepared.unlink(missing_ok=True)
    return dst


def convert_fp16(src: Path, dst: Path) -> Path:
    """Weights and compute in float16; inputs and outputs keep their float32 type."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(src))
    try:
        converted = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)
    except Exception as exc:  # the converter raises ValueError/AssertionError on graphs it cannot handle
        raise UnsupportedModel(f"fp16 conversion failed: {exc}") from exc
    onnx_graph.save(converted, dst)
    return dst
