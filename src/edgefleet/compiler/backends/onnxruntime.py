"""ONNX Runtime candidates: the fp32 graph with offline optimisations, the int8 QDQ graph, fp16."""

from __future__ import annotations

import shutil
from pathlib import Path

import onnx
import onnxruntime as ort

from edgefleet.compiler import graph_passes, onnx_graph
from edgefleet.compiler.types import (
    BuildOptions,
    CandidateArtifact,
    CandidateUnavailable,
    LogFn,
    Quantization,
    TargetSpec,
)

MODEL_FILE = "model.onnx"
RUNTIME = "onnxruntime"


def build_onnxruntime(
    onnx_path: Path, target: TargetSpec, options: BuildOptions, log: LogFn
) -> CandidateArtifact:
    """An ONNX Runtime artifact for ``target`` at ``options.quantize`` precision."""
    out = options.work_dir / MODEL_FILE
    notes: list[str] = []
    warnings: list[str] = []
    if options.quantize is Quantization.INT8:
        shutil.copyfile(onnx_path, out)
        name = f"{RUNTIME}-int8"
    elif options.quantize is Quantization.FP16:
        if not target.fp16_compute:
            raise CandidateUnavailable(
                f"target {target.name} has no native fp16 arithmetic, so ONNX Runtime would run an fp16 graph "
                "slower than fp32 (fp16 ONNX Runtime artifacts are offered for targets with fp16 compute, "
                "e.g. linux-aarch64-armv8.2)"
            )
        graph_passes.convert_fp16(onnx_path, out)
        notes.append("fp16 weights and compute, fp32 inputs/outputs")
        name = f"{RUNTIME}-fp16"
    else:
        log("ONNX Runtime offline graph optimisation")
        try:
            graph_passes.ort_offline_optimise(onnx_path, out)
            notes.append("ONNX Runtime offline graph optimisation (basic level)")
        except graph_passes.PassSkipped as exc:
            # e.g. shape inference through If/Loop bodies failing on the optimised graph: the
            # graph as given still loads, and ONNX Runtime optimises it at load time on the device
            log(f"warning: {exc.warning}")
            warnings.append(exc.warning)
            shutil.copyfile(onnx_path, out)
        name = RUNTIME
    model = onnx.load(str(out), load_external_data=False)
    return CandidateArtifact(
        name=name,
        runtime=RUNTIME,
        runtime_min_version=onnx_graph.ort_min_version(model, ort.__version__),
        directory=options.work_dir,
        model_file=MODEL_FILE,
        quantization=options.quantize,
        tool_versions={"onnxruntime": str(ort.__version__)},
        notes=tuple(notes),
        warnings=tuple(warnings),
    )


def original_candidate(onnx_path: Path, work_dir: Path) -> CandidateArtifact:
    """The baseline: the front-end's ONNX graph unchanged, on plain ONNX Runtime fp32."""
    out = work_dir / MODEL_FILE
    shutil.copyfile(onnx_path, out)
    model = onnx.load(str(out), load_external_data=False)
    return CandidateArtifact(
        name=f"{RUNTIME}-original",
        runtime=RUNTIME,
        runtime_min_version=onnx_graph.ort_min_version(model, ort.__version__),
        directory=work_dir,
        model_file=MODEL_FILE,
        tool_versions={"onnxruntime": str(ort.__version__)},
        notes=("the original model, unoptimised (baseline)",),
    )
