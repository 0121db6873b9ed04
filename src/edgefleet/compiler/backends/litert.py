"""LiteRT candidate: a validated ``.tflite`` file, served as is."""

from __future__ import annotations

import shutil
from pathlib import Path

from edgefleet.compiler.types import (
    BuildOptions,
    CandidateArtifact,
    CandidateUnavailable,
    LogFn,
    Quantization,
    TargetSpec,
)
from edgefleet.packager.modelmeta import LITERT_MIN_VERSION

MODEL_FILE = "model.tflite"
RUNTIME = "litert"


def build_litert(
    model_path: Path, target: TargetSpec, options: BuildOptions, log: LogFn
) -> CandidateArtifact:
    """Copy the front-end's ``.tflite`` into ``options.work_dir``."""
    if model_path.suffix != ".tflite":
        raise CandidateUnavailable("LiteRT serves .tflite models only (compile them with --framework tflite)")
    if options.quantize is not Quantization.NONE:
        raise CandidateUnavailable(
            "LiteRT artifacts are served as converted; quantise when converting to TFLite "
            "(tf.lite.TFLiteConverter optimizations)"
        )
    shutil.copyfile(model_path, options.work_dir / MODEL_FILE)
    return CandidateArtifact(
        name=RUNTIME,
        runtime=RUNTIME,
        runtime_min_version=LITERT_MIN_VERSION,
        directory=options.work_dir,
        model_file=MODEL_FILE,
        notes=("TFLite flatbuffer served natively by LiteRT",),
    )
