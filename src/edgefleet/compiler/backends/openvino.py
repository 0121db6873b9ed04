"""OpenVINO candidates for Intel/AMD x86_64 CPUs: IR converted from the fp32 graph, from the int8
QDQ graph (executed with int8 kernels), or with fp16-compressed weights (half the size). The device
backend (edgefleet.runtimes.openvino) computes fp32 and int8 IRs in fp32, and lets the CPU plugin
choose the precision of an fp16 IR (bf16 or f16 where the CPU has them)."""

from __future__ import annotations

import logging
from pathlib import Path

from edgefleet.compiler.noise import captured_output
from edgefleet.compiler.types import (
    BuildOptions,
    CandidateArtifact,
    CandidateUnavailable,
    LogFn,
    Quantization,
    TargetSpec,
)

MODEL_FILE = "model.xml"
WEIGHTS_FILE = "model.bin"
RUNTIME = "openvino"


def build_openvino(
    onnx_path: Path, target: TargetSpec, options: BuildOptions, log: LogFn
) -> CandidateArtifact:
    """Convert ``onnx_path`` to OpenVINO IR under ``options.work_dir``."""
    try:
        import openvino as ov  # type: ignore[import-untyped, unused-ignore]
    except ImportError as exc:
        raise CandidateUnavailable("OpenVINO is not installed: pip install 'edgefleet[openvino]'") from exc
    if target.arch != "x86_64":
        raise CandidateUnavailable(f"OpenVINO candidates are built for x86_64 CPUs, not {target.arch}")
    log(f"converting to OpenVINO IR ({options.quantize.value})")
    # convert_model sets the root logger to ERROR (and adds a handler and a filter) and does not put
    # it back when the conversion fails: that would silence the logs of whatever process compiles.
    root = logging.getLogger()
    saved = (root.level, list(root.filters), list(root.handlers))
    try:
        # the converter's C++ side prints to fds 1/2; its errors are many lines long (the job keeps
        # them whole in its log and the report, and shows their first line)
        with captured_output("openvino"):
            model = ov.convert_model(str(onnx_path))
            ov.save_model(
                model,
                str(options.work_dir / MODEL_FILE),
                compress_to_fp16=options.quantize is Quantization.FP16,
            )
    except Exception as exc:  # OpConversionFailure (its base class differs between releases) and others
        raise CandidateUnavailable(f"OpenVINO cannot convert the model: {str(exc).strip()}") from exc
    finally:
        root.setLevel(saved[0])
        root.filters, root.handlers = saved[1], saved[2]
    version = str(ov.__version__).split("-")[0]
    notes = {
        Quantization.NONE: "OpenVINO IR, fp32",
        Quantization.INT8: "OpenVINO IR from the int8 QDQ graph (int8 kernels)",
        Quantization.FP16: "OpenVINO IR, fp16-compressed weights",
    }[options.quantize]
    suffix = "" if options.quantize is Quantization.NONE else f"-{options.quantize.value}"
    return CandidateArtifact(
        name=f"{RUNTIME}{suffix}",
        runtime=RUNTIME,
        # IR written by this release may use operator sets older releases lack.
        runtime_min_version=".".join(version.split(".")[:2]),
        directory=options.work_dir,
        model_file=MODEL_FILE,
        extra_files=(WEIGHTS_FILE,),
        quantization=options.quantize,
        tool_versions={"openvino": version},
        notes=(notes,),
    )
